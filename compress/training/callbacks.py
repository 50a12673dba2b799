"""What the training loop reports, behind one callback interface.

:func:`~compress.training.loop.fit` calls a :class:`TrainCallback` (on the main process only) at
the start, after every optimizer step, after every validated epoch and at the end.
:class:`TrainLogger` is the standard one: a tqdm bar per epoch and an epoch line on stderr, a text
log file and TensorBoard event files, each optional.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class StepInfo:
    """One optimizer step as the loop saw it (running averages over the epoch so far)."""

    epoch: int
    step: int           # 1-based within the epoch
    global_step: int
    loss: float         # this step's loss
    mean_loss: float    # mean over the epoch so far
    accuracy: float | None  # running training top-1 (multiclass only)
    lr: float


class TrainCallback:
    """No-op base: override what you need."""

    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def on_step(self, step: StepInfo) -> None:
        pass

    def on_epoch_end(self, row: dict[str, Any], improved: bool) -> None:
        pass

    def on_message(self, text: str) -> None:
        """A line worth showing (early stop, ...)."""

    def on_end(self, summary: str) -> None:
        pass

    def close(self) -> None:
        pass


class TrainLogger(TrainCallback):
    """Progress on stderr (``progress``), a text log (``log_file``, appended, one line per
    epoch), TensorBoard event files (``tensorboard`` folder). ``label`` names the run's epochs
    in the lines ("epoch", "distill epoch", ...)."""

    def __init__(self, *, progress: bool = True, log_file: str | os.PathLike | None = None,
                 tensorboard: str | os.PathLike | None = None, label: str = "epoch"):
        self.progress, self.label = progress, label
        self.file = None
        if log_file is not None:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(log_file, "a", encoding="utf-8")
        self.writer = None
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(tensorboard))
        self.bar = None
        self.epochs = 0
        self.monitor = "top1"

    def _write(self, line: str) -> None:
        if self.file is not None:
            self.file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
            self.file.flush()

    def on_start(self, info: dict[str, Any]) -> None:
        self.epochs, self.monitor = int(info.get("epochs", 0)), info.get("monitor", "top1")
        self._write("start: " + " ".join(f"{k}={v}" for k, v in info.items()))

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if self.progress:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (logs stay readable)
            self.bar = tqdm(total=steps, desc=f"{self.label} {epoch}/{epochs}", leave=False, file=sys.stderr,
                            dynamic_ncols=True, disable=None)

    def on_step(self, step: StepInfo) -> None:
        if self.bar is not None:
            post = {"loss": f"{step.mean_loss:.4f}"}
            if step.accuracy is not None:
                post["acc"] = f"{step.accuracy:.3f}"
            self.bar.set_postfix(post)
            self.bar.update()
        if self.writer is not None and (step.global_step % 10 == 0 or step.step == 1):
            self.writer.add_scalar("train/loss", step.loss, step.global_step)
            self.writer.add_scalar("train/lr", step.lr, step.global_step)

    def on_epoch_end(self, row: dict[str, Any], improved: bool) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        value = row.get(f"val_{self.monitor}", float("nan"))
        line = (f"{self.label} {row['epoch']}/{self.epochs}  loss {row['train_loss']:.4f}  "
                f"val_loss {row.get('val_loss', float('nan')):.4f}  val_{self.monitor} {value:.4f}"
                f"{' *' if improved else ''}  lr {row['lr']:.3g}  {row['seconds']:.1f}s"
                + (f"  (average of {row['averaged_epochs']} epochs)" if "averaged_epochs" in row else ""))
        self.on_message(line)
        if self.writer is not None:
            self.writer.add_scalar("train/epoch_loss", row["train_loss"], row["epoch"])
            for k, v in row.items():
                if k.startswith("val_"):
                    self.writer.add_scalar(f"val/{k[4:]}", v, row["epoch"])
            self.writer.flush()

    def on_message(self, text: str) -> None:
        self._write(text)
        if self.progress:
            print(text, file=sys.stderr, flush=True)

    def on_end(self, summary: str) -> None:
        self._write(summary)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()
