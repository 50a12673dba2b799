"""``compress huffman``: the Deep Compression container of a model — BatchNorm folding, k-means
codebooks kept, linear 8-bit for weights without one, sparse positions, the ONNX graph inside —
decoded back bit for bit to .safetensors and .onnx, served by ``serve/`` without torch code, and
refused when damaged. The container format's own tests (Huffman codes, checksums) are in
tests/test_dcz.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import dcz
from compress.artifact import load_model, read_shared
from compress.cli import main
from compress.huffman.api import decode_artifact, encode_artifact, linear_codes, load_dcz
from compress.huffman.config import HuffmanConfig
from compress.fold import conv_bn_pairs
from compress.io import sidecar
from tests.test_serve import digit_test_images, digits_onnx  # noqa: F401  (session fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(meta, n: int = 24) -> torch.Tensor:
    from compress.data.preprocess import Preprocess

    images, _ = digit_test_images()
    prep = Preprocess(int(meta.input_size[-1]), tuple(meta.mean), tuple(meta.std), meta.interpolation)
    return torch.from_numpy(np.stack([prep(im) for im in images[:n]]))


def _logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.fixture(scope="module")
def base(digits_onnx) -> Path:  # noqa: F811
    return digits_onnx.with_suffix(".safetensors")


@pytest.fixture(scope="module")
def kmeans_sparse(base, tmp_path_factory) -> Path:
    """The serve fixture's model pruned to 70% zeros and k-means shared (4 bits), no fine-tuning."""
    from compress.artifact import save_model
    from compress.prune.unstructured import prune_magnitude
    from compress.quantize.config import QuantizeConfig
    from compress.quantize.kmeans import kmeans_artifact

    root = tmp_path_factory.mktemp("huffman")
    model, meta = load_model(base)
    prune_magnitude(model, 0.7)
    sparse = save_model(model, root / "sparse.safetensors", meta)
    out = root / "k4.safetensors"
    kmeans_artifact(sparse, out, QuantizeConfig(kmeans_bits=4, finetune=0, min_weights=16, test=False))
    return out


@pytest.fixture(scope="module")
def encoded(kmeans_sparse) -> tuple[Path, object]:
    out = kmeans_sparse.with_suffix(".dcz")
    return out, encode_artifact(kmeans_sparse, out, HuffmanConfig(test=False))


# ----------------------------------------------------------------------------- folding and codes

def test_every_conv_batchnorm_pair_is_found():
    import models

    model = models.create_model("mobilenet_v2", num_classes=10, small_input=True, width_mult=0.25)
    pairs = conv_bn_pairs(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(pairs) == n_bn
    modules = dict(model.named_modules())
    assert all(isinstance(modules[p.conv], nn.Conv2d) and isinstance(modules[p.bn], nn.BatchNorm2d) for p in pairs)


def test_kmeans_clusters_folded_weights_and_keeps_the_function(base, tmp_path):
    """quantize --kmeans-bits with --fold-bn (the default for pruned models): the saved conv weights are one
    codebook in the BatchNorm-folded domain, the BN a per-channel factor + bias (mean 0, var
    1 - eps), and with 8 bits the network still computes nearly what the input computed."""
    from compress.quantize.config import QuantizeConfig
    from compress.quantize.kmeans import kmeans_artifact

    out = tmp_path / "k8.safetensors"
    kmeans_artifact(base, out, QuantizeConfig(kmeans_bits=8, finetune=0, test=False, fold_bn=True))
    model, meta = load_model(base)
    shared, _ = load_model(out)
    pairs = conv_bn_pairs(model)
    modules, src = dict(shared.named_modules()), dict(model.named_modules())
    assert pairs and all(torch.equal(modules[p.bn].running_mean, torch.zeros_like(modules[p.bn].running_mean))
                         for p in pairs)
    codebooks = read_shared(out)
    for p in pairs:
        w_in, w_out = src[p.conv].weight.detach(), modules[p.conv].weight.detach()
        s = (src[p.bn].weight / torch.sqrt(src[p.bn].running_var + src[p.bn].eps)).detach()
        folded = w_in * s.view(-1, 1, 1, 1)  # the clustered values are the folded weights
        step = (folded.max() - folded.min()) / 255
        assert (w_out - folded).abs().max() <= step, p.conv
        assert torch.equal(codebooks[f"{p.conv}.weight"][0][codebooks[f"{p.conv}.weight"][1].long()], w_out)
    x = _images(meta)
    np.testing.assert_allclose(_logits(shared, x), _logits(model, x), atol=0.05 * np.abs(_logits(model, x)).max())


def test_kmeans_frozen_batchnorm_and_the_fine_tuning_guard(base, tmp_path):
    """--freeze-bn folds BN into the convs (identity + bias in the output); a fine-tuning that
    lowers validation accuracy (here: a learning rate of 0.03 with BN frozen) is undone, not saved."""
    from compress.quantize.config import QuantizeConfig
    from compress.quantize.kmeans import kmeans_artifact

    result = kmeans_artifact(base, tmp_path / "k.safetensors", QuantizeConfig(
        kmeans_bits=4, freeze_bn=True, finetune=1, lr=0.03, max_steps_per_epoch=3, batch_size=32, test=False))
    assert result.accuracy["finetune_reverted"] is True
    assert result.accuracy["finetuned"]["val"] == result.accuracy["kmeans"]["val"]
    assert result.params["frozen_bn"] is True
    model, _ = load_model(result.output)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in bns)
    assert all(torch.allclose(m.running_var + m.eps, torch.ones_like(m.running_var)) for m in bns)


