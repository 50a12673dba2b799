"""Distillation: the losses against their definitions (Hinton KD, DKD's two terms, DIST), the
criterion (gradients reach only the student, the teacher stays frozen in eval mode, cached
teacher logits equal live ones, a feature hint trains its adapter), the stage (`compress
distill`: artifact + history naming teacher and loss), distillation by default in prune, and bad
input as one-line errors with exit code 2."""
import copy
import hashlib
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from compress.artifact import ModelMeta, read_meta, save_model
from compress.cli import main
from compress.distill.config import DistillConfig, KDOptions
from compress.distill.hints import FeatureHint
from compress.distill.losses import DistillLoss, dist_loss, dkd_loss, dkd_terms
from compress.distill.teacher import TeacherInput
from compress.errors import UserError
from compress.training import TrainConfig, fit
from compress.training.criteria import DistillationCriterion, build_criterion, teacher_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_digits():
    from compress.data import load_data

    return load_data("digits", image_size=16, train_limit=320)


# ----------------------------------------------------------------------------- losses

def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def test_kd_with_only_the_hard_term_is_cross_entropy():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    loss = DistillLoss("kd", temperature=3.0, alpha=0.0)(s, t, y, F.cross_entropy)
    assert float(loss) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-6)
    soft_only = DistillLoss("kd", temperature=3.0, alpha=1.0)(s, t, y, F.cross_entropy)
    expected = 9.0 * F.kl_div(F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction="batchmean")
    assert float(soft_only) == pytest.approx(float(expected), rel=1e-5)


def test_dkd_terms_match_a_hand_computation():
    zs, zt, gt, T = [1.0, 2.0, 0.5], [3.0, 0.0, -1.0], 0, 2.0
    ps, pt = _softmax(zs, T), _softmax(zt, T)
    tckd = _kl([pt[0], 1 - pt[0]], [ps[0], 1 - ps[0]])
    qs = [v / (1 - ps[0]) for v in ps[1:]]
    qt = [v / (1 - pt[0]) for v in pt[1:]]
    nckd = _kl(qt, qs)
    got_t, got_n = dkd_terms(torch.tensor([zs]), torch.tensor([zt]), torch.tensor([gt]), T)
    assert float(got_t) == pytest.approx(tckd, rel=1e-5)
    assert float(got_n) == pytest.approx(nckd, rel=1e-5)
    loss = dkd_loss(torch.tensor([zs]), torch.tensor([zt]), torch.tensor([gt]), temperature=T, alpha=0.5, beta=3.0)
    assert float(loss) == pytest.approx(T * T * (0.5 * tckd + 3.0 * nckd), rel=1e-5)
    # the decomposition the paper starts from: KD = TCKD + (1 - p_t,gt) * NCKD
    assert _kl(pt, ps) == pytest.approx(tckd + (1 - pt[0]) * nckd, rel=1e-5)


def test_dkd_terms_vanish_when_student_equals_teacher_and_use_the_target_class():
    torch.manual_seed(1)
    z = torch.randn(4, 6)
    t, n = dkd_terms(z, z.clone(), torch.tensor([0, 1, 2, 3]), 4.0)
    assert torch.allclose(t, torch.zeros(4), atol=1e-6) and torch.allclose(n, torch.zeros(4), atol=1e-6)
    s = torch.randn(4, 6)
    a = dkd_terms(s, z, torch.tensor([0, 0, 0, 0]), 4.0)[0]
    b = dkd_terms(s, z, torch.tensor([5, 5, 5, 5]), 4.0)[0]
    assert not torch.allclose(a, b)


def test_dist_is_zero_for_a_copy_and_positive_otherwise():
    torch.manual_seed(2)
    t = torch.randn(8, 5)
    assert float(dist_loss(t.clone(), t)) == pytest.approx(0.0, abs=1e-3)
    assert float(dist_loss(-t, t)) > 1.0
    # hand computation of the inter-class term on one sample (intra needs > 1 sample)
    s1, t1 = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 2.0]])
    ys, yt = F.softmax(s1, 1)[0].tolist(), F.softmax(t1, 1)[0].tolist()
    ms, mt = sum(ys) / 3, sum(yt) / 3
    cov = sum((a - ms) * (b - mt) for a, b in zip(ys, yt))
    rho = cov / math.sqrt(sum((a - ms) ** 2 for a in ys) * sum((b - mt) ** 2 for b in yt))
    assert float(dist_loss(s1, t1, temperature=1.0, beta=1.0, gamma=1.0)) == pytest.approx(1 - rho, rel=1e-5)


