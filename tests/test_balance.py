"""Class imbalance (issue 16): the ``SPEC:imbalance=R`` view, ``--balance`` in the loop and in
every fine-tuning stage's config, and per-class recall in the eval table."""
import collections
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.cli import main
from compress.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATIO = 0.1


@pytest.fixture(scope="module")
def full():
    from compress.data import load_data

    return load_data("digits", image_size=8)


@pytest.fixture(scope="module")
def rare():
    from compress.data import load_data

    return load_data(f"digits:imbalance={RATIO}", image_size=8)


def _counts(targets, k=10):
    return np.bincount(np.asarray(targets), minlength=k)


# ----------------------------------------------------------------------------- the imbalanced view

def test_imbalanced_view_keeps_the_lower_half_and_a_fraction_of_the_upper(full, rare):
    for split in ("train", "val"):
        before, after = _counts(getattr(full, split).targets), _counts(getattr(rare, split).targets)
        assert (after[:5] == before[:5]).all()
        assert (after[5:] == np.maximum(1, np.round(RATIO * before[5:]))).all(), (split, before, after)
    # the kept images are images of the full split, with their own labels
    full_rows = {(tuple(x.flatten().tolist()), int(y)) for x, y in zip(full.train.images[:, :1], full.train.targets)}
    assert all((tuple(x.flatten().tolist()), int(y)) in full_rows
               for x, y in zip(rare.train.images[:, :1], rare.train.targets))
    # the test split is untouched
    assert torch.equal(rare.test.images, full.test.images) and torch.equal(rare.test.targets, full.test.targets)
    assert rare.info["imbalance"]["reduced_classes"] == ["5", "6", "7", "8", "9"]
    assert rare.info["imbalance"]["class_counts"]["train"] == _counts(rare.train.targets).tolist()


def test_imbalanced_view_is_deterministic_and_seeded(rare):
    from compress.data import load_data
    from compress.data.imbalance import imbalanced_indices

    again = load_data(f"digits:imbalance={RATIO}", image_size=8)
    assert torch.equal(again.train.images, rare.train.images) and torch.equal(again.train.targets, rare.train.targets)
    targets = np.repeat(np.arange(4), 50)
    a, b = imbalanced_indices(targets, 4, 0.2, seed=0), imbalanced_indices(targets, 4, 0.2, seed=1)
    assert len(a) == len(b) == 100 + 2 * 10 and not np.array_equal(a, b)
    assert np.array_equal(a, imbalanced_indices(targets, 4, 0.2, seed=0))
    assert np.array_equal(imbalanced_indices(targets, 4, 1.0, seed=0), np.arange(200))


def test_spec_options_parse_and_reject_bad_values():
    from compress.data import load_data
    from compress.data.spec import split_spec_options
    from compress.training.presets import preset_for

    assert split_spec_options("fashion-mnist:imbalance=0.05") == ("fashion-mnist", {"imbalance": "0.05"})
    assert split_spec_options("imagefolder:/data/a:imbalance=0.5") == ("imagefolder:/data/a", {"imbalance": "0.5"})
    assert split_spec_options("imagefolder:/data/a") == ("imagefolder:/data/a", {})
    assert preset_for("fashion-mnist:imbalance=0.05") == preset_for("fashion-mnist") != {}
    for spec, fragment in (("digits:imbalance=0", "(0, 1]"), ("digits:imbalance=1.5", "(0, 1]"),
                           ("digits:imbalance=-0.1", "(0, 1]"), ("digits:imbalance=abc", "not a number"),
                           ("digits:colour=red", "unknown data spec option 'colour'"),
                           ("digits-multilabel:imbalance=0.5", "single-label")):
        with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            load_data(spec, image_size=8)


# ----------------------------------------------------------------------------- samplers

