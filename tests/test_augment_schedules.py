"""The geometry of each batch augmentation, the schedules' edges and checks, and the data-set
presets: the cases `python scripts/mutation.py --chunk data-training` found no test for (a wrong
crop range, a cutout square one pixel short, cutmix's box or label weight off, a schedule that
ignores its warm-up, a preset read case-sensitively)."""
import pytest
import torch
import torch.nn.functional as F

from compress.errors import UserError
from compress.training import augment as A
from compress.training.presets import PRESETS, describe, preset_for
from compress.training.schedules import Schedule


def distinct(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Images whose every pixel value is unique and positive (a crop's offset can be read off)."""
    return torch.arange(1.0, n * c * h * w + 1).view(n, c, h, w)


def constant_images(n: int, h: int, w: int) -> torch.Tensor:
    """Image i is the constant 10 * (i + 1): any pixel says which image it came from."""
    return (10.0 * torch.arange(1, n + 1)).view(n, 1, 1, 1).expand(n, 2, h, w).contiguous()


# --- random crop, flip, cutout ----------------------------------------------------------------------

@pytest.mark.parametrize("padding", [1, 2])
def test_random_crop_takes_every_offset_of_the_padded_image(padding):
    torch.manual_seed(0)
    x = distinct(300, 2, 5, 6)
    out = A.random_crop(x, padding)
    padded = F.pad(x, (padding,) * 4)
    offsets = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                 if torch.equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 6])]
        assert len(found) == 1  # a crop of its own padded image, at one offset
        offsets.add(found[0])
    assert offsets == {(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)}
    assert torch.equal(A.random_crop(x, 0), x)  # no padding: no shift


def test_hflip_mirrors_the_width_only_and_half_the_images_by_default():
    torch.manual_seed(0)
    x = distinct(400, 3, 4, 5)
    out = A.random_hflip(x)
    mirrored = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((mirrored ^ kept).all())  # each image either untouched or mirrored left-right
    assert 0.4 < mirrored.float().mean() < 0.6
    assert torch.equal(A.random_hflip(x, p=1.0), x.flip(-1)) and torch.equal(A.random_hflip(x, p=0.0), x)