def test_dkd_warmup_ramps_the_soft_term_in():
    torch.manual_seed(3)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    spec = DistillLoss("dkd", dkd_warmup_epochs=2.0)
    hard = float(F.cross_entropy(s, y))
    soft = float(dkd_loss(s, t, y))
    assert float(spec(s, t, y, F.cross_entropy, epochs_done=0.0)) == pytest.approx(hard, rel=1e-6)
    assert float(spec(s, t, y, F.cross_entropy, epochs_done=1.0)) == pytest.approx(hard + soft / 2, rel=1e-5)
    assert float(spec(s, t, y, F.cross_entropy, epochs_done=5.0)) == pytest.approx(hard + soft, rel=1e-5)


def test_multilabel_uses_per_label_sigmoids_and_rejects_softmax_losses():
    torch.manual_seed(4)
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    y = (torch.rand(3, 4) > 0.5).float()
    loss = DistillLoss("kd", temperature=2.0, alpha=1.0)(s, t, y, F.binary_cross_entropy_with_logits, task="multilabel")
    expected = 4.0 * F.binary_cross_entropy_with_logits(s / 2, torch.sigmoid(t / 2))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    for name in ("dkd", "dist"):
        with pytest.raises(UserError, match="multiclass"):
            DistillLoss(name).check_task("multilabel")
    assert KDOptions(kd_loss="auto").loss_name("multilabel") == "kd"
    assert KDOptions(kd_loss="auto").loss_name("multilabel", finetune=False) == "kd"
    # auto: Hinton KD when fine-tuning trained weights, DIST for a new student (README's measurements)
    assert KDOptions().loss_name("multiclass") == "kd"
    assert KDOptions().loss_name("multiclass", finetune=False) == "dist"
    assert KDOptions(kd_loss="dist").loss_name("multiclass") == "dist"


# ----------------------------------------------------------------------------- the criterion

def _net(seed, width=8, classes=10, scale=1.0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(width, classes))
    with torch.no_grad():
        net[-1].weight.mul_(scale)
    return net


@pytest.mark.parametrize("name", ["kd", "dkd", "dist"])
def test_gradients_reach_only_the_student(name):
    student, teacher = _net(0), _net(1, width=16)
    teacher.train()
    before = copy.deepcopy(teacher.state_dict())
    hint = FeatureHint("0", "0", weight=1.0)
    crit = DistillationCriterion(teacher, F.cross_entropy, loss=DistillLoss(name, dkd_warmup_epochs=0), hint=hint)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    crit.setup(torch.device("cpu"), student, x[:1])
    assert not teacher.training  # eval mode while distilling
    loss = crit(student(x), x, y)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None for p in crit.parameters()) and len(crit.parameters()) >= 1  # the adapter
    crit.teardown()
    assert teacher.training  # given back in its own mode
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_fit_with_a_hint_trains_the_adapter_and_leaves_the_teacher_unchanged(tiny_digits):
    student, teacher = _net(0), _net(1, width=16, scale=10.0)
    before = copy.deepcopy(teacher.state_dict())
    hint = FeatureHint("0", "0", weight=1.0)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.01, max_steps_per_epoch=3, warmup_epochs=0, crop_padding=0)
    crit = build_criterion(cfg, "multiclass", teacher=teacher, loss=DistillLoss("dist"), hint=hint)
    adapter_before = []
    attach = hint.attach

    def attach_and_snapshot(*args):  # the adapter is built at setup, inside fit
        attach(*args)
        adapter_before.extend(p.detach().clone() for p in hint.parameters())

    hint.attach = attach_and_snapshot
    res = fit(student, tiny_digits, cfg, criterion=crit)
    assert adapter_before and any(not torch.equal(a, p) for a, p in zip(adapter_before, hint.parameters()))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert res.criterion["hint"]["adapter"] == "1x1 conv + BN"
    assert "computed every step" in res.criterion["teacher_logits"]  # a hint needs the live features
    assert not hint._taps  # hooks removed
    x = torch.randn(2, 3, 16, 16)
    student(x), teacher(x)  # no hook left behind to capture anything