def test_oversample_draws_every_class_about_equally_with_the_same_epoch_length(rare):
    from compress.training.balance import BalancedSampler

    targets = rare.train.targets.numpy()
    s = BalancedSampler(targets, "oversample", seed=0)
    idx = list(s)
    assert len(idx) == len(s) == len(targets)
    drawn = _counts(targets[idx])
    assert drawn.min() > 0.6 * len(targets) / 10 and drawn.max() < 1.4 * len(targets) / 10, drawn
    assert drawn[5:].sum() > 5 * _counts(targets)[5:].sum()  # the rare classes far more often than they occur
    assert idx != list(s)  # a new draw each epoch ...
    s.set_epoch(3)
    assert list(s) == list(s)  # ... the same draw for the same (seed, epoch)


def test_undersample_draws_the_rarest_count_of_every_class_without_repeats(rare):
    from compress.training.balance import BalancedSampler, epoch_samples

    targets = rare.train.targets.numpy()
    fewest = _counts(targets).min()
    s = BalancedSampler(targets, "undersample", seed=0)
    first, second = list(s), list(s)
    assert len(first) == len(s) == 10 * fewest == epoch_samples(rare.train, "undersample")
    assert (_counts(targets[first]) == fewest).all() and len(set(first)) == len(first)
    assert first != second and (_counts(targets[second]) == fewest).all()
    # sharded under torchrun: the processes' shards make up the common draw
    shards = [BalancedSampler(targets, "undersample", seed=0, rank=r, world=2) for r in (0, 1)]
    for sh in shards:
        sh.set_epoch(0)
    assert sorted(list(shards[0]) + list(shards[1])) == sorted(s.epoch_indices(0).tolist())


# ----------------------------------------------------------------------------- what the loop sees

class _Linear(nn.Module):
    def __init__(self, k=10):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, k)

    def forward(self, x):
        return self.fc(x.flatten(1))


class _Recording:
    """Wraps a criterion and keeps every training target it is given."""

    def __new__(cls, inner):
        class Recording(type(inner)):
            def __call__(self, logits, inputs, target, aux=None):
                self.seen.extend(target.tolist())
                return super().__call__(logits, inputs, target, aux)

        inner.__class__ = Recording
        inner.seen = []
        return inner


def _fit_seeing(bundle, balance, batch_size=40):
    from compress.training import TrainConfig, fit
    from compress.training.criteria import build_criterion

    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=0.01, bn_recalibrate=0, balance=balance, label_smoothing=0)
    crit = _Recording(build_criterion(cfg, bundle.task))
    res = fit(_Linear(bundle.num_classes), bundle, cfg, criterion=crit)
    return crit, res


def test_the_loop_sees_each_mode(rare):
    counts = _counts(rare.train.targets)
    n = len(rare.train)
    plain, _ = _fit_seeing(rare, "none")
    assert (_counts(plain.seen) <= counts).all() and len(plain.seen) == n // 40 * 40  # the data as it is
    over, _ = _fit_seeing(rare, "oversample")
    drawn = _counts(over.seen)
    assert len(over.seen) == len(plain.seen) and drawn[5:].sum() > 0.35 * len(over.seen) > 3 * counts[5:].sum(), drawn
    under, _ = _fit_seeing(rare, "undersample", batch_size=int(counts.min()) * 2)
    assert (_counts(under.seen) == counts.min()).all(), _counts(under.seen)


def test_precise_bn_averages_over_what_training_draws(rare, monkeypatch):
    from compress.training import loop

    given = []
    monkeypatch.setattr(loop, "recalibrate_batchnorm", lambda model, data, *a, **k: given.append(data))
    for mode in ("none", "class-weights", "oversample", "undersample"):
        _fit_seeing(rare, mode, batch_size=24)
        data = given.pop()
        if mode in ("none", "class-weights"):
            assert data is rare.train
        else:  # a balanced draw of the training split
            drawn = _counts([rare.train[i][1] for i in data.indices])
            assert drawn.min() > 0.6 * drawn.mean(), (mode, drawn)


