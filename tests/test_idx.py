"""compress.data.idx: the IDX reader, the MNIST-family specs, where the files are looked for,
the split, and preprocessing identical to the serving side's (tiny files of the tests' own)."""
import gzip
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compress.data import Preprocess, channel_stats, load_data, make_loader
from compress.data import idx as idx_mod
from compress.data.idx import FILES, grey_stats, read_idx
from compress.errors import UserError

CLASSES, PER_CLASS, SIDE = 10, 10, 28


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_arrays(seed: int = 0, n_test: int = 30, side: int = SIDE):
    """Random grey images: a stratified training set (PER_CLASS per class) and a test set."""
    rng = np.random.default_rng(seed)
    train_y = np.repeat(np.arange(CLASSES), PER_CLASS).astype(np.uint8)
    rng.shuffle(train_y)
    train_x = rng.integers(0, 256, (len(train_y), side, side), dtype=np.uint8)
    test_y = (np.arange(n_test) % CLASSES).astype(np.uint8)
    test_x = rng.integers(0, 256, (n_test, side, side), dtype=np.uint8)
    return {"train": (train_x, train_y), "test": (test_x, test_y)}


def write_set(folder: Path, arrays=None, gz: bool = False) -> dict:
    """The four standard files in ``folder`` (``.gz`` names and gzip data when ``gz``)."""
    arrays = arrays or make_arrays()
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in arrays.items():
        for base, arr in zip(FILES[split], (x, y)):
            write_idx(folder / (base + (".gz" if gz else "")), arr, gz)
    return arrays


@pytest.fixture
def no_system_copy(tmp_path, monkeypatch):
    """Neither the Debian location nor $COMPRESS_DATA_ROOT hold anything."""
    monkeypatch.setattr(idx_mod, "SYSTEM_ROOT", tmp_path / "system-datasets")
    monkeypatch.delenv(idx_mod.ROOT_ENV, raising=False)


def pixels_of(ds) -> np.ndarray:
    """uint8 pixels of a split loaded with mean 0, std 1 (one channel)."""
    return np.rint(ds.images[:, 0].numpy() * 255).astype(np.uint8)


def rows(a: np.ndarray) -> set:
    return {im.tobytes() for im in a}


# --- reading --------------------------------------------------------------------------------------

@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip_gzip_told_by_magic_not_name(tmp_path, compressed, suffix):
    images = np.random.default_rng(1).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    got_x = read_idx(write_idx(tmp_path / f"x{suffix}", images, compressed), 3)
    got_y = read_idx(write_idx(tmp_path / f"y{suffix}", labels, compressed), 1)
    assert got_x.dtype == np.uint8 and got_x.shape == (5, 3, 4)
    np.testing.assert_array_equal(got_x, images)
    np.testing.assert_array_equal(got_y, labels)


def _one_line_error(match: str, fn, *args, **kwargs):
    with pytest.raises(UserError, match=match) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("gz", [False, True])
def test_corrupt_files_are_one_line_errors_naming_the_file(tmp_path, gz):
    good = idx_bytes(np.zeros((4, 3, 3), dtype=np.uint8))
    cases = {
        "float-type": b"\x00\x00\x0d\x03" + good[4:],   # type code 0x0D (float32), not unsigned bytes
        "not-zero": b"\x01\x00\x08\x03" + good[4:],     # the two leading bytes must be 0
        "wrong-ndim": b"\x00\x00\x08\x01" + good[4:],   # a labels file where images are expected
        "short-header": good[:9],
        "truncated": good[:-1],
        "trailing": good + b"\x00",
    }
    expected = {"float-type": "magic number", "not-zero": "magic number", "wrong-ndim": "magic number",
                "short-header": "truncated IDX header", "truncated": "truncated", "trailing": "1 trailing bytes"}
    for i, (name, data) in enumerate(cases.items()):
        path = tmp_path / f"case{i}-idx3-ubyte"  # a neutral name: the message, not the path, must match
        path.write_bytes(gzip.compress(data) if gz else data)
        msg = _one_line_error(expected[name], read_idx, path, 3)
        assert str(path) in msg


def test_cut_gzip_stream_is_a_one_line_error(tmp_path):
    path = tmp_path / "cut-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.ones((50, 8, 8), dtype=np.uint8)))[:-12])
    assert str(path) in _one_line_error("corrupt gzip", read_idx, path, 3)


def test_label_count_mismatch(tmp_path):
    arrays = make_arrays()
    x, y = arrays["test"]
    arrays["test"] = (x, y[:-1])
    write_set(tmp_path / "set", arrays)
    msg = _one_line_error("29 labels but", load_data, f"idx:{tmp_path / 'set'}")
    assert "t10k-labels-idx1-ubyte" in msg and "t10k-images-idx3-ubyte" in msg


