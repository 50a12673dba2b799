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


class _Recording(torch.utils.data.Dataset):
    """A dataset that remembers which indices this process's DataLoaders read. Only batch reads
    count (DataLoader fetches through ``__getitems__``): the training loop also reads sample 0
    alone to set its criterion up, which is no part of any rank's shard."""

    def __init__(self, base):
        self.base, self.seen = base, []

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i]

    def __getitems__(self, indices):
        self.seen.extend(int(i) for i in indices)
        return [self.base[i] for i in indices]


def test_distributed_loaders_give_each_rank_a_disjoint_shard(monkeypatch):
    """make_loader(distributed=True): rank r of W reads every W-th sample of the shuffled order,
    so the ranks' shards are disjoint and together cover the training set once per epoch."""
    import torch.distributed as dist

    from compress.data import load_data, make_loader

    train = load_data("digits", image_size=16, train_limit=48).train
    shards = []
    for rank in range(2):
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(dist, "get_rank", lambda group=None: rank)
        recording = _Recording(train)
        loader = make_loader(recording, 8, shuffle=True, seed=0, distributed=True)
        loader.sampler.set_epoch(1)
        for _ in loader:
            pass
        shards.append(recording.seen)
    assert len(shards[0]) == len(shards[1]) == 24
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(48))


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
    bundle.train = recording = _Recording(bundle.train)
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    model = create_model("mobilenet_v2", num_classes=10, width_mult=0.25, small_input=True)
    logger = TrainLogger(progress=False, log_file=Path(out_dir) / "train.log")  # fit reports on rank 0 only
    res = fit(model, bundle, TrainConfig(epochs=2, batch_size=16, max_steps_per_epoch=2, bn_recalibrate=0),
              callback=logger)
    logger.close()
    state = model.state_dict()
    summary = {"world_size": res.world_size, "epochs": res.epochs_run, "best": res.best_metrics["top1"],
               "seen": recording.seen,
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
    # each process trained on its own shard: 2 epochs x 2 steps x 8 samples, no sample on both ranks
    # within an epoch (the per-epoch shuffles differ, so compare epoch by epoch)
    for epoch in range(2):
        a = set(r0["seen"][epoch * 16:(epoch + 1) * 16])
        b = set(r1["seen"][epoch * 16:(epoch + 1) * 16])
        assert len(a) == len(b) == 16 and not a & b


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
