"""Distributed training on one machine: 2 CPU processes, gloo backend, loopback only."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from compress.data import load_data
    from compress.training.callbacks import TrainLogger
    from compress.training.config import TrainConfig
    from compress.training.loop import fit
    from models import create_model

    bundle = load_data("digits", image_size=16, train_limit=64)
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    model = create_model("mobilenet_v2", num_classes=10, width_mult=0.25, small_input=True)
    logger = TrainLogger(progress=False, log_file=Path(out_dir) / "train.log")  # fit reports on rank 0 only
    res = fit(model, bundle, TrainConfig(epochs=2, batch_size=16, max_steps_per_epoch=2, bn_recalibrate=32),
              callback=logger)
    logger.close()
    state = model.state_dict()
    summary = {"world_size": res.world_size, "epochs": res.epochs_run, "best": res.best_metrics["top1"],
               "checksum": {k: float(v.double().sum()) for k, v in state.items()}}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(summary))


@pytest.mark.slow
def test_two_process_gloo_training_keeps_replicas_identical(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2 and r0["epochs"] == r1["epochs"] == 2
    assert r0["best"] == r1["best"]  # same weights and BN buffers → same validation metric
    for k, v in r0["checksum"].items():
        assert v == pytest.approx(r1["checksum"][k], rel=1e-6, abs=1e-6), k
    log = (tmp_path / "train.log").read_text()
    assert log.count("start:") == 1 and "world=2" in log  # only rank 0 writes


@pytest.mark.slow
def test_torchrun_cli_two_processes(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed next to this Python")
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         "-m", "compress", "train", "--model", "mobilenet_v2", "--width-mult", "0.25", "--image-size", "16",
         "--train-limit", "64", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "16",
         "--bn-recalibrate", "32", "--no-progress", "-o", str(out)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from compress.artifact import read_meta

    meta, _ = read_meta(out)
    assert meta.history[-1]["params"]["world_size"] == 2
    assert proc.stdout.count("saved ") == 1  # rank 1 wrote and printed nothing
