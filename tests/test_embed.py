"""Embeddings and few-shot classes (issue 16): the penultimate features from PyTorch and from the
ONNX ``embedding`` output, nearest-prototype classification (with planted bugs the checks must
catch), seeded episodes and their interval, the ``classes=`` data view, and the two commands'
files and errors. Tiny untrained networks on the bundled digits: the numbers, not the accuracy,
are under test."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from compress.artifact import save_model
from compress.cli import main
from compress.errors import UserError
from compress.meta import ModelMeta

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIGITS = [str(i) for i in range(10)]


def tiny_model(num_classes=10, seed=0):
    torch.manual_seed(seed)
    return models.create_model("pplcnet_x0_25", num_classes=num_classes, small_input=True).eval()


def save_tiny(path, num_classes=10, labels=None, spec="digits", seed=0):
    model = tiny_model(num_classes, seed)
    meta = ModelMeta.for_model(model, input_size=[3, 32, 32], labels=labels or DIGITS[:num_classes])
    meta.add_history("train", params={"data": {"spec": spec, "data_seed": 0}})
    save_model(model, path, meta)
    return model, meta


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    d = tmp_path_factory.mktemp("embed")
    model, meta = save_tiny(d / "base.safetensors")
    save_tiny(d / "other.safetensors", seed=1)
    return d, model, meta


@pytest.fixture(scope="module")
def onnx_pair(art):
    from compress.export import export_onnx

    d, model, meta = art
    export_onnx(model, meta, d / "base.onnx")
    export_onnx(model, meta, d / "plain.onnx", embedding=False)
    return d / "base.onnx", d / "plain.onnx"


def digit_batch(n=8):
    from compress.data import load_data

    bundle = load_data("digits", image_size=32)
    return torch.stack([bundle.test[i][0] for i in range(n)])


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- embeddings

def test_embeddings_are_forward_head_pre_logits_and_feed_the_classifier(art):
    from compress.data import load_data
    from compress.embed.extract import embed_dataset, open_embedder

    d, model, meta = art
    embedder = open_embedder(d / "base.safetensors")
    test = load_data("digits", image_size=32).test
    feats, targets = embed_dataset(embedder, test, batch_size=64)
    x = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model(x)
    assert feats.shape == (270, model.num_features) == tuple(ref.shape) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, ref.numpy(), rtol=1e-5, atol=1e-5)
    assert targets.tolist() == [int(test[i][1]) for i in range(len(test))]
    # the vector is the one that enters the final Linear
    with torch.no_grad():
        np.testing.assert_allclose(model.get_classifier()(torch.from_numpy(feats)).numpy(), logits.numpy(),
                                   rtol=1e-4, atol=1e-4)


def test_onnx_has_logits_then_embedding_equal_to_pytorch(art, onnx_pair):
    import onnx

    from compress.embed.extract import open_embedder
    from compress.runtime import ort_session

    d, model, meta = art
    with_emb, plain = onnx_pair
    sess = ort_session(with_emb)
    outs = sess.get_outputs()
    assert [o.name for o in outs] == ["logits", "embedding"]
    assert outs[1].shape[1] == model.num_features and outs[1].type == "tensor(float)"
    props = {p.key: p.value for p in onnx.load(str(with_emb)).metadata_props}
    assert json.loads(props["embedding_output"]) == "embedding"
    assert json.loads(props["embedding_dim"]) == model.num_features
    x = digit_batch(5)
    logits, emb = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(emb, model.forward_head(model.forward_features(x), pre_logits=True).numpy(),
                                   atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-4)
    onnx_feats = open_embedder(with_emb).run(x.numpy())
    torch_feats = open_embedder(d / "base.safetensors").run(x.numpy())
    np.testing.assert_allclose(onnx_feats, torch_feats, atol=1e-4, rtol=1e-4)
    # --no-embedding: the logits alone and no embedding keys
    assert [o.name for o in ort_session(plain).get_outputs()] == ["logits"]
    assert not {"embedding_output", "embedding_dim"} & {p.key for p in onnx.load(str(plain)).metadata_props}
    with pytest.raises(UserError, match="no 'embedding' output"):
        open_embedder(plain)


def test_export_verification_covers_the_embedding(art, tmp_path, monkeypatch):
    """A graph whose embedding output is off (and logits right) is refused."""
    import compress.export as E

    d, model, meta = art
    E.export_onnx(model, meta, tmp_path / "m.onnx", verify=False)
    x = digit_batch(4)
    assert E.verify_onnx(model, tmp_path / "m.onnx", x, tol=1e-4) <= 1e-4
    real = E.embed
    monkeypatch.setattr(E, "embed", lambda m, x: real(m, x) + 0.5)  # the reference moves, the logits do not
    with pytest.raises(E.ExportVerificationError):
        E.verify_onnx(model, tmp_path / "m.onnx", x, tol=1e-4)


# ----------------------------------------------------------------------------- prototypes

def _toy_checks(prototype, nearest) -> bool:
    """The toy cases a nearest-prototype classifier must get right."""
    a_support = np.array([[10.0, 0.0], [0.0, 1.0]])  # unit directions 0° and 90°: prototype at 45°
    b_support = np.array([[-0.5, 1.0], [-1.0, 2.0]])  # both at 116.6°
    protos = np.stack([prototype(a_support), prototype(b_support)])
    queries = np.array([[0.2, 1.0],  # 78.7°: 33.7° from A's 45°, 37.9° from B (A without normalising is at 5.7°)
                        [3.0, 3.0],  # 45°: A exactly
                        [-0.05, 0.1]])  # 116.6°, tiny norm: B (cosine ignores the length)
    return nearest(queries, protos).tolist() == [0, 0, 1]


def test_prototypes_classify_the_toy_case():
    from compress.embed.prototypes import PrototypeClassifier, nearest_prototype, prototype

    assert _toy_checks(prototype, nearest_prototype)
    np.testing.assert_allclose(prototype(np.array([[10.0, 0.0], [0.0, 1.0]])), [math.sqrt(0.5)] * 2, rtol=1e-6)
    clf = PrototypeClassifier()
    clf.add_class("a", np.array([[10.0, 0.0], [0.0, 1.0]]))
    clf.add_class("b", np.array([[-0.5, 1.0]]))
    assert clf.names == ["a", "b"] and clf.predict(np.array([[0.2, 1.0], [-1.0, 2.0]])).tolist() == [0, 1]
    np.testing.assert_allclose(np.linalg.norm(clf.prototypes, axis=1), 1.0, rtol=1e-6)
    with pytest.raises(UserError, match="3-d"):
        clf.add_class("c", np.ones((2, 3)))


def test_planted_bugs_fail_the_toy_checks():
    """Not normalising the support, or taking the least similar prototype, is caught."""
    from compress.embed.prototypes import cosine_scores, l2_normalize, nearest_prototype, prototype

    def unnormalised_mean(x):
        return l2_normalize(np.asarray(x, dtype=np.float32).mean(axis=0))

    def least_similar(q, p):  # argmax of a distance computed as a similarity
        return np.argmin(cosine_scores(q, p), axis=1)


    assert not _toy_checks(unnormalised_mean, nearest_prototype)
    assert not _toy_checks(prototype, least_similar)


def _pool(classes=(3, 5, 7), per_class=12):
    return np.repeat(np.array(classes), per_class)


def test_episodes_are_seeded_disjoint_and_balanced():
    from compress.embed.prototypes import sample_episodes

    labels = _pool()
    a = sample_episodes(labels, [3, 5, 7], shots=2, queries=4, episodes=20, seed=7)
    b = sample_episodes(labels, [3, 5, 7], shots=2, queries=4, episodes=20, seed=7)
    c = sample_episodes(labels, [3, 5, 7], shots=2, queries=4, episodes=20, seed=8)
    same = [np.array_equal(x.support, y.support) and np.array_equal(x.query, y.query) for x, y in zip(a, b)]
    assert all(same)
    assert not all(np.array_equal(x.support, y.support) for x, y in zip(a, c))
    for e in a:
        assert e.classes == [3, 5, 7]
        assert not set(e.support) & set(e.query)
        assert labels[e.support].tolist() == [3, 3, 5, 5, 7, 7] and e.support_ways.tolist() == [0, 0, 1, 1, 2, 2]
        assert (labels[e.query] == np.array([3, 5, 7])[e.query_ways]).all() and len(e.query) == 12
    two_way = sample_episodes(labels, [3, 5, 7], shots=1, queries=1, episodes=30, ways=2, seed=0)
    assert {tuple(e.classes) for e in two_way} == {(3, 5), (3, 7), (5, 7)}
    with pytest.raises(UserError, match="fewer than shots"):
        sample_episodes(labels, [3, 5, 7], shots=10, queries=3, episodes=1)


def test_episode_accuracy_and_the_interval_by_hand():
    from compress.embed.prototypes import Episode, episode_accuracies, mean_interval

    emb = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 0.2], [0.9, 0.1], [0.2, 1], [1, 0.05]], dtype=np.float32)
    # support: rows 0 (way 0) and 2 (way 1); queries 4, 5 (way 0: right), 6 (way 1: right), 7 (way 1: wrong)
    e = Episode([0, 1], np.array([0, 2]), np.array([0, 1]), np.array([4, 5, 6, 7]), np.array([0, 0, 1, 1]))
    assert episode_accuracies(emb, [e]).tolist() == [0.75]
    mean, half = mean_interval([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7)
    assert half == pytest.approx(1.959963984540054 * 0.2 / math.sqrt(3))  # s = 0.2 (ddof 1)
    assert half == pytest.approx(0.22632, abs=1e-5)
    assert mean_interval([0.4]) == (0.4, 0.0)


# ----------------------------------------------------------------------------- the classes= view

def test_class_subset_view_relabels_in_the_order_given():
    from compress.data import load_data

    full = load_data("digits", image_size=8)
    view = load_data("digits:classes=5-9+0", image_size=8)
    assert view.labels == ["5", "6", "7", "8", "9", "0"] and view.num_classes == 6
    for split in ("train", "val", "test"):
        f, v = getattr(full, split), getattr(view, split)
        keep = np.isin(f.targets.numpy(), [5, 6, 7, 8, 9, 0])
        assert torch.equal(v.images, f.images[torch.from_numpy(keep)])
        mapping = {5: 0, 6: 1, 7: 2, 8: 3, 9: 4, 0: 5}
        assert v.targets.tolist() == [mapping[int(t)] for t in f.targets[torch.from_numpy(keep)]]
    assert view.mean == full.mean and view.info["classes"]["indices"] == [5, 6, 7, 8, 9, 0]
    for bad, msg in (("digits:classes=0-10", "not 10"), ("digits:classes=4", "at least 2"),
                     ("digits:classes=1+1", "twice"), ("digits:classes=x", "not a class index")):
        with pytest.raises(UserError, match=msg):
            load_data(bad, image_size=8)


# ----------------------------------------------------------------------------- the commands

def test_embed_command_writes_features_plot_and_report(art, onnx_pair, tmp_path, capsys):
    from PIL import Image

    d, model, meta = art
    out = tmp_path / "e.npz"
    code, printed, err = run_cli(["embed", str(onnx_pair[0]), "--parent", str(d / "base.safetensors"), "--data",
                                  "digits", "--max-points", "60", "-o", str(out)], capsys)
    assert code == 0, err
    z = np.load(out)  # allow_pickle=False by default: plain arrays only
    assert z["embeddings"].shape == (270, model.num_features) and z["labels"].shape == (270,)
    np.testing.assert_allclose(z["embeddings"], z["parent_embeddings"], atol=1e-4)  # the ONNX of the same model
    assert z["tsne"].shape == (60, 2) and z["tsne_rows"].shape == (60,) and z["label_names"].tolist() == DIGITS
    assert json.loads(str(z["info"]))["data"] == "digits"
    report = json.loads((tmp_path / "e.npz.json").read_text())
    assert report["cka"] == pytest.approx(1.0, abs=1e-4) and len(report["spaces"]) == 2
    assert [s["engine"] for s in report["spaces"]] == ["onnxruntime", "pytorch"]
    with Image.open(tmp_path / "e.tsne.png") as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]  # two panels side by side
    assert "5-NN top-1" in printed and "linear CKA" in printed
    assert not list(tmp_path.glob(".*.tmp"))
    # the same seed gives the same map; .safetensors output holds the same arrays
    code, _, err = run_cli(["embed", str(d / "base.safetensors"), "--data", "digits", "--max-points", "60",
                            "-o", str(tmp_path / "e.safetensors")], capsys)
    assert code == 0, err
    from safetensors.numpy import load_file

    st = load_file(str(tmp_path / "e.safetensors"))
    np.testing.assert_allclose(st["embeddings"], z["parent_embeddings"], atol=1e-6)
    np.testing.assert_allclose(st["tsne"], z["parent_tsne"], atol=1e-4)


def test_a_failed_plot_leaves_the_previous_png(art, tmp_path, capsys, monkeypatch):
    import matplotlib.figure

    d, _, _ = art
    png = tmp_path / "keep.png"
    png.write_bytes(b"previous")

    def broken(self, fname, **kw):
        Path(fname).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["embed", str(d / "base.safetensors"), "--data", "digits", "--max-points", "30", "--plot", str(png),
              "-o", str(tmp_path / "e.npz")])
    assert png.read_bytes() == b"previous" and not list(tmp_path.glob(".*.tmp"))
    assert not (tmp_path / "e.npz").exists()


def test_fewshot_command_same_episodes_for_every_model(art, onnx_pair, tmp_path, capsys):
    d, _, _ = art
    report = tmp_path / "fs.json"
    code, printed, err = run_cli(["fewshot", str(d / "base.safetensors"), str(onnx_pair[0]), str(d / "other.safetensors"),
                                  "--data", "digits", "--classes", "5,6,7,8,9", "--shots", "5", "--queries", "10",
                                  "--episodes", "12", "--seed", "3", "--json", str(report)], capsys)
    assert code == 0, err
    r = json.loads(report.read_text())
    assert r["classes"] == ["5", "6", "7", "8", "9"] and r["ways"] == 5 and r["pool"] == 135
    rows = r["results"]
    assert [len(x["accuracies"]) for x in rows] == [12, 12, 12]
    assert rows[0]["accuracies"] == pytest.approx(rows[1]["accuracies"], abs=1 / 50)  # torch vs ONNX, same episodes
    for row in rows:
        mean, half = np.mean(row["accuracies"]), 1.959963984540054 * np.std(row["accuracies"], ddof=1) / math.sqrt(12)
        assert row["mean"] == pytest.approx(mean) and row["ci95"] == pytest.approx(half)
    assert "5-way 5-shot" in printed and "95% interval" in printed and "vs first (paired)" in printed
    diff = np.subtract(rows[2]["accuracies"], rows[0]["accuracies"])
    assert rows[0]["delta"] is None
    assert rows[2]["delta"] == pytest.approx(diff.mean())
    assert rows[2]["delta_ci95"] == pytest.approx(1.959963984540054 * diff.std(ddof=1) / math.sqrt(12))
    code, _, _ = run_cli(["fewshot", str(d / "base.safetensors"), "--data", "digits", "--classes", "5-9",
                          "--queries", "10", "--episodes", "12", "--seed", "3", "--json", str(tmp_path / "b.json")],
                         capsys)
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["accuracies"] == rows[0]["accuracies"]


def test_fewshot_defaults_to_the_classes_the_model_never_saw(tmp_path, capsys):
    save_tiny(tmp_path / "m04.safetensors", num_classes=5, spec="digits:classes=0-4")
    code, printed, err = run_cli(["fewshot", str(tmp_path / "m04.safetensors"), "--episodes", "3"], capsys)
    assert code == 0, err
    r = json.loads((tmp_path / "m04.safetensors.fewshot.json").read_text())
    assert r["data"] == "digits" and r["classes"] == ["5", "6", "7", "8", "9"] and r["class_indices"] == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("case", ["missing", "wrong-arch", "too-many-shots", "bad-suffix", "no-embedding-output",
                                  "same-output", "bad-classes", "known-classes"])
def test_bad_input_exits_2_with_one_line(case, art, onnx_pair, tmp_path, capsys):
    from safetensors.torch import save_file

    d, model, meta = art
    base = str(d / "base.safetensors")
    if case == "wrong-arch":
        raw = {**meta.__dict__, "arch": "not_a_network", "format": "compress-model/1", "layers": {}}
        save_file({"w": torch.zeros(1)}, str(tmp_path / "bad.safetensors"), metadata={"compress": json.dumps(raw)})
    args = {
        "missing": ["embed", str(tmp_path / "nope.safetensors"), "--data", "digits", "-o", str(tmp_path / "e.npz")],
        "wrong-arch": ["fewshot", str(tmp_path / "bad.safetensors"), "--data", "digits", "--classes", "5-9"],
        "too-many-shots": ["fewshot", base, "--data", "digits", "--classes", "5-9", "--shots", "20"],
        "bad-suffix": ["embed", base, "--data", "digits", "-o", str(tmp_path / "e.pkl")],
        "no-embedding-output": ["fewshot", str(onnx_pair[1]), "--data", "digits", "--classes", "5-9"],
        "same-output": ["embed", base, "--data", "digits", "-o", base],
        "bad-classes": ["fewshot", base, "--data", "digits", "--classes", "5-12"],
        "known-classes": ["fewshot", base, "--data", "digits"],
    }[case]
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"compress {args[0]}: error: ") and "Traceback" not in err