def test_class_weights_reach_the_loss_and_the_report(rare):
    crit, res = _fit_seeing(rare, "class-weights")
    counts = _counts(rare.train.targets).astype(float)
    expected = counts.sum() / (10 * counts)
    assert torch.allclose(crit.loss.class_weight.cpu(), torch.tensor(expected, dtype=torch.float32))
    assert res.criterion["class_weights"] == pytest.approx(expected, abs=1e-4)
    assert float((expected * counts).sum() / counts.sum()) == pytest.approx(1.0)  # mean 1 over the samples


def test_weighted_cross_entropy_equals_the_hand_computation():
    from compress.training.losses import build_loss

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 3, generator=g), torch.tensor([0, 0, 0, 1, 1, 2])
    w = torch.tensor([0.5, 1.0, 3.0])
    loss = build_loss("ce", "multiclass")
    plain = float(loss(logits, y))
    loss.class_weight = w
    weighted = float(loss(logits, y))
    logp = F.log_softmax(logits, 1)
    hand = float(sum(-w[c] * logp[i, c] for i, c in enumerate(y.tolist())) / len(y))
    assert weighted == pytest.approx(hand, rel=1e-6) and abs(weighted - plain) > 1e-3
    # with label smoothing the weight follows the label, not the smoothed mass of each class
    smooth = build_loss("ce", "multiclass", label_smoothing=0.3)
    smooth.class_weight = w
    t = F.one_hot(y, 3).float() * 0.7 + 0.1
    assert float(smooth(logits, y)) == pytest.approx(float((w[y] * -(t * logp).sum(1)).mean()), rel=1e-6)
    # a mixup target weighs its sample by the mix of its labels' weights
    mixed = 0.25 * F.one_hot(y, 3).float() + 0.75 * F.one_hot(y.flip(0), 3).float()
    smooth_mixed = mixed * 0.7 + 0.1
    assert float(smooth(logits, mixed)) == pytest.approx(
        float(((0.25 * w[y] + 0.75 * w[y.flip(0)]) * -(smooth_mixed * logp).sum(1)).mean()), rel=1e-6)
    focal = build_loss("focal", "multiclass")
    focal.class_weight = w
    p = logp.exp()
    assert float(focal(logits, y)) == pytest.approx(
        float(sum(-w[c] * (1 - p[i, c]) ** 2 * logp[i, c] for i, c in enumerate(y.tolist())) / len(y)), rel=1e-5)


def test_multilabel_class_weights_are_bce_pos_weight_and_sampling_is_refused():
    from compress.training.balance import check_balance, class_weight_tensor
    from compress.training.losses import build_loss

    targets = np.array([[1, 0], [1, 1], [1, 0], [0, 0]], dtype=np.float32)
    w = class_weight_tensor(targets, 2, "multilabel")
    assert w.tolist() == pytest.approx([1 / 3, 3.0])  # negatives / positives
    logits, t = torch.randn(4, 2, generator=torch.Generator().manual_seed(1)), torch.from_numpy(targets)
    bce = build_loss("bce", "multilabel")
    bce.class_weight = w
    logp, log1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
    hand = -(w * t * logp + (1 - t) * log1mp).mean()
    assert float(bce(logits, t)) == pytest.approx(float(hand), rel=1e-6)
    for mode in ("oversample", "undersample"):
        with pytest.raises(UserError, match="one class per sample"):
            check_balance(mode, "multilabel")
    check_balance("class-weights", "multilabel")


def test_distillation_weights_its_label_term(rare):
    from compress.training import TrainConfig, fit
    from compress.training.criteria import build_criterion

    cfg = TrainConfig(epochs=1, batch_size=40, lr=0.01, bn_recalibrate=0, balance="class-weights")
    crit = build_criterion(cfg, "multiclass", teacher=_Linear().eval())
    res = fit(_Linear(), rare, cfg, criterion=crit)
    assert crit.hard_loss.class_weight is not None and len(res.criterion["class_weights"]) == 10


# ----------------------------------------------------------------------------- every stage's config