def test_cached_teacher_logits_equal_the_live_ones_and_the_teacher_is_not_rerun(tiny_digits):
    teacher = _net(5, scale=5.0)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.01, max_steps_per_epoch=2, warmup_epochs=0, crop_padding=0)
    crit = build_criterion(cfg, "multiclass", teacher=teacher, loss=DistillLoss("kd"))
    res = fit(_net(0), tiny_digits, cfg, criterion=crit)
    assert res.criterion["teacher_logits"] == "cached once"
    assert sum(calls) == len(tiny_digits.train)  # one pass over the training set, none per step
    x = torch.stack([tiny_digits.train[i][0] for i in range(5)])
    cached = teacher_logits(teacher, tiny_digits.train, 64, torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(cached[:5], teacher(x), atol=1e-5)
    # with augmentation the logits are computed every step ("auto"), and "on" refuses
    aug = TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=1, crop_padding=2)
    res = fit(_net(0), tiny_digits, aug, criterion=build_criterion(aug, "multiclass", teacher=teacher))
    assert "augmented" in res.criterion["teacher_logits"]
    with pytest.raises(UserError, match="cannot cache"):
        fit(_net(0), tiny_digits, aug, criterion=build_criterion(aug, "multiclass", teacher=teacher, cache="on"))


def test_teacher_input_converts_the_students_normalisation_and_size():
    inner = nn.Identity()
    wrapped = TeacherInput(inner, student_mean=[0.5] * 3, student_std=[0.25] * 3, teacher_mean=[0.1] * 3,
                           teacher_std=[2.0] * 3, teacher_size=4)
    x = torch.rand(2, 3, 8, 8)
    raw = x * 0.25 + 0.5
    expected = F.interpolate((raw - 0.1) / 2.0, size=(4, 4), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(wrapped(x), expected, atol=1e-6)
    same = TeacherInput(inner, student_mean=[0.5] * 3, student_std=[0.25] * 3, teacher_mean=[0.5] * 3,
                        teacher_std=[0.25] * 3, teacher_size=None)
    assert not same.adapts and torch.equal(same(x), x)


# ----------------------------------------------------------------------------- the stage

def _artifact(path, seed, *, labels=None, classes=10, arch="mobilenet_v2", width=0.25):
    torch.manual_seed(seed)
    model = models.create_model(arch, num_classes=classes, small_input=True, width_mult=width)
    meta = ModelMeta.for_model(model, input_size=[3, 16, 16], labels=labels or [str(i) for i in range(classes)])
    meta.add_history("train", {"data": {"spec": "digits", "data_seed": 0}}, {"top1": 0.5})
    return save_model(model, path, meta)


@pytest.fixture
def teacher_file(tmp_path):
    return _artifact(tmp_path / "teacher.safetensors", 0)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_distill_stage_writes_a_student_with_history_naming_teacher_and_loss(teacher_file, tmp_path):
    from compress.distill.api import distill

    digest = _digest(teacher_file)
    cfg = DistillConfig.with_preset({"teacher": str(teacher_file), "model": "pplcnet_x0_25", "epochs": 1,
                                     "max_steps_per_epoch": 2, "train_limit": 64, "kd_loss": "dkd",
                                     "crop_padding": 0, "eval_batch_size": 64})
    result = distill(tmp_path / "s.safetensors", cfg, progress=False)
    meta, _ = read_meta(result.output)
    assert meta.arch == "pplcnet_x0_25" and meta.input_size == [3, 16, 16]  # the teacher's size by default
    entry = meta.history[-1]
    assert entry["stage"] == "distill"
    assert entry["params"]["teacher"]["arch"] == "mobilenet_v2"
    assert entry["params"]["criterion"]["loss"] == "dkd" and entry["params"]["loss"] == "dkd"
    assert entry["params"]["criterion"]["teacher_logits"] == "cached once"
    report = json.loads(result.report_path.read_text())
    assert report["teacher"]["test"]["n"] == report["result"]["test"]["n"] > 0
    assert _digest(teacher_file) == digest


def test_distill_fine_tunes_an_artifact_student_with_fine_tuning_defaults(teacher_file, tmp_path):
    from compress.distill.api import distill

    student = _artifact(tmp_path / "student.safetensors", 1, width=0.35)
    digest = _digest(student)
    cfg = DistillConfig.with_preset({"teacher": str(teacher_file), "student": str(student), "epochs": 1,
                                     "max_steps_per_epoch": 1, "train_limit": 64})
    result = distill(tmp_path / "d.safetensors", cfg, progress=False)
    entry = read_meta(result.output)[0].history[-1]
    assert entry["params"]["defaults_applied"]["lr"] == 0.01  # fine-tuning, not from-scratch, defaults
    assert entry["params"]["loss"] == "kd" and entry["params"]["criterion"]["loss"] == "hinton_kd"
    assert entry["params"]["config"]["epochs"] == 1  # the option given wins
    assert read_meta(result.output)[0].history[0]["stage"] == "train"  # the student's own history kept
    assert _digest(student) == digest


@pytest.mark.parametrize("case, message", [
    ("labels", "other labels"),
    ("classes", "has 7 classes"),
    ("not-artifact", "not a safetensors model artifact"),
    ("hint", "no layer named 'nope'"),
    ("both", "exactly one of --student"),
    ("loss", "unknown --kd-loss"),
])
def test_bad_distill_input_is_one_line_exit_2(teacher_file, tmp_path, capsys, case, message):
    teacher = teacher_file
    extra = ["--student-arch", "pplcnet_x0_25"]
    if case == "labels":
        teacher = _artifact(tmp_path / "t2.safetensors", 0, labels=list("abcdefghij"))
    elif case == "classes":
        teacher = _artifact(tmp_path / "t3.safetensors", 0, classes=7)
    elif case == "not-artifact":
        teacher = tmp_path / "junk.safetensors"
        teacher.write_bytes(b"not a model at all")
    elif case == "hint":
        extra += ["--hint-weight", "1", "--hint-layer", "nope"]
    elif case == "both":
        extra += ["--student", str(teacher_file)]
    elif case == "loss":
        extra += ["--kd-loss", "magic"]
    code = main(["distill", "--teacher", str(teacher), *extra, "--epochs", "1", "--max-steps-per-epoch", "1",
                 "--train-limit", "32", "--no-progress", "-o", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.safetensors").exists()


# ----------------------------------------------------------------------------- prune distils by default

def test_prune_distills_from_the_parent_by_default(teacher_file, tmp_path, monkeypatch):
    import compress.prune.recovery as recovery
    from compress.prune.api import prune_artifact
    from compress.prune.config import PruneConfig

    seen = []
    monkeypatch.setattr(recovery, "finetune", lambda model, bundle, cfg, *, criterion=None, after_step=None,
                        progress=True, label="": seen.append(criterion) or {})
    prune_artifact(teacher_file, tmp_path / "p.safetensors", PruneConfig(ratio=0.5, finetune=1, bench=False))
    (crit,) = seen
    assert isinstance(crit, DistillationCriterion) and crit.spec.name == "kd"
    entry = read_meta(tmp_path / "p.safetensors")[0].history[-1]
    assert entry["params"]["distill"] is True
    assert entry["params"]["criterion"]["teacher"] == "the unpruned input model"
    seen.clear()
    prune_artifact(teacher_file, tmp_path / "q.safetensors",
                   PruneConfig(ratio=0.5, finetune=1, bench=False, distill=False))
    assert seen == [None]
    assert read_meta(tmp_path / "q.safetensors")[0].history[-1]["params"]["distill"] is False
    seen.clear()
    prune_artifact(teacher_file, tmp_path / "r.safetensors",
                   PruneConfig(ratio=0.5, finetune=1, bench=False, kd_loss="dist"))
    assert seen[0].spec.name == "dist"


def test_a_criterion_reused_across_fit_calls_caches_once_and_continues_its_warmup(tiny_digits):
    """AGP pruning and iterative pruning call fit once per phase with one criterion."""
    teacher = _net(5, scale=5.0)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.01, max_steps_per_epoch=2, warmup_epochs=0, crop_padding=0)
    crit = build_criterion(cfg, "multiclass", teacher=teacher, loss=DistillLoss("dkd", dkd_warmup_epochs=4))
    student = _net(0)
    fit(student, tiny_digits, cfg, criterion=crit)
    first = crit._epochs_done
    fit(student, tiny_digits, cfg, criterion=crit)
    assert sum(calls) == len(tiny_digits.train)
    assert 0 < first < crit._epochs_done <= 2


def test_teacher_logits_are_kept_between_runs_and_a_bad_cache_file_is_recomputed(teacher_file, tmp_path):
    from compress.distill.api import distill
    from compress.distill.teacher import cache_dir

    given = {"teacher": str(teacher_file), "model": "pplcnet_x0_25", "epochs": 1, "max_steps_per_epoch": 1,
             "train_limit": 48, "crop_padding": 0, "eval_batch_size": 64}
    first = distill(tmp_path / "a.safetensors", DistillConfig.with_preset(given), progress=False)
    note = first.report["config"]["criterion"]["teacher_logits"]
    assert note == "cached once"
    assert first.report["config"]["criterion"]["loss"] == "dist"  # auto for a new student
    files = [f for f in cache_dir().glob("*.safetensors") if f.stat().st_size > 0]
    newest = max(files, key=lambda f: f.stat().st_mtime_ns)
    from safetensors.torch import load_file

    kept = load_file(str(newest))["logits"].clone()
    assert kept.shape == (48, 10)
    second = distill(tmp_path / "b.safetensors", DistillConfig.with_preset(given), progress=False)
    log = second.log_path.read_text()
    assert f"read from {newest}" in log
    newest.write_bytes(b"garbage")  # a damaged cache file costs a recomputation, not the run
    third = distill(tmp_path / "c.safetensors", DistillConfig.with_preset(given), progress=False)
    assert "computed in" in third.log_path.read_text()
    assert torch.equal(load_file(str(newest))["logits"], kept)


# ----------------------------------------------------------------------------- more exact checks (mutation)

def test_dkd_terms_per_sample_on_a_batch_with_different_targets():
    zs = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]]
    zt = [[3.0, 0.0, -1.0], [1.0, 1.5, 0.2]]
    gts, T = [0, 2], 3.0
    want_t, want_n = [], []
    for s_row, t_row, gt in zip(zs, zt, gts):
        ps, pt = _softmax(s_row, T), _softmax(t_row, T)
        want_t.append(_kl([pt[gt], 1 - pt[gt]], [ps[gt], 1 - ps[gt]]))
        others = [i for i in range(3) if i != gt]
        qs = [ps[i] / (1 - ps[gt]) for i in others]
        qt = [pt[i] / (1 - pt[gt]) for i in others]
        want_n.append(_kl(qt, qs))
    got_t, got_n = dkd_terms(torch.tensor(zs), torch.tensor(zt), torch.tensor(gts), T)
    assert got_t.tolist() == pytest.approx(want_t, rel=1e-4)
    assert got_n.tolist() == pytest.approx(want_n, rel=1e-4)
    loss = dkd_loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(gts), temperature=T, alpha=2.0, beta=0.5)
    assert float(loss) == pytest.approx(T * T * sum(2.0 * a + 0.5 * b for a, b in zip(want_t, want_n)) / 2, rel=1e-4)


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_dist_inter_and_intra_terms_match_a_hand_computation():
    zs = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [-1.0, 0.3, 1.2]]
    zt = [[0.0, 1.0, 2.0], [1.0, 1.0, -2.0], [0.2, -0.4, 0.9]]
    T, beta, gamma = 2.0, 1.5, 0.5
    ys = [_softmax(r, T) for r in zs]
    yt = [_softmax(r, T) for r in zt]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(ys, yt)) / 3
    cols = lambda m: [[row[j] for row in m] for j in range(3)]  # noqa: E731
    intra = 1 - sum(_pearson(a, b) for a, b in zip(cols(ys), cols(yt))) / 3
    got = dist_loss(torch.tensor(zs), torch.tensor(zt), temperature=T, beta=beta, gamma=gamma)
    assert float(got) == pytest.approx(T * T * (beta * inter + gamma * intra), rel=1e-4)