def test_linear_codes_keep_zero_and_stay_within_half_a_step():
    w = np.random.default_rng(0).normal(size=(8, 4, 3, 3)).astype(np.float32)
    w[w < 0.2] = 0.0
    codebook, idx = linear_codes(w, 8)
    step = np.abs(w).max() / 127
    assert codebook.size <= 255 and 0.0 in codebook
    decoded = codebook[idx]
    assert np.all(decoded[w == 0] == 0)
    assert np.abs(decoded - w).max() <= step / 2 + 1e-7
    codebook4, _ = linear_codes(w, 4)
    assert codebook4.size <= 15


# ----------------------------------------------------------------------------- encode / decode

def test_kmeans_codebooks_survive_and_the_decoded_model_matches(encoded, kmeans_sparse):
    out, result = encoded
    model, meta = load_model(kmeans_sparse)
    decoded, dmeta = load_dcz(out)
    x = _images(meta)
    np.testing.assert_allclose(_logits(decoded, x), _logits(model, x), rtol=1e-4, atol=1e-4)
    assert dmeta.history[-1]["stage"] == "huffman" and dmeta.labels == meta.labels
    shared = read_shared(kmeans_sparse)
    assert set(shared) <= {k for k, v in result.quantized.items() if v.startswith("k-means 4-bit")}
    # the folded BatchNorms are identity + bias in the decoded network
    bns = [m for m in decoded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    assert all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in bns)
    # pruned weights stay zero: a conv's zeros decode as zeros
    src = dict(model.named_parameters())
    for name, p in decoded.named_parameters():
        if name.endswith(".weight") and p.ndim == 4 and p.numel() >= 16:
            assert torch.equal(p == 0, src[name] == 0), name


def test_container_is_smaller_than_the_input_and_reports_sizes(encoded, kmeans_sparse):
    out, result = encoded
    assert out.stat().st_size < kmeans_sparse.stat().st_size / 2
    report = json.loads(sidecar(out).read_text())
    assert report["sizes"]["dcz_bytes"] == out.stat().st_size
    assert report["sizes"]["ratio_fp32"] > 5
    assert report["params"]["folded"] > 0
    # every weight of the stored graph is a link to a coded tensor, none stays inline
    assert report["sizes"]["graph_inline_bytes"] < 1024
    assert report["stats"]["graph_bytes"] < 0.2 * out.stat().st_size
    # the folded vectors are float16 values (--vector-bits 16, the default)
    decoded, _ = load_dcz(out)
    bns = [m for m in decoded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.bias.half().float(), m.bias) for m in bns)
    # k-means clustered the folded weights (quantize --fold-bn, the default): no scale to store
    assert all(t["scale_bytes"] == 0 for t in report["stats"]["tensors"])
    assert load_model(kmeans_sparse)[1].history[-1]["params"]["folded_bn"] == len(bns)