def test_every_fine_tuning_stage_has_the_option():
    from compress.distill.config import DistillConfig
    from compress.prune.config import PruneConfig
    from compress.quantize.config import QuantizeConfig
    from compress.training.api import TrainStageConfig

    for cls, required in ((TrainStageConfig, {}), (DistillConfig, {"teacher": "t", "model": "mobilenet_v2"}),
                          (PruneConfig, {"ratio": 0.5}), (QuantizeConfig, {"int8": True})):
        field = next(f for f in dataclasses.fields(cls) if f.name == "balance")
        assert field.default == "none" and "oversample" in field.metadata["help"], cls
        assert cls.from_dict({**required, "balance": "class-weights"}).balance == "class-weights"
        with pytest.raises(UserError, match="unknown --balance 'sideways'"):
            cls.from_dict({**required, "balance": "sideways"})
    assert DistillConfig(teacher="t", model="mobilenet_v2").loop_config().balance == "none"
    assert DistillConfig(teacher="t", model="mobilenet_v2", balance="oversample").loop_config().balance == "oversample"


def test_qat_fine_tuning_runs_the_loop_with_the_balance(monkeypatch, tmp_path):
    """quantize's QAT hands --balance to the loop (and counts the undersampled epoch's steps)."""
    from compress.quantize.config import QuantizeConfig
    from compress.training import loop

    seen = {}

    class Stop(Exception):
        pass

    def fake_fit(model, bundle, cfg, **kw):
        seen["balance"] = cfg.balance
        raise Stop

    monkeypatch.setattr(loop, "fit", fake_fit)
    model = _tiny_artifact(tmp_path)
    from compress.data import load_data
    from compress.quantize.qat import quantization_aware_finetune

    calib = np.zeros((4, 3, 8, 8), dtype=np.float32)
    cfg, logs = QuantizeConfig(balance="undersample", qat_epochs=1, distill=False, batch_size=16), []
    with pytest.raises(Stop):
        quantization_aware_finetune(model, cfg, types="s8s8", per_channel=True, calib=calib, log=logs.append)
    assert seen["balance"] == "undersample"
    epoch = 10 * _counts(load_data(f"digits:imbalance={RATIO}", image_size=8).train.targets).min()
    assert any(f"1 epoch(s) x {epoch // 16} step(s)" in line for line in logs), logs


@pytest.mark.parametrize("stage", ["kmeans", "prune"])
def test_kmeans_and_prune_fine_tuning_run_the_loop_with_the_balance(monkeypatch, tmp_path, stage):
    from compress.prune import recovery

    seen = {}

    class Stop(Exception):
        pass

    def fake_finetune(model, bundle, cfg, **kw):
        seen["balance"] = cfg.balance
        raise Stop

    monkeypatch.setattr(recovery, "finetune", fake_finetune)
    with pytest.raises(Stop):
        if stage == "kmeans":
            from compress.quantize.config import QuantizeConfig
            from compress.quantize.kmeans import kmeans_artifact

            cfg = QuantizeConfig(kmeans_bits=4, finetune=1, balance="class-weights", distill=False)
            kmeans_artifact(_tiny_artifact(tmp_path), tmp_path / "k.safetensors", cfg, progress=False)
        else:
            from compress.prune.api import prune_artifact
            from compress.prune.config import PruneConfig

            cfg = PruneConfig(ratio=0.5, finetune=1, balance="class-weights", distill=False, bench=False)
            prune_artifact(_tiny_artifact(tmp_path), tmp_path / "p.safetensors", cfg, progress=False)
    assert seen["balance"] == "class-weights"


def _tiny_artifact(tmp_path):
    from compress.artifact import save_model
    from compress.meta import ModelMeta
    from models import create_model

    model = create_model("mobilenet_v2", num_classes=10, width_mult=0.25, small_input=True)
    meta = ModelMeta.for_model(model, task="multiclass", labels=[str(i) for i in range(10)], input_size=[3, 8, 8],
                               mean=[0.0] * 3, std=[1.0] * 3, interpolation="bilinear")
    meta.add_history("train", {"data": {"spec": f"digits:imbalance={RATIO}", "data_seed": 0}}, {})
    path = tmp_path / "m.safetensors"
    save_model(model, path, meta)
    return path


