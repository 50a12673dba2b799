"""compress.training: the loop, schedules, losses, augment, criteria: shapes of schedules, loss identities, and tiny
training runs that must actually learn."""
import math

import pytest
import torch
import torch.nn.functional as F

from compress.training import augment as A
from compress.errors import UserError
from compress.training.losses import BinaryFocalLoss, FocalLoss, SoftCrossEntropy, build_loss
from compress.training.schedules import Schedule
from compress.training.config import TrainConfig
from compress.training.callbacks import TrainLogger
from compress.training.criteria import DistillationCriterion, build_criterion
from compress.training.loop import fit


# ----------------------------------------------------------------------------- schedules

def test_warmup_is_linear_then_cosine_to_zero():
    s = Schedule("cosine", total_steps=110, warmup_steps=10)
    warm = [s.factor(i) for i in range(10)]
    assert warm == pytest.approx([(i + 1) / 11 for i in range(10)])
    assert all(b > a for a, b in zip(warm, warm[1:]))
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(60) == pytest.approx(0.5)
    assert s.factor(110) == pytest.approx(0.0, abs=1e-12)
    after = [s.factor(i) for i in range(10, 111)]
    assert all(b <= a for a, b in zip(after, after[1:]))


def test_htd_endpoints_and_floor():
    s = Schedule("htd", total_steps=100)
    assert s.factor(0) == pytest.approx(0.5 * (1 - math.tanh(-6)))  # ~0.999994
    assert s.factor(100) == pytest.approx(0.5 * (1 - math.tanh(3)))  # ~0.00247
    mid = 0.5 * (1 - math.tanh(-6 + 9 * 0.5))
    assert s.factor(50) == pytest.approx(mid)
    floored = Schedule("htd", total_steps=100, min_factor=0.1)
    assert floored.factor(100) == pytest.approx(0.1 + 0.9 * 0.5 * (1 - math.tanh(3)))


def test_step_and_constant_and_errors():
    s = Schedule("step", total_steps=100, steps_per_epoch=10, step_epochs=3, gamma=0.5)
    assert [s.factor(e * 10) for e in (0, 2, 3, 6, 9)] == pytest.approx([1, 1, 0.5, 0.25, 0.125])
    assert Schedule("constant", total_steps=5, warmup_steps=2).factor(4) == 1.0
    with pytest.raises(UserError, match=r"^unknown schedule 'linear'; choose one of constant, step, cosine, htd$"):
        Schedule("linear", total_steps=5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = Schedule("cosine", total_steps=4, warmup_steps=1).scheduler(opt)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.2, 0.2 * 0.75, 0.2 * 0.25])


# ----------------------------------------------------------------------------- losses

def test_loss_identities():
    torch.manual_seed(1)
    logits = torch.randn(16, 5)
    y = torch.randint(0, 5, (16,))
    assert SoftCrossEntropy()(logits, y) == pytest.approx(F.cross_entropy(logits, y).item())
    assert SoftCrossEntropy(0.1)(logits, y) == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item())
    assert SoftCrossEntropy()(logits, F.one_hot(y, 5).float()) == pytest.approx(F.cross_entropy(logits, y).item())
    assert FocalLoss(gamma=0)(logits, y) == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert FocalLoss(gamma=2)(logits, y) < F.cross_entropy(logits, y)
    t = (torch.rand(16, 5) < 0.3).float()
    assert BinaryFocalLoss(0)(logits, t) == pytest.approx(F.binary_cross_entropy_with_logits(logits, t).item())
    assert isinstance(build_loss("auto", "multilabel"), torch.nn.Module)
    with pytest.raises(UserError):
        build_loss("bce", "multiclass")
    with pytest.raises(UserError):
        build_loss("ce", "multilabel")


# ----------------------------------------------------------------------------- augment

def test_cutout_and_mixing():
    x = torch.ones(6, 3, 16, 16)
    out = A.cutout(x, 4)
    holes = (out[:, 0] == 0).sum((1, 2))
    assert (holes > 0).all() and (holes <= 16).all()
    assert torch.equal(out[:, 0], out[:, 2])  # same hole in every channel
    y = F.one_hot(torch.arange(6) % 3, 3).float()
    xm, ym = A.mixup(torch.randn(6, 3, 8, 8), y, alpha=0.4)
    assert ym.sum(1).allclose(torch.ones(6))
    xc = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 8, 8).contiguous()
    xcm, ycm = A.cutmix(xc, F.one_hot(torch.arange(6), 6).float(), alpha=1.0)
    own = (xcm == xc).float().mean((1, 2, 3))  # fraction of each image left untouched
    assert torch.allclose(ycm[torch.arange(6), torch.arange(6)], own) or torch.allclose(ycm.diagonal(), own)
    flipped = A.random_hflip(torch.arange(4.0).view(1, 1, 1, 4).repeat(64, 1, 1, 1))
    assert {tuple(f.flatten().tolist()) for f in flipped} <= {(0, 1, 2, 3), (3, 2, 1, 0)}


# ----------------------------------------------------------------------------- fit

