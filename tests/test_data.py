"""compress.data: shapes, splits, determinism, the serving-side preprocessing contract, user files."""
import numpy as np
import pytest
import torch
from PIL import Image

from compress.data import Preprocess, load_data, make_loader, seeded_split
from compress.data.digits import _raw_digits, make_canvases, scan_to_image
from compress.errors import UserError


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def test_digits_shapes_sizes_and_stats(digits):
    assert digits.task == "multiclass" and digits.labels == [str(i) for i in range(10)]
    assert digits.input_size == (3, 32, 32)
    sizes = [len(digits.train), len(digits.val), len(digits.test)]
    assert sum(sizes) == 1797 and sizes[0] > 1200 and min(sizes[1:]) > 250
    x, y = digits.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    # normalised with the training split's own statistics
    assert abs(float(digits.train.images.mean())) < 1e-3
    assert float(digits.train.images.std()) == pytest.approx(1.0, abs=1e-3)
    for split in (digits.train, digits.val, digits.test):  # every class in every split
        assert set(split.targets.tolist()) == set(range(10))


def test_split_is_disjoint_stratified_and_seeded():
    strata = np.repeat(np.arange(4), 25)
    tr, va, te = seeded_split(100, (0.7, 0.15, 0.15), seed=3, strata=strata)
    assert len(set(tr) | set(va) | set(te)) == 100 and len(tr) + len(va) + len(te) == 100
    assert all(np.sum(strata[va] == c) >= 3 for c in range(4))
    again = seeded_split(100, (0.7, 0.15, 0.15), seed=3, strata=strata)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    assert not np.array_equal(tr, seeded_split(100, (0.7, 0.15, 0.15), seed=4, strata=strata)[0])


def test_digits_deterministic_and_seed_changes_split(digits):
    again = load_data("digits")
    assert torch.equal(again.test.images, digits.test.images)
    other = load_data("digits", seed=1)
    assert not torch.equal(other.test.targets, digits.test.targets)


def test_preprocess_of_one_pil_image_reproduces_the_dataset_sample(digits):
    """The contract serving relies on: bundle.preprocess(PIL image) == the training tensor."""
    scans, targets = _raw_digits()
    tr, _, te = seeded_split(len(scans), (0.7, 0.15, 0.15), 0, strata=targets)
    for split, idx in ((digits.train, tr), (digits.test, te)):
        for j in (0, 7):
            arr = digits.preprocess(scan_to_image(scans[idx[j]]))
            assert arr.dtype == np.float32 and arr.shape == (3, 32, 32)
            np.testing.assert_allclose(arr, split.images[j].numpy(), atol=1e-6)
            assert int(split.targets[j]) == targets[idx[j]]
    facts = digits.preprocess.to_dict()
    assert facts["interpolation"] == "bilinear" and facts["input_size"] == [3, 32, 32]
    assert facts["mean"] == list(digits.mean) and digits.interpolation == "bilinear"


def test_preprocess_steps_are_plain_numpy():
    prep = Preprocess(4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "nearest")
    img = Image.fromarray(np.full((2, 2), 255, dtype=np.uint8), mode="L")
    out = prep(img)
    assert out.shape == (3, 4, 4)
    np.testing.assert_allclose(out, (1.0 - 0.5) / 0.25)
    with pytest.raises(ValueError):
        Preprocess(4, (0, 0, 0), (1, 1, 1), "fancy")


def test_image_size_and_overrides():
    b = load_data("digits", image_size=16, mean=[0.5], std=[0.5], train_limit=100)
    assert b.input_size == (3, 16, 16) and b.train[0][0].shape == (3, 16, 16)
    assert b.mean == (0.5, 0.5, 0.5) and len(b.train) == 100


def test_digits_multilabel():
    b = load_data("digits-multilabel", image_size=32)
    assert b.task == "multilabel" and b.num_classes == 10
    x, y = b.train[0]
    assert x.shape == (3, 32, 32) and y.shape == (10,) and y.dtype == torch.float32
    counts = b.train.targets.sum(1)
    assert counts.min() >= 1 and counts.max() <= 4
    assert len(b.val) > 0 and len(b.test) > 0
    assert torch.equal(load_data("digits-multilabel").test.targets, b.test.targets)


def test_canvases_only_use_their_pool():
    scans, targets = _raw_digits()
    pool = np.flatnonzero(targets == 3)
    imgs, labels = make_canvases(scans, targets, pool, 20, np.random.default_rng(0))
    assert labels[:, 3].all() and labels.sum(1).max() == 1  # only digit 3 can appear
    assert imgs[0].size == (16, 16)