# ----------------------------------------------------------------------------- per-class recall

class _Fixed(nn.Module):
    """Predicts the class stored in the first pixel of each image."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return F.one_hot(x[:, 0, 0, 0].long(), 3).float() * 5 + self.dummy


def test_per_class_recall_matches_a_hand_count():
    from compress.data import ArrayDataset
    from compress.evaluate import EvalResult, evaluate
    from compress.report.evaluate import format_eval

    truth = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    pred = [0, 0, 1, 2, 1, 1, 2, 0, 0, 0]  # recall: 2/4, 2/2, 1/4
    x = torch.zeros(len(truth), 3, 2, 2)
    x[:, 0, 0, 0] = torch.tensor(pred, dtype=torch.float32)
    metrics = evaluate(_Fixed(), ArrayDataset(x, torch.tensor(truth)), "multiclass", labels=["a", "b", "c"])
    assert metrics["recall_per_class"] == {"a": 0.5, "b": 1.0, "c": 0.25}
    json.dumps(metrics)  # the eval JSON holds it as is
    text = format_eval(EvalResult("m", "d", "test", 0, "multiclass", 10, metrics, "r.json"))
    table = text[text.index("recall per class"):].splitlines()
    assert [line.split() for line in table[3:]] == [["a", "0.5", "4"], ["b", "1", "2"], ["c", "0.25", "4"]]


def test_recall_table_keeps_the_lowest_when_there_are_many_classes():
    from compress.report.evaluate import format_recall

    table = {f"c{i}": {"recall": (29 - i) / 30, "support": 1} for i in range(30)}
    text = format_recall(table, limit=5)
    assert "the 5 lowest of 30" in text and [line.split()[0] for line in text.splitlines()[3:]] == \
        ["c29", "c28", "c27", "c26", "c25"]
    assert len(format_recall(table, limit=30).splitlines()) == 3 + 30


# ----------------------------------------------------------------------------- the command line

TINY = ["--model", "mobilenet_v2", "--width-mult", "0.25", "--image-size", "16", "--epochs", "1",
        "--max-steps-per-epoch", "2", "--batch-size", "32", "--bn-recalibrate", "0", "--no-progress"]


def test_train_records_the_balance_and_the_view_and_eval_prints_recall(tmp_path, capsys):
    from compress.artifact import load_model

    out = tmp_path / "bal.safetensors"
    assert main(["train", *TINY, "--data", "digits:imbalance=0.2", "--balance", "oversample", "-o", str(out)]) == 0
    _, meta = load_model(out)
    params = meta.history[-1]["params"]
    assert params["config"]["balance"] == "oversample" and params["data"]["spec"] == "digits:imbalance=0.2"
    report = json.loads(out.with_name("bal.safetensors.json").read_text())
    assert report["data"]["imbalance"]["ratio"] == 0.2 and report["data"]["sizes"]["test"] == 270
    assert set(report["result"]["test"]["recall_per_class"]) == {str(i) for i in range(10)}
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0  # the recorded spec: the imbalanced view, its whole test split
    printed = capsys.readouterr().out
    assert "recall per class" in printed and "test, 270 samples" in printed
    evaluated = json.loads(out.with_name("bal.safetensors.eval-test.json").read_text())
    assert evaluated["metrics"]["recall_per_class"] == report["result"]["test"]["recall_per_class"]


@pytest.mark.parametrize("argv, fragment", [
    (["--balance", "sideways"], "unknown --balance 'sideways'"),
    (["--data", "digits:imbalance=1.5"], "imbalance must be in (0, 1]"),
    (["--data", "digits:imbalance=none"], "not a number"),
    (["--data", "digits:balance=0.5"], "unknown data spec option 'balance'"),
    (["--data", "digits-multilabel", "--balance", "oversample"], "one class per sample"),
    (["--data", "digits-multilabel", "--balance", "undersample"], "one class per sample"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, fragment):
    capsys.readouterr()
    assert main(["train", *TINY, *argv, "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "x.safetensors").exists()