@pytest.fixture(scope="module")
def tiny_digits():
    from compress.data import load_data

    b = load_data("digits", image_size=16, train_limit=320)
    return b


def _tiny_model(num_classes=10):
    from models import create_model

    return create_model("mobilenet_v2", num_classes=num_classes, width_mult=0.25, small_input=True)


@pytest.mark.slow
def test_tiny_training_learns_and_restores_best(tiny_digits, tmp_path):
    from compress.evaluate import evaluate

    torch.manual_seed(0)
    model = _tiny_model()
    steps = []
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.01, optimizer="adam", weight_decay=0.0, warmup_epochs=0.5,
                      label_smoothing=0.0)
    logger = TrainLogger(progress=False, log_file=tmp_path / "train.log", tensorboard=tmp_path / "tb")
    res = fit(model, tiny_digits, cfg, after_step=lambda m: steps.append(m is model), callback=logger)
    logger.close()
    assert res.epochs_run == 4 and len(res.history) == 4 and all(steps) and len(steps) == 4 * 10
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"] * 0.8
    assert res.best_metrics["top1"] > 0.3  # chance is 0.1
    again = evaluate(model, tiny_digits.val, "multiclass")
    assert again["top1"] == pytest.approx(res.best_metrics["top1"])  # the model holds the best epoch
    assert not model.training and res.seconds > 0
    assert res.best_metrics["top1"] == max(h["val_top1"] for h in res.history)
    log = (tmp_path / "train.log").read_text()
    assert log.count("epoch ") >= 4 and "done: best val_top1" in log
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_fit_lowers_loss_on_a_small_subset():
    """Fast check that the loop learns: 48 training images, 3 epochs of 3 steps."""
    from compress.data import load_data

    b = load_data("digits", image_size=16, train_limit=48)
    torch.manual_seed(0)
    res = fit(_tiny_model(), b, TrainConfig(epochs=3, batch_size=16, lr=0.01, optimizer="adam", weight_decay=0,
                                            label_smoothing=0, crop_padding=0, warmup_epochs=0, bn_recalibrate=48))
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.history[-1]["train_top1"] > 0.1


def test_same_seed_same_weights_and_early_stopping(tiny_digits):
    def run(seed, **kw):
        torch.manual_seed(seed)
        m = _tiny_model()
        cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=seed, max_steps_per_epoch=2, mixup=0.2,
                          cutout=4, bn_recalibrate=64, **kw)
        return m, fit(m, tiny_digits, cfg)

    (a, _), (b, _) = run(0), run(0)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    # a learning rate of ~0 cannot improve after the first epoch: patience 1 stops at epoch 2
    torch.manual_seed(0)
    m = _tiny_model()
    res = fit(m, tiny_digits, TrainConfig(epochs=5, lr=1e-12, schedule="constant", warmup_epochs=0, patience=1,
                                          max_steps_per_epoch=1, crop_padding=0, label_smoothing=0,
                                          bn_recalibrate=64))
    assert res.epochs_run == 2 and res.stopped_early and res.best_epoch in (1, 2)


def test_multilabel_fit_reports_map():
    from compress.data import load_data

    b = load_data("digits-multilabel", image_size=16, train_limit=128)
    torch.manual_seed(0)
    res = fit(_tiny_model(), b, TrainConfig(epochs=1, batch_size=32, lr=0.01, optimizer="adamw",
                                            max_steps_per_epoch=3))
    assert res.monitor == "map" and 0 < res.best_metrics["map"] <= 1 and "f1_micro" in res.best_metrics


def test_fit_rejects_bad_config_and_mismatched_classes(tiny_digits):
    with pytest.raises(UserError, match="outputs but data set"):
        fit(_tiny_model(num_classes=7), tiny_digits, TrainConfig(epochs=1))
    for bad in (dict(epochs=0), dict(optimizer="lion"), dict(lr=-1), dict(amp="fp8")):
        with pytest.raises(UserError):
            fit(_tiny_model(), tiny_digits, TrainConfig(**bad))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "adamax", "nadam"])
def test_every_optimizer_takes_a_step(optimizer, tiny_digits):
    from compress.training.optim import build_optimizer

    m = _tiny_model()
    opt = build_optimizer(m, TrainConfig(optimizer=optimizer, lr=0.01))
    before = m.get_classifier().weight.detach().clone()
    x, y = next(iter(torch.utils.data.DataLoader(tiny_digits.train, batch_size=8)))
    F.cross_entropy(m(x), y).backward()
    opt.step()
    assert not torch.equal(before, m.get_classifier().weight)
    assert opt.param_groups[1]["weight_decay"] == 0.0  # no decay on biases / BN


# ----------------------------------------------------------------------------- distillation in fit