def test_distill_loss_combines_the_hard_term_with_the_configured_soft_term():
    torch.manual_seed(6)
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    smooth = lambda logits, target: F.cross_entropy(logits, target, label_smoothing=0.3)  # noqa: E731
    hard = float(smooth(s, y))
    dkd = DistillLoss("dkd", temperature=2.0, dkd_alpha=0.3, dkd_beta=5.0, dkd_warmup_epochs=0)
    assert float(dkd(s, t, y, smooth)) == pytest.approx(
        hard + float(dkd_loss(s, t, y, temperature=2.0, alpha=0.3, beta=5.0)), rel=1e-5)
    dist = DistillLoss("dist", temperature=3.0, dist_beta=0.7, dist_gamma=1.3)
    assert float(dist(s, t, y, smooth)) == pytest.approx(
        hard + float(dist_loss(s, t, temperature=3.0, beta=0.7, gamma=1.3)), rel=1e-5)
    kd = DistillLoss("kd", temperature=2.0, alpha=0.25)
    soft = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="batchmean")
    assert float(kd(s, t, y, smooth)) == pytest.approx(0.25 * 4 * float(soft) + 0.75 * hard, rel=1e-5)
    # DKD on soft (mixup) targets uses each row's largest entry as the class
    mixed = 0.7 * F.one_hot(y, 4).float() + 0.3 * F.one_hot((y + 1) % 4, 4).float()
    soft_hard = lambda logits, target: -(target * F.log_softmax(logits, 1)).sum(1).mean()  # noqa: E731
    assert float(dkd(s, t, mixed, soft_hard)) == pytest.approx(
        float(soft_hard(s, mixed)) + float(dkd_loss(s, t, y, temperature=2.0, alpha=0.3, beta=5.0)), rel=1e-5)
    # warm-up: none at 0 epochs done without it; a quarter of the way in with it
    ramped = DistillLoss("dkd", dkd_warmup_epochs=4.0)
    full = float(dkd_loss(s, t, y))
    assert float(ramped(s, t, y, F.cross_entropy)) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-6)
    assert float(ramped(s, t, y, F.cross_entropy, epochs_done=1.0)) == pytest.approx(
        float(F.cross_entropy(s, y)) + full / 4, rel=1e-5)
    assert ramped.describe() == {"name": "dkd", "temperature": 4.0, "dkd_alpha": 1.0, "dkd_beta": 8.0,
                                 "dkd_warmup_epochs": 4.0}
    assert dist.describe() == {"name": "dist", "temperature": 3.0, "dist_beta": 0.7, "dist_gamma": 1.3}