def test_make_loader_seeded_order(digits):
    a = [y.tolist() for _, y in make_loader(digits.val, 32, shuffle=True, seed=5)]
    b = [y.tolist() for _, y in make_loader(digits.val, 32, shuffle=True, seed=5)]
    c = [y.tolist() for _, y in make_loader(digits.val, 32, shuffle=True, seed=6)]
    assert a == b and a != c


def _write_images(folder, n, value):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((10, 12, 3), (value + 5 * i) % 256, dtype=np.uint8)).save(folder / f"{i}.png")


def test_imagefolder_flat_and_presplit(tmp_path):
    flat = tmp_path / "flat"
    _write_images(flat / "cat", 20, 10)
    _write_images(flat / "dog", 20, 200)
    b = load_data(f"imagefolder:{flat}", image_size=16)
    assert b.labels == ["cat", "dog"] and b.task == "multiclass"
    assert len(b.train) + len(b.val) + len(b.test) == 40 and len(b.val) >= 2
    x, y = b.train[0]
    assert x.shape == (3, 16, 16) and y in (0, 1)

    pre = tmp_path / "pre"
    for split, n in (("train", 8), ("val", 3)):
        _write_images(pre / split / "a", n, 0)
        _write_images(pre / split / "b", n, 128)
    b2 = load_data(f"imagefolder:{pre}", image_size=16)
    assert (len(b2.train), len(b2.val)) == (16, 6) and b2.info["test_is_val"]


def test_imagefolder_reads_alpha_and_16_bit_like_the_service(tmp_path):
    """Transparent pixels are white and 16-bit grey is scaled, as serve/images.py does — not
    Pillow's convert("RGB"), which drops alpha (black) and clips 16-bit values to 255."""
    from compress.data.files import load_imagefolder

    for label, make in (("alpha", lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0))),
                        ("deep", lambda: Image.fromarray(np.full((8, 8), 257 * 100, dtype=np.uint16)))):
        (tmp_path / label).mkdir()
        for k in range(3):
            make().save(tmp_path / label / f"{k}.png")
    bundle = load_imagefolder(str(tmp_path), image_size=8, seed=0, mean=(0, 0, 0), std=(1, 1, 1))
    ds = bundle.train
    pixels = {bundle.labels[ds[i][1]]: ds[i][0][:, 0, 0].tolist() for i in range(len(ds))}
    assert pixels["alpha"] == [1.0, 1.0, 1.0]
    assert pixels["deep"] == pytest.approx([100 / 255] * 3)


def test_imagefolder_bad_input(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_data(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        load_data(f"imagefolder:{tmp_path / 'empty'}")


def test_csv_multiclass_multilabel_and_errors(tmp_path):
    _write_images(tmp_path / "img", 12, 30)
    rows = ["image,labels"] + [f"img/{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12)]
    (tmp_path / "single.csv").write_text("\n".join(rows) + "\n")
    b = load_data(f"csv:{tmp_path / 'single.csv'}", image_size=8)
    assert b.task == "multiclass" and b.labels == ["cat", "dog"]
    assert sum(len(s) for s in (b.train, b.val, b.test)) == 12

    rows = [f"img/{i}.png,{'cat;dog' if i % 3 == 0 else 'dog'},{'train' if i < 8 else 'test'}" for i in range(12)]
    (tmp_path / "multi.csv").write_text("\n".join(rows) + "\n")
    m = load_data(f"csv:{tmp_path / 'multi.csv'}", image_size=8)
    assert m.task == "multilabel" and len(m.train) == 8 and len(m.test) == 4
    x, y = m.train[0]
    assert y.tolist() == [1.0, 1.0]  # row 0: cat;dog

    (tmp_path / "missing.csv").write_text("image,labels\nimg/0.png,cat\nimg/404.png,dog\n")
    with pytest.raises(UserError, match=r"missing.csv:3: image 'img/404.png' not found"):
        load_data(f"csv:{tmp_path / 'missing.csv'}")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="empty"):
        load_data(f"csv:{tmp_path / 'empty.csv'}")


def test_unknown_spec_lists_known():
    with pytest.raises(UserError) as e:
        load_data("svhn")
    msg = str(e.value)
    assert "unknown data set 'svhn'" in msg and "digits" in msg and "imagefolder:PATH" in msg
    assert "\n" not in msg


def test_cifar_without_files_or_network_is_one_line_error(tmp_path, monkeypatch):
    import socket

    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(UserError) as e:
        load_data("cifar10", data_root=str(tmp_path))
    assert "cifar10" in str(e.value) and "\n" not in str(e.value)