def _linear_net(seed, scale=1.0):
    """A flatten + linear classifier on 3x16x16 inputs (no BatchNorm: cheap and easy to mimic)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    with torch.no_grad():
        net[1].weight.mul_(scale)
    return net


def _agreement_and_kl(student, teacher, x, temperature=4.0):
    with torch.no_grad():
        s, t = student(x), teacher(x)
    agree = float((s.argmax(1) == t.argmax(1)).float().mean())
    kl = float(F.kl_div(F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1),
                        reduction="batchmean", log_target=True))
    return agree, kl


@pytest.mark.parametrize("mix", [{}, {"mixup": 0.4, "cutmix": 1.0}])
def test_fit_with_teacher_makes_the_student_agree_with_it(tiny_digits, mix):
    teacher = _linear_net(seed=123, scale=20.0)  # a fixed random function, unrelated to the labels
    teacher.train()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.stack([tiny_digits.val[i][0] for i in range(len(tiny_digits.val))])
    cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3, optimizer="adam", weight_decay=0, schedule="constant",
                      warmup_epochs=0, crop_padding=0, label_smoothing=0, **mix)
    distilled, plain = _linear_net(seed=7), _linear_net(seed=7)
    agree0, kl0 = _agreement_and_kl(distilled, teacher, x)
    kd = build_criterion(cfg, "multiclass", teacher=teacher, temperature=4.0, alpha=1.0)
    res = fit(distilled, tiny_digits, cfg, criterion=kd)
    fit(plain, tiny_digits, cfg)
    agree_kd, kl_kd = _agreement_and_kl(distilled, teacher, x)
    agree_plain, kl_plain = _agreement_and_kl(plain, teacher, x)
    assert kl_kd < 0.5 * kl0 and kl_kd < 0.5 * kl_plain
    assert agree_kd > agree0 + 0.2 and agree_kd > agree_plain + 0.2
    assert res.criterion["name"] == "distillation"
    assert (res.criterion["temperature"], res.criterion["alpha"]) == (4.0, 1.0)
    assert all(math.isfinite(r["train_loss"]) for r in res.history)
    # the teacher is used, never trained, and keeps its mode
    assert teacher.training
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())


def test_fit_with_teacher_alpha_zero_is_plain_training(tiny_digits):
    cfg = TrainConfig(epochs=1, batch_size=32, lr=3e-3, optimizer="adam", weight_decay=0, schedule="constant",
                      warmup_epochs=0, max_steps_per_epoch=3)
    a, b = _linear_net(seed=3), _linear_net(seed=3)
    fit(a, tiny_digits, cfg, criterion=build_criterion(cfg, "multiclass", teacher=_linear_net(seed=9, scale=20.0),
                                                       alpha=0.0))
    fit(b, tiny_digits, cfg)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_fit_rejects_bad_teacher_and_kd_settings(tiny_digits):
    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 7))
    with pytest.raises(UserError, match="teacher has 7 outputs"):
        cfg = TrainConfig(epochs=1, max_steps_per_epoch=1)
        fit(_linear_net(0), tiny_digits, cfg, criterion=build_criterion(cfg, "multiclass", teacher=wrong))
    student = _linear_net(0)
    with pytest.raises(UserError, match="separate network"):
        fit(student, tiny_digits, TrainConfig(epochs=1), criterion=DistillationCriterion(student, F.cross_entropy))
    for bad in ({"temperature": 0.0}, {"alpha": 1.5}, {"alpha": -0.1}):
        with pytest.raises(UserError):
            DistillationCriterion(_linear_net(1), F.cross_entropy, **bad)


def test_kd_loss_uses_the_given_hard_loss_and_soft_targets():
    from compress.training.losses import kd_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.randint(0, 4, (5,), generator=g)
    smooth = SoftCrossEntropy(smoothing=0.1)
    assert float(kd_loss(s, t, y, alpha=0.0, hard_loss=smooth)) == pytest.approx(float(smooth(s, y)))
    mixed = 0.3 * F.one_hot(y, 4).float() + 0.7 * F.one_hot(y.flip(0), 4).float()
    expected = -(mixed * F.log_softmax(s, 1)).sum(1).mean()
    assert float(kd_loss(s, t, mixed, alpha=0.0)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_layout_during_training_and_plain_afterwards(tiny_digits, tmp_path, channels_last):
    """--channels-last trains with NHWC weights (oneDNN's fast path) and hands back plain
    contiguous weights that save as they are; off keeps NCHW throughout."""
    from compress.artifact import save_model
    from compress.meta import ModelMeta

    torch.manual_seed(0)
    model = _tiny_model()
    seen = []

    def probe(m):
        w = next(p for p in m.parameters() if p.ndim == 4 and p.shape[-1] > 1 and p.shape[1] > 1)
        seen.append(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())

    cfg = TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=2, channels_last=channels_last, bn_recalibrate=0)
    fit(model, tiny_digits, cfg, after_step=probe)
    assert seen == [channels_last] * 2
    assert all(p.is_contiguous() for p in model.parameters())
    save_model(model, tmp_path / "m.safetensors", ModelMeta.for_model(model, input_size=[3, 16, 16]))


def test_channels_last_defaults_to_on_for_cpu():
    from compress.training.loop import _channels_last

    assert _channels_last(TrainConfig(), torch.device("cpu")) is True
    assert _channels_last(TrainConfig(), torch.device("cuda")) is False
    assert _channels_last(TrainConfig(channels_last=False), torch.device("cpu")) is False
