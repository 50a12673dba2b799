"""Weight averaging (--swa-epochs, --swa-lr) in the training loop, and `compress train --init`
(continue training an artifact)."""
import json

import pytest
import torch

from compress.cli import main
from compress.errors import UserError
from compress.training.config import TrainConfig
from compress.training.schedules import Schedule
from compress.training.swa import WeightAverage

TINY = ["--model", "mobilenet_v2", "--width-mult", "0.25", "--image-size", "16", "--train-limit", "96",
        "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "32", "--bn-recalibrate", "64",
        "--no-progress"]


def test_schedule_holds_the_rate_after_the_scheduled_steps():
    s = Schedule("cosine", total_steps=10, warmup_steps=2, hold_after=10, hold_factor=0.05)
    factors = [s.factor(i) for i in range(16)]
    assert factors[:2] == pytest.approx([1 / 3, 2 / 3])  # warm-up as before
    assert factors[2] == pytest.approx(1.0) and factors[9] < 0.05  # cosine over the 10 scheduled steps
    assert factors[10:] == [0.05] * 6
    assert Schedule("cosine", total_steps=1, hold_after=0, hold_factor=0.2).factor(0) == 0.2
    assert Schedule("cosine", total_steps=10).factor(12) == pytest.approx(0.0)  # no hold: as ever


def test_weight_average_is_the_running_mean_and_swap_hands_back_the_weights():
    # an integer buffer (BatchNorm's counter) before more floating weights: skipped, not the end
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 1))
    avg, seen = WeightAverage(), []
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(value)
        net[1].num_batches_tracked.fill_(int(value))
        seen.append({k: v.clone() for k, v in net.state_dict().items()})
        avg.add(net)
    held = avg.swap_in(net)
    assert torch.equal(held["0.weight"], seen[-1]["0.weight"])
    assert torch.allclose(net[0].weight, torch.full((2, 3), 3.0)) and torch.allclose(net[1].bias, torch.full((2,), 3.0))
    assert torch.allclose(net[2].weight, torch.full((1, 2), 3.0))
    assert int(net[1].num_batches_tracked) == 6  # integer buffers are not averaged
    net.load_state_dict(held)
    assert torch.equal(net[0].weight, seen[-1]["0.weight"])
    with pytest.raises(RuntimeError, match="^nothing averaged yet$"):
        WeightAverage().swap_in(net)


def test_config_checks_and_default_rate():
    assert TrainConfig(epochs=4, swa_epochs=2, lr=0.05).validate().swa_rate == pytest.approx(0.0025)
    assert TrainConfig(epochs=4, swa_epochs=2, swa_lr=0.003).validate().swa_rate == 0.003
    assert TrainConfig(epochs=4, swa_epochs=4).validate().swa_epochs == 4
    with pytest.raises(UserError, match="more than --epochs"):
        TrainConfig(epochs=2, swa_epochs=3).validate()
    with pytest.raises(UserError, match="bn-recalibrate"):
        TrainConfig(epochs=2, swa_epochs=1, bn_recalibrate=0).validate()
    with pytest.raises(UserError, match="swa-lr"):
        TrainConfig(epochs=2, swa_epochs=1, swa_lr=0).validate()


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_fit_validates_and_keeps_the_average_and_trains_on_the_iterate(monkeypatch):
    """Epochs 2-3 of 3 are averaged: what validation sees there is the mean of the end-of-epoch
    weights, the rate is --swa-lr, training goes on from the iterate, and the kept model is the
    average of the best epoch."""
    import compress.training.loop as loop
    from compress.data import load_data
    from compress.training.callbacks import TrainCallback
    from models import create_model

    bundle = load_data("digits", image_size=16, train_limit=96)
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=10, width_mult=0.25, small_input=True)
    validated, iterates, rates = [], [], []
    scores = iter([0.5, 0.6, 0.7])  # every epoch better than the last: the last one is kept

    def fake_validate(m, *args, **kwargs):
        validated.append(_params(m))
        return {"top1": next(scores), "loss": 1.0}

    class Probe(TrainCallback):
        def on_step(self, step):
            rates.append((step.epoch, step.lr))

        def on_epoch_end(self, row, improved):
            iterates.append(_params(model))

    monkeypatch.setattr(loop, "validate", fake_validate)
    cfg = TrainConfig(epochs=3, swa_epochs=2, lr=0.1, swa_lr=0.02, batch_size=16, max_steps_per_epoch=4,
                      warmup_epochs=0, weight_decay=0.0)
    res = loop.fit(model, bundle, cfg, callback=Probe())
    assert [r.get("averaged_epochs") for r in res.history] == [None, 1, 2]
    assert all(lr == pytest.approx(0.02) for epoch, lr in rates if epoch >= 2)
    assert any(lr > 0.05 for epoch, lr in rates if epoch == 1)
    for k in validated[0]:
        assert torch.equal(validated[0][k], iterates[0][k])  # epoch 1: the weights themselves
        assert torch.allclose(validated[1][k], iterates[1][k])  # one averaged epoch: itself
        mean = (iterates[1][k] + iterates[2][k]) / 2
        assert torch.allclose(validated[2][k], mean, atol=1e-6)
    changed = [k for k in iterates[1] if not torch.allclose(iterates[2][k], validated[2][k], atol=1e-6)]
    assert changed  # the epoch went on from the iterate, not from the average
    final = _params(model)
    assert res.best_epoch == 3 and all(torch.allclose(final[k], validated[2][k], atol=1e-6) for k in final)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "tiny.safetensors"
    assert main(["train", *TINY, "--data", "digits", "-o", str(out)]) == 0
    return out