@pytest.mark.parametrize("bad, message", [
    ({"name": "hinton"}, "unknown distillation loss"), ({"temperature": 0.0}, "temperature must be > 0"),
    ({"alpha": 1.01}, "alpha must be in"), ({"alpha": -0.01}, "alpha must be in"),
    ({"dkd_beta": -1.0}, "dkd_beta must be >= 0"), ({"dkd_alpha": -1.0}, "dkd_alpha must be >= 0"),
    ({"dkd_warmup_epochs": -1.0}, "dkd_warmup_epochs"), ({"dist_beta": -0.5}, "dist_beta"),
    ({"dist_gamma": -0.5}, "dist_gamma"),
])
def test_distill_loss_rejects_bad_settings(bad, message):
    with pytest.raises(UserError, match=message):
        DistillLoss(**bad)
    ok = {k: (1.0 if k == "alpha" else 0.0) for k in bad if k != "name" and k != "temperature"}
    DistillLoss(**ok)  # the boundary values are accepted


class _Two(nn.Module):
    """A model with forward_features (two conv layers) and a head."""

    def __init__(self, width=4, stride=1):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1, stride=stride)
        self.fc = nn.Linear(width, 10)

    def forward_features(self, x):
        return self.b(torch.relu(self.a(x)))

    def forward(self, x):
        return self.fc(self.forward_features(x).mean((2, 3)))


