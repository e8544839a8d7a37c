"""The epoch loop shared by every kind of training: resume, history replay, checkpoints, early stopping.

A `Step` (the supervised step in training/trainer.py, the adversarial one in training/gan.py) says what one epoch
does and what its checkpoint holds; the loop decides which epoch is best, when to write checkpoints (at most every
`train.checkpoint_seconds`, and at the end), when to stop early, and replays a killed run's history on `--resume`
so that it ends where an uninterrupted run would (same RNG stream). Under torchrun only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Protocol

import torch

from training.config import RunConfig
from training.distributed import Distributed
from training.runs import load_checkpoint, read_history, save_checkpoint


class Progress:
    """A tqdm bar per epoch over its batches (stderr), or nothing when quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def bar(self, total: int, epoch: int, epochs: int):
        from tqdm import tqdm

        return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", leave=False, disable=self.quiet,
                    file=sys.stderr, dynamic_ncols=True)


class Step(Protocol):
    """One kind of training, as the loop drives it."""

    monitor: str  # the row key that picks the best epoch
    maximize: bool  # whether a higher score is better

    def epoch(self, epoch: int, order: torch.Generator, progress: Progress) -> dict:
        """Train one epoch (batches in an order drawn from `order`) and validate; return its metrics.jsonl row."""

    def score(self, row: dict) -> float | None:
        """The row's score for picking the best epoch (None: this epoch may not be picked)."""

    def end_epoch(self, score: float | None) -> None:
        """After the best-epoch decision (a learning-rate schedule steps here)."""

    def best_weights(self) -> dict:
        """A CPU copy of the weights best.pt keeps."""

    def state_dict(self) -> dict:
        """What last.pt holds besides the RNG and loop state: weights, optimizer, schedule."""

    def load_state_dict(self, checkpoint: dict) -> None:
        """Continue from last.pt."""

    def describe(self, row: dict) -> str:
        """The row as the per-epoch log line shows it."""


def improves(score: float | None, best: float, maximize: bool) -> bool:
    return score is not None and (score > best if maximize else score < best)


def patience_spent(stale: int, patience: int) -> bool:
    """Early stopping: `patience` epochs (0: never) without a better monitored value."""
    return bool(patience) and stale >= patience


class EpochLoop:
    """Runs a step's epochs into the run folder `out`; see the module docstring."""

    def __init__(self, step: Step, config: RunConfig, out: Path, log: Callable[[str], None] = print,
                 quiet: bool = True, distributed: Distributed | None = None):
        self.step, self.config, self.out, self.log, self.quiet = step, config, out, log, quiet
        self.distributed = distributed
        self.main = distributed is None or distributed.main
        self.order = torch.Generator().manual_seed(config.seed)
        self.state = {"epoch": 0, "best": -math.inf if step.maximize else math.inf, "best_epoch": 0, "stale": 0}
        self.best = None  # the best epoch's weights, until the next checkpoint writes them
        self.last_checkpoint = time.perf_counter()

    def restore(self, resume: bool) -> None:
        """Continue from last.pt when resuming and there is one; else drop an earlier run's checkpoints."""
        checkpoint = None
        if self.main and resume and (self.out / "last.pt").exists():
            checkpoint = load_checkpoint(self.out / "last.pt")
        if self.distributed:  # every rank resumes from rank 0's checkpoint: the folder need not be shared storage
            checkpoint = self.distributed.broadcast(checkpoint)
        if checkpoint is not None:
            self.step.load_state_dict(checkpoint)
            torch.set_rng_state(checkpoint["rng"]["torch"])
            self.order.set_state(checkpoint["rng"]["generator"])
            self.state = checkpoint["state"]
            self.log(f"resuming {self.out} after epoch {self.state['epoch']}")
        elif self.main:  # an earlier run's checkpoints in this folder are not ours: --resume must not pick them up
            for name in ("last.pt", "best.pt"):
                (self.out / name).unlink(missing_ok=True)

    def checkpoint(self, epoch: int, stopping: bool) -> None:
        """Checkpoints cost more than a small model's epoch: written at most every checkpoint_seconds (a killed run
        resumes from the last one and replays the epochs after it exactly), and always at the end."""
        train = self.config.train
        if not self.main or not (epoch == train.epochs or stopping or train.checkpoint_seconds <= 0
                                 or time.perf_counter() - self.last_checkpoint >= train.checkpoint_seconds):
            return
        if self.best is not None:  # before last.pt, whose state names the best epoch
            save_checkpoint(self.best, self.out / "best.pt")
            self.best = None
        save_checkpoint({**self.step.state_dict(), "state": self.state,
                         "rng": {"torch": torch.get_rng_state(), "generator": self.order.get_state()}},
                        self.out / "last.pt")
        self.last_checkpoint = time.perf_counter()

    def finish_epoch(self, epoch: int, row: dict) -> bool:
        """Pick the best epoch, step the schedule, record the row; return whether it improved."""
        score = self.step.score(row)
        improved = improves(score, self.state["best"], self.step.maximize)
        if improved:
            self.state.update(best=score, best_epoch=epoch, stale=0)
            self.best = self.step.best_weights()
        else:
            self.state["stale"] += 1
        self.step.end_epoch(score)
        self.state["epoch"] = epoch
        return improved

    def run(self, resume: bool = False, stop_after: int | None = None,
            epoch_callback: Callable[[int, dict], None] | None = None) -> dict | None:
        """Train until the last epoch or early stopping; return the loop state, or None when `stop_after` epochs
        of this call ended it (as if killed). `epoch_callback(epoch, row)` runs after each epoch's checkpoint."""
        self.restore(resume)
        train, progress = self.config.train, Progress(self.quiet)
        history = read_history(self.out, self.state["epoch"]) if self.main else []
        with open(self.out / "metrics.jsonl" if self.main else os.devnull, "w") as metrics_file:
            for row in history:
                metrics_file.write(json.dumps(row) + "\n")
            for ran, epoch in enumerate(range(self.state["epoch"] + 1, train.epochs + 1), start=1):
                if patience_spent(self.state["stale"], train.patience):  # a resumed run that had stopped
                    break
                row = self.step.epoch(epoch, self.order, progress)
                improved = self.finish_epoch(epoch, row)
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                stopping = patience_spent(self.state["stale"], train.patience)
                self.checkpoint(epoch, stopping)
                self.log(f"epoch {epoch:3d}/{train.epochs}  {self.step.describe(row)}{'  *' if improved else ''}")
                if epoch_callback is not None:
                    epoch_callback(epoch, row)
                if stop_after is not None and ran >= stop_after:
                    return None
                if stopping:
                    self.log(f"early stop: no better {self.step.monitor} for {self.state['stale']} epochs")
                    break
        return self.state
