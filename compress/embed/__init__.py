"""Embeddings of a classifier's penultimate layer and what they are good for without retraining:
a t-SNE picture of the feature space (and of what compression did to it), and few-shot classes
by nearest prototype (:mod:`.prototypes`, numpy only).

    compress embed base.safetensors --data digits -o emb.npz [--parent teacher.safetensors]
    compress fewshot base.safetensors --data fashion-mnist --classes 5-9 --shots 5 --episodes 100
"""