def test_feature_hint_loss_is_the_weighted_mse_of_the_tapped_maps():
    student, teacher = _Two(4), _Two(4)
    hint = FeatureHint(weight=2.5)
    x = torch.randn(2, 3, 8, 8)
    student.train()
    hint.attach(student, teacher, x[:1], torch.device("cpu"))
    assert student.training and isinstance(hint.adapter, nn.Identity)  # same widths: no adapter
    assert hint.describe() == {"student_layer": "forward_features", "teacher_layer": "forward_features",
                               "weight": 2.5, "adapter": "none", "shapes": {"student": [4, 8, 8], "teacher": [4, 8, 8]}}
    student(x), teacher(x)
    with torch.no_grad():
        want = 2.5 * F.mse_loss(student.forward_features(x), teacher.forward_features(x))
    assert float(hint.loss()) == pytest.approx(float(want), rel=1e-6)
    hint.detach()
    assert "forward_features" not in vars(student) and "forward_features" not in vars(teacher)


def test_feature_hint_adapts_widths_and_pools_the_larger_map():
    student, teacher = _Two(4), _Two(6, stride=2)  # student 4x8x8, teacher 6x4x4
    hint = FeatureHint("b", "b", weight=1.0)
    x = torch.randn(3, 3, 8, 8)
    hint.attach(student, teacher, x[:1], torch.device("cpu"))
    conv, bn = hint.adapter
    assert conv.weight.shape == (6, 4, 1, 1) and bn.num_features == 6
    assert hint.shapes == {"student": [4, 8, 8], "teacher": [6, 4, 4]}
    hint.adapter.eval()
    student(x), teacher(x)
    with torch.no_grad():
        s = F.adaptive_avg_pool2d(hint.adapter(student.b(torch.relu(student.a(x)))), (4, 4))
        t = teacher.forward_features(x)
    assert float(hint.loss().detach()) == pytest.approx(float(F.mse_loss(s, t)), rel=1e-5)
    hint.detach()
    student(x)
    assert hint._taps == []