def test_labels_out_of_range(tmp_path, no_system_copy):
    arrays = make_arrays()
    x, y = arrays["train"]
    y = y.copy()
    y[3] = 10  # an 11th class in a 10-class data set
    arrays["train"] = (x, y)
    write_set(tmp_path / "fm", arrays)
    msg = _one_line_error("label 10 out of range 0..9", load_data, "fashion-mnist", data_root=str(tmp_path / "fm"))
    assert "train-labels-idx1-ubyte" in msg and msg.endswith("(fashion-mnist classes)")
    # idx:PATH: the classes are the training labels' range; a test label beyond it is an error
    arrays = make_arrays()
    x, y = arrays["test"]
    arrays["test"] = (x, np.where(y == 0, 12, y).astype(np.uint8))
    write_set(tmp_path / "any", arrays)
    msg = _one_line_error("label 12 out of range 0..9", load_data, f"idx:{tmp_path / 'any'}")
    assert "t10k-labels-idx1-ubyte" in msg and msg.endswith("(the training labels)")


def test_missing_files_say_where_and_how(tmp_path, no_system_copy, monkeypatch):
    nowhere = tmp_path / "nowhere"
    msg = _one_line_error("fashion-mnist", load_data, "fashion-mnist", data_root=str(nowhere))
    for text in (str(nowhere), str(nowhere / "fashion-mnist"), str(tmp_path / "system-datasets" / "fashion-mnist"),
                 "make data", "dataset-fashion-mnist", "https://github.com/zalandoresearch/fashion-mnist",
                 "--data-root", "COMPRESS_DATA_ROOT"):
        assert text in msg
    monkeypatch.setenv("COMPRESS_DATA_ROOT", str(tmp_path / "env"))
    msg = _one_line_error("mnist", load_data, "mnist")
    assert str(tmp_path / "env" / "mnist") in msg and "http://yann.lecun.com/exdb/mnist/" in msg
    assert "make data" not in msg  # no Debian package for MNIST
    assert "https://github.com/rois-codh/kmnist" in _one_line_error("kmnist", load_data, "kmnist")
    # a folder holding some of the files: say which are missing
    write_set(tmp_path / "part")
    (tmp_path / "part" / "t10k-labels-idx1-ubyte").unlink()
    msg = _one_line_error("lacks t10k-labels-idx1-ubyte", load_data, "fashion-mnist", data_root=str(tmp_path / "part"))
    assert str(tmp_path / "part") in msg
    _one_line_error("no such folder", load_data, f"idx:{tmp_path / 'absent'}")
    _one_line_error("lacks t10k-labels-idx1-ubyte", load_data, f"idx:{tmp_path / 'part'}")


# --- finding the files -----------------------------------------------------------------------------

def test_data_root_env_and_system_location_are_searched(tmp_path, no_system_copy, monkeypatch):
    write_set(tmp_path / "given", gz=True)
    b = load_data("fashion-mnist", data_root=str(tmp_path / "given"), image_size=28)
    assert b.info["source"] == str(tmp_path / "given")
    assert b.labels == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                        "Bag", "Ankle boot"]
    assert b.name == "fashion-mnist" and b.num_classes == 10
    # $COMPRESS_DATA_ROOT/<name>
    write_set(tmp_path / "env" / "kmnist")
    monkeypatch.setenv("COMPRESS_DATA_ROOT", str(tmp_path / "env"))
    k = load_data("kmnist", image_size=28)
    assert k.info["source"] == str(tmp_path / "env" / "kmnist")
    assert k.labels == ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
    # --data-root comes before the environment, and ROOT/<name> before ROOT
    write_set(tmp_path / "given" / "kmnist")
    assert load_data("kmnist", image_size=28, data_root=str(tmp_path / "given")).info["source"] == \
        str(tmp_path / "given" / "kmnist")
    # the Debian location last
    monkeypatch.delenv("COMPRESS_DATA_ROOT")
    write_set(tmp_path / "system-datasets" / "mnist")
    m = load_data("mnist", image_size=28)
    assert m.info["source"] == str(tmp_path / "system-datasets" / "mnist")
    assert m.labels == [str(d) for d in range(10)]


