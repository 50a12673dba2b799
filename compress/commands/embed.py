"""Penultimate-layer embeddings of a data split, their t-SNE map, and what compression did to them.

Writes every sample's embedding (the pooled features that enter the final Linear) with its label
to OUTPUT: .npz (plain arrays, no pickle: np.load(OUTPUT) with the default allow_pickle=False;
arrays embeddings, labels, tsne, tsne_rows, label_names, info) or .safetensors (the same numeric
arrays; label names and facts in its metadata). Draws a seeded t-SNE scatter coloured by class
(PNG, default OUTPUT with .tsne.png) and prints the leave-one-out k-NN top-1 and the silhouette
score of the space. With --parent (e.g. the model it was pruned from), both models are embedded
on the same points and drawn side by side, and the linear CKA of the two spaces is printed.

MODEL is a model artifact (.safetensors, .dcz) or an ONNX file exported with its 'embedding'
output (compress export, the default). A JSON report goes next to OUTPUT (OUTPUT.json).

    compress embed base.safetensors --data digits -o emb.npz
    compress embed pruned.safetensors --parent base.safetensors -o pruned.emb.npz
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..embed.api import EmbedConfig

    p.add_argument("model", help="model artifact (.safetensors, .dcz) or ONNX file with an 'embedding' output")
    p.add_argument("-o", "--output", required=True, help="embeddings file to write (.npz or .safetensors)")
    EmbedConfig.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..embed.api import EmbedConfig, embed_artifact
    from ..report.embed import format_embed

    print(format_embed(embed_artifact(args.model, args.output, EmbedConfig.from_args(args))))
    return 0