def test_a_vector_hint_layer_is_a_1x1_map_and_a_bad_layer_cleans_up():
    student, teacher = _Two(4), _Two(4)
    hint = FeatureHint("fc", "fc")
    hint.attach(student, teacher, torch.randn(1, 3, 8, 8), torch.device("cpu"))
    assert hint.shapes == {"student": [10, 1, 1], "teacher": [10, 1, 1]}
    hint.detach()
    with pytest.raises(UserError, match="no layer named 'zz'.*forward_features"):
        FeatureHint("a", "zz").attach(student, teacher, torch.randn(1, 3, 8, 8), torch.device("cpu"))
    assert not student.a._forward_hooks  # the student's hook was removed again
    with pytest.raises(UserError, match="must be > 0"):
        FeatureHint(weight=0.0)


def test_dist_defaults_and_the_intra_term_on_two_samples():
    torch.manual_seed(7)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    assert float(dist_loss(s, t)) == pytest.approx(float(dist_loss(s, t, temperature=4.0, beta=2.0, gamma=2.0)))
    s2, t2 = torch.tensor([[1.0, 0.0, 2.0], [0.3, 1.0, -1.0]]), torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 0.5]])
    ys, yt = F.softmax(s2, 1).tolist(), F.softmax(t2, 1).tolist()
    intra = 1 - sum(_pearson([ys[0][j], ys[1][j]], [yt[0][j], yt[1][j]]) for j in range(3)) / 3
    assert float(dist_loss(s2, t2, temperature=1.0, beta=0.0, gamma=1.0)) == pytest.approx(intra, rel=1e-4, abs=1e-5)


def test_a_one_epoch_dkd_warmup_and_a_temperature_below_one():
    torch.manual_seed(8)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    spec = DistillLoss("dkd", temperature=0.5, dkd_warmup_epochs=1.0)
    hard, soft = float(F.cross_entropy(s, y)), float(dkd_loss(s, t, y, temperature=0.5))
    assert float(spec(s, t, y, F.cross_entropy, epochs_done=0.5)) == pytest.approx(hard + soft / 2, rel=1e-5)