def test_idx_path_spec_labels_from_the_data(tmp_path):
    arrays = make_arrays()
    for split in ("train", "test"):
        x, y = arrays[split]
        arrays[split] = (x, (y % 4).astype(np.uint8))  # 4 classes
    write_set(tmp_path / "four", arrays, gz=True)
    b = load_data(f"idx:{tmp_path / 'four'}", image_size=28)
    assert b.labels == ["0", "1", "2", "3"] and b.name == f"idx:{tmp_path / 'four'}"
    assert b.task == "multiclass" and b.input_size == (3, 28, 28)


# --- split and contents ---------------------------------------------------------------------------

def test_pixels_round_trip_and_split(tmp_path):
    arrays = write_set(tmp_path / "s", gz=True)
    train_x, train_y = arrays["train"]
    b = load_data(f"idx:{tmp_path / 's'}", image_size=28, mean=[0.0], std=[1.0])
    assert (len(b.train), len(b.val), len(b.test)) == (90, 10, 30)
    # test split = the test files, in order
    np.testing.assert_array_equal(pixels_of(b.test), arrays["test"][0])
    np.testing.assert_array_equal(b.test.targets.numpy(), arrays["test"][1])
    # train and val: disjoint, together the training file, labels kept with their images
    tr, va = pixels_of(b.train), pixels_of(b.val)
    assert not rows(tr) & rows(va) and rows(tr) | rows(va) == rows(train_x)
    label_of = {im.tobytes(): int(y) for im, y in zip(train_x, train_y)}
    for split, px in ((b.train, tr), (b.val, va)):
        assert [label_of[im.tobytes()] for im in px] == split.targets.tolist()
    # stratified: one of each class's ten in val
    assert sorted(b.val.targets.tolist()) == list(range(10))
    # seeded
    again = load_data(f"idx:{tmp_path / 's'}", image_size=28, mean=[0.0], std=[1.0])
    assert torch.equal(again.val.images, b.val.images) and torch.equal(again.train.targets, b.train.targets)
    other = load_data(f"idx:{tmp_path / 's'}", image_size=28, seed=1, mean=[0.0], std=[1.0])
    assert rows(pixels_of(other.val)) != rows(va)
    assert b.info["split_seed"] == 0 and other.info["split_seed"] == 1
    assert b.info["file_counts"] == {"train": 100, "test": 30}


def test_every_training_image_is_used_in_small_classes(tmp_path):
    """Rounding in seeded_split leaves a remainder in tiny classes: it goes to train, not away."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 5).astype(np.uint8)
    arrays = {"train": (rng.integers(0, 256, (15, 6, 6), dtype=np.uint8), y),
              "test": (rng.integers(0, 256, (3, 6, 6), dtype=np.uint8), np.arange(3, dtype=np.uint8))}
    write_set(tmp_path / "small", arrays)
    b = load_data(f"idx:{tmp_path / 'small'}", image_size=8)
    assert len(b.train) + len(b.val) == 15 and len(b.val) == 3


# --- preprocessing = the service's ------------------------------------------------------------------

def _as_served(pixels: np.ndarray) -> Image.Image:
    """What the service decodes from a PNG of the grey image."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    buf.seek(0)
    return Image.open(buf)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_resized_samples_equal_preprocess_of_the_pil_image(tmp_path, interpolation):
    arrays = write_set(tmp_path / "s")
    b = load_data(f"idx:{tmp_path / 's'}", image_size=32, interpolation=interpolation)
    assert b.input_size == (3, 32, 32) and b.interpolation == interpolation
    test_x = arrays["test"][0]
    unit = Preprocess(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), interpolation)
    for j in (0, 5, 29):
        served = b.preprocess(_as_served(test_x[j]))
        assert served.shape == (3, 32, 32)
        np.testing.assert_array_equal(b.test.images[j].numpy(), served)  # bit-identical
        u = unit.to_unit(_as_served(test_x[j]))
        np.testing.assert_array_equal(b.test.images[j].numpy(), unit.with_stats(b.mean, b.std).normalise_unit(u[None])[0])
    # mean/std are those of the training split's [0, 1] RGB images, per channel
    units = b.train.images.numpy() * np.float32(b.std[0]) + np.float32(b.mean[0])
    m, sd = channel_stats(units.transpose(0, 2, 3, 1))
    assert len(b.mean) == len(b.std) == 3 and b.mean[0] == b.mean[1] == b.mean[2]
    assert b.mean == pytest.approx(m, abs=2e-6) and b.std == pytest.approx(sd, abs=2e-6)


def test_native_size_samples_are_the_scaled_pixels(tmp_path):
    arrays = write_set(tmp_path / "s")
    b = load_data(f"idx:{tmp_path / 's'}", image_size=28)
    x = arrays["test"][0][7]
    np.testing.assert_array_equal(b.test.images[7].numpy(), b.preprocess(_as_served(x)))
    expect = (x.astype(np.float32) / np.float32(255) - np.float32(b.mean[0])) / np.float32(b.std[0])
    np.testing.assert_array_equal(b.test.images[7, 0].numpy(), expect)