class _Stop(Exception):
    pass


def test_init_starts_from_the_artifact_and_extends_its_history(trained, tmp_path, monkeypatch):
    import compress.training.loop
    from compress.artifact import load_model

    start, _ = load_model(trained)
    seen = {}

    def fake_fit(model, *args, **kwargs):
        seen.update({k: v.clone() for k, v in model.state_dict().items()})
        raise _Stop

    with monkeypatch.context() as m:
        m.setattr(compress.training.loop, "fit", fake_fit)
        with pytest.raises(_Stop):  # --model and --width-mult name another network: --init's wins
            main(["train", *TINY, "--width-mult", "0.5", "--init", str(trained), "-o", str(tmp_path / "x.safetensors")])
    assert seen.keys() == start.state_dict().keys()
    assert all(torch.equal(seen[k], v) for k, v in start.state_dict().items())

    out = tmp_path / "more.safetensors"
    assert main(["train", *TINY, "--epochs", "2", "--swa-epochs", "1", "--init", str(trained), "-o", str(out)]) == 0
    _, meta = load_model(out)
    assert [h["stage"] for h in meta.history] == ["train", "train"]
    assert meta.history[-1]["params"]["init"] == str(trained)
    assert meta.history[-1]["params"]["model_kwargs"] == {"width_mult": 0.25, "small_input": True}
    report = json.loads(out.with_name("more.safetensors.json").read_text())
    assert report["history"][1]["averaged_epochs"] == 1 and report["config"]["config"]["swa_epochs"] == 1
    assert "average of 1 epochs" in out.with_name("more.safetensors.log").read_text()


def test_init_and_swa_bad_input_exit_2_with_one_line(trained, tmp_path, capsys):
    def one_line(argv, fragment):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err, err

    base = [a for a in TINY if a not in ("16",)]
    other_size = [*base[:base.index("--image-size") + 1], "24", *base[base.index("--image-size") + 1:]]
    out = str(tmp_path / "o.safetensors")
    one_line(["train", *other_size, "--init", str(trained), "-o", out], "--image-size 16")
    one_line(["train", *TINY, "--init", str(tmp_path / "missing.safetensors"), "-o", out], "missing.safetensors")
    one_line(["train", *TINY, "--init", str(trained), "--pretrained", "-o", out], "--init and --pretrained")
    one_line(["train", *TINY, "--swa-epochs", "2", "-o", out], "more than --epochs")
    before = trained.read_bytes()
    one_line(["train", *TINY, "--init", str(trained), "-o", str(trained)], str(trained.name))
    assert trained.read_bytes() == before  # the input is never overwritten
    one_line(["distill", "--teacher", str(trained), "--student", str(trained), "--init", str(trained),
              "-o", out], "--student")