def test_decode_to_safetensors_and_onnx_agree(encoded, tmp_path):
    import onnxruntime as ort

    out, _ = encoded
    st, onnx_path = tmp_path / "d.safetensors", tmp_path / "d.onnx"
    decode_artifact(out, st)
    decode_artifact(out, onnx_path)
    model, meta = load_model(st)
    x = _images(meta)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, _logits(model, x), rtol=1e-4, atol=1e-4)
    # decoding again gives the same weights, bit for bit
    again, _ = load_dcz(out)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_a_model_without_codebooks_is_quantized_to_8_bits_and_says_so(base, tmp_path):
    out = tmp_path / "base.dcz"
    result = encode_artifact(base, out, HuffmanConfig(test=False, vector_bits=32))
    assert result.quantized and all(v == "linear 8-bit" for v in result.quantized.values())
    assert any("8 bits" in n for n in result.notes)
    model, meta = load_model(base)
    decoded, _ = load_dcz(out)
    # without folding, every decoded weight is an integer multiple of its tensor's 8-bit step
    plain = tmp_path / "plain.dcz"
    encode_artifact(base, plain, HuffmanConfig(fold_bn=False, measure=False, vector_bits=32))
    unfolded, _ = load_dcz(plain)
    x = _images(meta)  # folding (float32 vectors) changes nothing but float rounding
    np.testing.assert_allclose(_logits(decoded, x), _logits(unfolded, x), rtol=1e-4, atol=1e-5)
    src, got = model.state_dict(), unfolded.state_dict()
    assert any(isinstance(m, nn.BatchNorm2d) and not torch.equal(m.weight, torch.ones_like(m.weight))
               for m in unfolded.modules())
    for key in result.kinds:
        step = src[key].abs().max().double() / 127
        levels = got[key].double() / step
        assert torch.allclose(levels, levels.round(), atol=1e-3), key
        assert levels.abs().max() <= 127 + 1e-3 and (got[key] - src[key]).abs().max() <= step / 2 + 1e-6, key


def test_served_dcz_gives_the_decoded_models_top1(encoded):
    from serve.engine import Model

    out, _ = encoded
    decoded, meta = load_dcz(out)
    x = _images(meta, 48)
    served = Model("dcz", out, threads=1)
    assert served.info.labels == meta.labels and served.info.history[-1]["stage"] == "huffman"
    got = served.run(x.numpy())
    assert np.array_equal(got.argmax(1), _logits(decoded, x).argmax(1))


# ----------------------------------------------------------------------------- CLI and bad input

def test_cli_encode_info_decode_eval(kmeans_sparse, tmp_path, capsys):
    out = tmp_path / "m.dcz"
    assert main(["huffman", "encode", str(kmeans_sparse), "-o", str(out), "--quiet", "--no-test"]) == 0
    text = capsys.readouterr().out
    assert "Huffman" in text and str(out) in text
    assert main(["huffman", "info", str(out)]) == 0
    assert "total" in capsys.readouterr().out
    assert main(["huffman", "decode", str(out), "-o", str(tmp_path / "m.onnx")]) == 0
    assert main(["eval", str(out), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["top1"] > 0


@pytest.mark.parametrize("args, message", [
    (["encode", "{k}", "-o", "{tmp}/x.onnx"], "should end in .dcz"),
    (["encode", "{tmp}/missing.safetensors", "-o", "{tmp}/x.dcz"], "missing.safetensors"),
    (["encode", "{k}", "-o", "{tmp}/x.dcz", "--linear-bits", "1"], "--linear-bits"),
    (["encode", "{k}", "-o", "{tmp}/x.dcz", "--coder", "zip"], "coder"),
    (["decode", "{tmp}/missing.dcz", "-o", "{tmp}/x.onnx"], "missing.dcz"),
    (["decode", "{dcz}", "-o", "{tmp}/x.pt"], ".safetensors or .onnx"),
    (["encode", "{k}", "-o", "{k}"], "should end in .dcz"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, kmeans_sparse, encoded, tmp_path, capsys):
    fill = {"k": str(kmeans_sparse), "tmp": str(tmp_path), "dcz": str(encoded[0])}
    assert main(["huffman", *[a.format(**fill) for a in args]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_damaged_container_is_refused_everywhere(encoded, tmp_path, capsys):
    from serve.engine import Model, ModelLoadError

    data = bytearray(encoded[0].read_bytes())
    bad = tmp_path / "bad.dcz"
    data[len(data) // 2] ^= 0x20
    bad.write_bytes(bytes(data))
    assert main(["huffman", "decode", str(bad), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "bad.dcz" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(ModelLoadError, match="bad.dcz"):
        Model("bad", bad)
    truncated = tmp_path / "short.dcz"
    truncated.write_bytes(encoded[0].read_bytes()[:-7])
    assert main(["eval", str(truncated)]) == 2
    with pytest.raises(dcz.DczError):
        dcz.read(truncated)