def test_grey_stats_equal_channel_stats():
    px = np.random.default_rng(3).integers(0, 256, (40, 9, 9), dtype=np.uint8)
    px[:10] = 0  # a skewed histogram
    unit = np.repeat((px.astype(np.float32) / np.float32(255))[..., None], 3, axis=-1)
    assert grey_stats(px) == channel_stats(unit)
    assert grey_stats(np.zeros((2, 3, 3), dtype=np.uint8))[1] == (1e-3,) * 3  # the floor


def test_grey_channels_are_one_expanded_view_and_batches_are_rgb(tmp_path):
    write_set(tmp_path / "s")
    b = load_data(f"idx:{tmp_path / 's'}", image_size=32)
    for split in (b.train, b.val, b.test):
        x = split.images
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and x.stride(1) == 0
        assert x.untyped_storage().nbytes() == len(x) * 32 * 32 * 4  # one channel held
    x, y = next(iter(make_loader(b.train, 16, shuffle=True, seed=0)))
    assert x.shape == (16, 3, 32, 32) and x.is_contiguous() and y.shape == (16,) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 2])
    # a seeded training subset stays a view of one channel
    small = load_data(f"idx:{tmp_path / 's'}", image_size=32, train_limit=20)
    assert len(small.train) == 20 and small.train.images.stride(1) == 0
    assert small.train.images.untyped_storage().nbytes() == 20 * 32 * 32 * 4
    full = {im.numpy().tobytes() for im in b.train.images}
    assert all(im.numpy().tobytes() in full for im in small.train.images)


def test_per_channel_statistics_give_three_channels(tmp_path):
    arrays = write_set(tmp_path / "s")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    b = load_data(f"idx:{tmp_path / 's'}", image_size=32, mean=mean, std=std)
    assert b.mean == mean and b.std == std
    x = b.test.images
    assert x.shape[1] == 3 and not torch.equal(x[:, 0], x[:, 1])
    np.testing.assert_array_equal(x[4].numpy(), b.preprocess(_as_served(arrays["test"][0][4])))


# --- the real data set, when installed -----------------------------------------------------------

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed (make data)")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("COMPRESS_DATA_ROOT", raising=False)
    b = load_data("fashion-mnist", image_size=28)  # the files' own size: no resizing, about a second
    assert (len(b.train), len(b.val), len(b.test)) == (54000, 6000, 10000)
    assert b.num_classes == 10 and b.labels[0] == "T-shirt/top" and b.labels[9] == "Ankle boot"
    assert np.bincount(b.val.targets.numpy()).tolist() == [600] * 10
    # the published statistics of the 60,000 training images; these are of the 54,000 of the split
    assert b.mean[0] == pytest.approx(0.2860, abs=5e-4) and b.std[0] == pytest.approx(0.3530, abs=5e-4)


# --- edges the mutation run found untested (scripts/mutation.py --chunk data-training) ------------

def test_empty_and_header_edge_files(tmp_path):
    path = tmp_path / "a-idx3-ubyte"  # a neutral name: the messages, not the path, must say what failed
    path.write_bytes(b"")
    assert "(magic number missing, expected 000008" in _one_line_error("magic number", read_idx, path, 3)
    path.write_bytes(b"\x00\x00\x0d\x03" + bytes(12))  # float32 items: the message shows the four magic bytes
    assert "(magic number 00000d03, expected 00000803)" in _one_line_error("magic number", read_idx, path, 3)
    path.write_bytes(b"\x00\x00\x08\x03")  # the magic number and nothing else: a header cut short
    assert "(4 bytes, the header needs 16)" in _one_line_error("truncated IDX header", read_idx, path, 3)
    good = idx_bytes(np.arange(36, dtype=np.uint8).reshape(4, 3, 3))
    path.write_bytes(good[:-1])
    msg = _one_line_error("truncated: ", read_idx, path, 3)
    assert "51 bytes but sizes 4x3x3 need 52" in msg and "trailing" not in msg
    path.write_bytes(good + b"\x00\x00")
    assert "2 trailing bytes: 54 bytes but sizes 4x3x3 need 52" in _one_line_error("trailing", read_idx, path, 3)
    # a header announcing zero items is a well-formed (empty) IDX file; a split of it is an error
    for dims in ((0, 5, 5), (3, 0, 5), (3, 5, 0)):
        images = write_idx(tmp_path / "e-idx3-ubyte", np.zeros(dims, dtype=np.uint8))
        assert read_idx(images, 3).shape == dims
        labels = write_idx(tmp_path / "e-idx1-ubyte", np.zeros(dims[0], dtype=np.uint8))
        sizes = "x".join(map(str, dims))
        assert str(images) in _one_line_error(rf"no images \(sizes {sizes}\)", idx_mod.read_split, images, labels)