@pytest.mark.parametrize("size", [1, 3, 4])
def test_cutout_zeroes_one_size_by_size_square_centred_anywhere(size):
    torch.manual_seed(0)
    h, w = 8, 9
    out = A.cutout(torch.ones(600, 2, h, w), size)
    assert torch.equal(out[:, 0], out[:, 1])
    centres = set()
    for img in out[:, 0]:
        rows = (img == 0).any(1).nonzero().flatten()
        cols = (img == 0).any(0).nonzero().flatten()
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        assert int((img == 0).sum()) == (bottom - top) * (right - left)  # one rectangle
        # the square [c - size // 2, c - size // 2 + size) clipped to the image, from either edge
        cy = top + size // 2 if top > 0 else bottom - size + size // 2
        cx = left + size // 2 if left > 0 else right - size + size // 2
        assert (top, bottom) == (max(cy - size // 2, 0), min(cy - size // 2 + size, h))
        assert (left, right) == (max(cx - size // 2, 0), min(cx - size // 2 + size, w))
        centres.add((cy, cx))
    assert {c[0] for c in centres} == set(range(h)) and {c[1] for c in centres} == set(range(w))


# --- mixup and cutmix ---------------------------------------------------------------------------------

def test_mixup_mixes_images_exactly_as_it_mixes_labels():
    torch.manual_seed(0)
    n = 8
    x, y = constant_images(n, 3, 3), torch.eye(n)
    values = 10.0 * torch.arange(1, n + 1)
    for _ in range(5):
        xm, ym = A.mixup(x, y, alpha=0.4)
        assert torch.allclose(ym.sum(1), torch.ones(n))
        assert torch.allclose(xm[:, 0, 0, 0], ym @ values)  # the same weights on images and labels


def test_cutmix_pastes_one_box_whose_area_weights_the_labels(monkeypatch):
    monkeypatch.setattr(A, "_beta", lambda alpha: 0.75)  # a box of (1 - 0.75) ** 0.5 = half each side
    torch.manual_seed(0)
    n, h, w = 6, 16, 20
    x, y = constant_images(n, h, w), torch.eye(n)
    heights, widths, boxes = set(), set(), set()
    for _ in range(400):
        xc, yc = A.cutmix(x, y, alpha=1.0)
        pasted = xc[:, 0] != x[:, 0]  # where an image holds its partner's pixels
        inside = pasted.any(0)
        if not inside.any():
            continue
        rows, cols = inside.any(1).nonzero().flatten(), inside.any(0).nonzero().flatten()
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        heights.add(y1 - y0)
        widths.add(x1 - x0)
        boxes.add((y0, y1, x0, x1))
        area = (y1 - y0) * (x1 - x0) / (h * w)
        partner = (xc[:, 0, y0, x0] / 10 - 1).long()
        expected = (1 - area) * y + area * y[partner]
        assert torch.allclose(yc, expected)
        assert torch.equal(xc[:, 0, y0:y1, x0:x1], x[partner, 0, y0:y1, x0:x1])
    assert max(heights) == h // 2 and max(widths) == w // 2  # int(16 * 0.5), int(20 * 0.5)
    # a centre on the first row or column: the box starts at the border, half a box long
    assert any(b[:2] == (0, h // 4) for b in boxes) and any(b[2:] == (0, w // 4) for b in boxes)


def test_batch_augment_chooses_between_mixup_and_cutmix():
    x, y = constant_images(8, 6, 6), torch.eye(8)
    values = set((10.0 * torch.arange(1, 9)).tolist())

    def kind(xm):  # cutmix pastes a box (images no longer constant); mixup blends whole images
        if not all(bool((im == im.flatten()[0]).all()) for im in xm):
            return "cutmix"
        return None if set(xm.unique().tolist()) <= values else "mixup"  # None: an empty box or lam ~ 1

    def kinds(aug, trials=60):
        torch.manual_seed(1)
        return {kind(aug(x, y)[0]) for _ in range(trials)} - {None}

    assert kinds(A.BatchAugment(cutmix_alpha=0.5)) == {"cutmix"}
    assert kinds(A.BatchAugment(mixup_alpha=0.2)) == {"mixup"}
    assert kinds(A.BatchAugment(mixup_alpha=0.2, cutmix_alpha=1.0)) == {"cutmix", "mixup"}
    images = distinct(40, 1, 3, 4)
    assert not torch.equal(A.BatchAugment(hflip=True)(images, y[:1].expand(40, 8))[0], images)


SIZES = r"^crop padding and cutout size must be >= 0$"
MIXING = r"^mixup/cutmix alpha must be >= 0 and mix probability in \[0, 1\]$"


@pytest.mark.parametrize("kw, message", [({"crop_padding": -1}, SIZES), ({"cutout": -1}, SIZES),
                                         ({"mixup_alpha": -0.1}, MIXING), ({"cutmix_alpha": -0.1}, MIXING),
                                         ({"mix_prob": -0.1}, MIXING), ({"mix_prob": 1.5}, MIXING)])
def test_batch_augment_refuses_out_of_range_values(kw, message):
    with pytest.raises(UserError, match=message):
        A.BatchAugment(**kw)


def test_batch_augment_accepts_the_edges():
    for kw in ({"mix_prob": 0.0}, {"mix_prob": 0.5}, {"mix_prob": 1.0}, {"crop_padding": 0, "cutout": 0}):
        A.BatchAugment(**kw)


# --- schedules ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"total_steps": 0}, {"warmup_steps": -1}, {"steps_per_epoch": 0}])
def test_schedule_refuses_empty_or_negative_lengths(kw):
    with pytest.raises(UserError, match=r"^schedule needs total_steps >= 1, warmup_steps >= 0, steps_per_epoch >= 1$"):
        Schedule("cosine", **{"total_steps": 10, **kw})


def test_schedule_checks_only_its_own_parameters():
    for kw in ({"step_epochs": 0}, {"gamma": 0.0}, {"gamma": 1.5}):
        with pytest.raises(UserError, match="^step schedule needs step epochs >= 1 and 0 < gamma <= 1, got "):
            Schedule("step", total_steps=10, **kw)
    Schedule("step", total_steps=10, step_epochs=1, gamma=1.0)  # the edges are allowed
    with pytest.raises(UserError, match=r"^htd needs lower < upper, got 2.0, 2.0$"):
        Schedule("htd", total_steps=10, htd_lower=2.0, htd_upper=2.0)
    # the other schedules ignore step and htd parameters
    Schedule("cosine", total_steps=10, step_epochs=0, gamma=5.0, htd_lower=3.0, htd_upper=-1.0)


def test_step_schedule_counts_epochs_after_the_warmup():
    s = Schedule("step", total_steps=100, warmup_steps=5, steps_per_epoch=10, step_epochs=2, gamma=0.5)
    assert [s.factor(i) for i in (5, 24, 25, 44, 45)] == pytest.approx([1, 1, 0.5, 0.5, 0.25])


def test_cosine_floor_and_a_one_step_span():
    s = Schedule("cosine", total_steps=11, warmup_steps=1, min_factor=0.2)
    assert [s.factor(i) for i in (1, 6, 11)] == pytest.approx([1.0, 0.6, 0.2])
    short = Schedule("cosine", total_steps=3, warmup_steps=2)  # one step after the warm-up
    assert short.factor(2) == pytest.approx(1.0) and short.factor(3) == pytest.approx(0.0, abs=1e-12)


# --- presets ------------------------------------------------------------------------------------------

def test_presets_by_name_in_any_case_with_options_and_as_copies():
    fashion = preset_for("fashion-mnist")
    assert fashion["epochs"] == 6 and fashion["small_input"] == "stem"
    assert preset_for(" Fashion-MNIST:imbalance=0.05 ") == fashion
    assert preset_for("mnist")["epochs"] == 4 and preset_for("kmnist")["image_size"] == 28
    assert preset_for("digits") == {} and preset_for("fashion-mnist", "none") == {}
    assert preset_for({"name": "fashion-mnist"}) == {}  # a data spec that is not a name
    fashion["epochs"] = 99
    assert PRESETS["fashion-mnist"]["epochs"] == 6


def test_describe_writes_the_preset_as_flags():
    assert describe({"epochs": 6, "hflip": False, "crop_padding": 2, "cutout": True, "label_smoothing": 0.1}) == \
        "--epochs 6 --no-hflip --crop-padding 2 --cutout --label-smoothing 0.1"