def test_unreadable_paths_and_gzip_errors_say_why(tmp_path):
    folder = tmp_path / "d-idx3-ubyte"
    folder.mkdir()
    assert _one_line_error("cannot read", read_idx, folder, 3) == f"cannot read {folder}: Is a directory"
    cut = tmp_path / "c-idx3-ubyte.gz"
    cut.write_bytes(gzip.compress(idx_bytes(np.ones((50, 8, 8), dtype=np.uint8)))[:-12])
    msg = _one_line_error("corrupt gzip", read_idx, cut, 3)
    assert "(Compressed file ended before the end-of-stream marker was reached)" in msg  # the reason, not its type


def test_the_cache_sees_a_rewritten_file(tmp_path):
    """The in-process cache is keyed by path, size and modification time: a file replaced with the
    same size, or with the same time stamp, is read again."""
    path = tmp_path / "x-idx3-ubyte"
    first, second = (np.full((2, 3, 3), v, dtype=np.uint8) for v in (1, 2))
    write_idx(path, first)
    stamp = path.stat().st_mtime_ns
    assert idx_mod._read(path, 3)[0, 0, 0] == 1
    write_idx(path, second)  # the same size, a later time
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert idx_mod._read(path, 3)[0, 0, 0] == 2
    write_idx(path, np.full((3, 3, 3), 3, dtype=np.uint8))  # another size, the same time
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert idx_mod._read(path, 3).shape == (3, 3, 3)


def test_one_statistic_given_the_other_measured(tmp_path):
    write_set(tmp_path / "s")
    spec = f"idx:{tmp_path / 's'}"
    measured = load_data(spec, image_size=28)
    assert measured.mean != (0.5,) * 3 and measured.std != (0.25,) * 3
    only_mean = load_data(spec, image_size=28, mean=[0.5, 0.5, 0.5])
    assert only_mean.mean == (0.5,) * 3 and only_mean.std == measured.std
    only_std = load_data(spec, image_size=28, std=[0.25, 0.25, 0.25])
    assert only_std.mean == measured.mean and only_std.std == (0.25,) * 3


def test_two_equal_channels_and_one_other_are_normalised_per_channel(tmp_path):
    arrays = write_set(tmp_path / "s")
    for mean, std in (((0.5, 0.5, 0.2), (0.25, 0.25, 0.25)), ((0.2, 0.5, 0.5), (0.25, 0.25, 0.25)),
                      ((0.5, 0.2, 0.5), (0.25, 0.25, 0.25)), ((0.5, 0.5, 0.5), (0.25, 0.3, 0.25))):
        b = load_data(f"idx:{tmp_path / 's'}", image_size=28, mean=mean, std=std)
        np.testing.assert_array_equal(b.test.images[7].numpy(), b.preprocess(_as_served(arrays["test"][0][7])))


def test_bundle_defaults_dtypes_and_messages(tmp_path):
    arrays = write_set(tmp_path / "s")
    spec = f"idx:{tmp_path / 's'}"
    b = idx_mod.load_idx_dataset(spec)  # the defaults: native 28 px, split seed 0, bilinear
    assert b.input_size == (3, 28, 28) and b.info["split_seed"] == 0 and b.info["val_fraction"] == 0.1
    assert torch.equal(b.val.targets, load_data(spec, image_size=28, seed=0).val.targets)
    assert idx_mod.load_idx_dataset(spec, image_size=32).preprocess.interpolation == "bilinear"
    assert all(s.targets.dtype == torch.int64 for s in (b.train, b.val, b.test))
    msg = _one_line_error("unknown IDX data set", idx_mod.load_idx_dataset, "emnist")
    assert msg == "unknown IDX data set 'emnist'; known: fashion-mnist, mnist, kmnist, idx:PATH"
    # test images of another size than the training images: both sizes, and the test file named
    arrays["test"] = (np.zeros((30, 32, 32), dtype=np.uint8), arrays["test"][1])
    write_set(tmp_path / "mixed", arrays)
    msg = _one_line_error("pixels", load_data, f"idx:{tmp_path / 'mixed'}")
    assert msg == (f"{tmp_path / 'mixed' / 't10k-images-idx3-ubyte'}: images of 32x32 pixels but the "
                   f"training images are 28x28")
