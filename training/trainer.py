"""`fit`: train a config into a run folder (training/runs.py), with the supervised step or the adversarial one.

Both plug into one epoch loop (training/loop.py), which owns resume, checkpoints and early stopping. Under torchrun
(training/distributed.py) every process trains a DistributedDataParallel replica on its share of each global batch
of `train.batch_size`; rank 0 evaluates, decides and writes, and the others follow its decisions.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from training import architectures
from training.baselines import best_baseline
from training.config import RunConfig, apply_overrides, load_config
from training.distributed import Distributed
from training.gan import GANStep
from training.loop import EpochLoop, Progress
from training.network import SCALINGS, Network
from training.optim import load_optimizer_state, make_optimizer, make_schedule
from training.plots import plot_curves
from training.predict import batched, torch_predictor
from training.prepare import Prepared, prepare
from training.runs import Resolved, format_result, load_trained, make_summary, read_rows
from training.tasks import ServedModel, get_task, higher_is_better


def network_hyper(config: RunConfig, prepared: Prepared) -> dict:
    """The architecture's full hyperparameters: the config's values and the sizes the data dictates."""
    sample_shape = list(prepared.X["train"].shape[1:])
    if prepared.data.kind == "series":
        sample_shape = [prepared.window, 1]
    out_features = get_task(prepared.task).out_features(prepared)
    return architectures.resolve_hyper(config.arch, config.model, sample_shape, out_features)


def build_network(config: RunConfig, prepared: Prepared) -> tuple[Network, dict]:
    """The network for a run, and the architecture's full hyperparameters (with the data's sizes)."""
    hyper = network_hyper(config, prepared)
    body = architectures.build(config.arch, hyper)
    network = Network(body, torch.from_numpy(np.asarray(prepared.x_mean)), torch.from_numpy(np.asarray(prepared.x_std)),
                      prepared.y_mean, prepared.y_std, series=prepared.data.kind == "series",
                      scaling=prepared.scaling or SCALINGS[0])
    return network, hyper


def evaluate_split(network: Network, prepared: Prepared, part: str, loss) -> dict[str, float]:
    """Loss (training units) and the task's metrics (data units) on one split."""
    task = get_task(prepared.task)
    X, y = prepared.X[part], prepared.y[part]
    device = network.x_mean.device  # the CPU, or a data-parallel run's GPU
    network.eval()
    with torch.inference_mode():  # one forward pass gives both the loss and the served outputs
        xt = torch.from_numpy(X).to(device)
        yt = None if y is None else torch.from_numpy(y).to(device)
        raw = network(xt)
        value = float(loss(raw, task.target(network, xt, yt)))
        served = task.head(network, raw, xt)
    outputs = tuple(o.cpu().numpy() for o in served) if isinstance(served, tuple) else served.cpu().numpy()
    return {"loss": value, **task.metrics(outputs, y)}


class SupervisedStep:
    """A network trained on its task's loss by one optimizer, validated on the validation split every epoch."""

    def __init__(self, config: RunConfig, prepared: Prepared, distributed: Distributed | None, quiet: bool):
        self.config, self.prepared, self.distributed, self.quiet = config, prepared, distributed, quiet
        self.task = get_task(prepared.task)
        device = distributed.device if distributed else torch.device("cpu")
        self.network, self.hyper = build_network(config, prepared)
        self.network.to(device)
        self.model = distributed.wrap(self.network) if distributed else self.network  # what a training step calls
        self.optimizer = make_optimizer(config.optimizer, self.network.parameters())
        self.monitor = config.train.monitor
        self.maximize = higher_is_better(self.monitor)
        self.schedule = make_schedule(config.schedule, self.optimizer, config.train.epochs, self.maximize)
        self.loss = self.task.loss()
        self.X = torch.from_numpy(prepared.X["train"]).to(device)
        self.y = None if prepared.y["train"] is None else torch.from_numpy(prepared.y["train"]).to(device)
        self.batch = config.train.batch_size // (distributed.world_size if distributed else 1)  # this process's share

    def epoch(self, epoch: int, order: torch.Generator, progress: Progress) -> dict:
        self.model.train()
        index = torch.randperm(len(self.X), generator=order)
        if self.distributed:  # the same order on every rank (same generator); each takes its share of every batch
            index = self.distributed.shard(index)
            self.distributed.seed_epoch(self.config.seed, epoch)
        total, seen = 0.0, 0
        with progress.bar(math.ceil(len(index) / self.batch), epoch, self.config.train.epochs) as bar:
            for i in range(0, len(index), self.batch):
                idx = index[i:i + self.batch]
                xb = self.X[idx]
                target = self.task.target(self.network, xb, None if self.y is None else self.y[idx])
                self.optimizer.zero_grad(set_to_none=True)
                value = self.loss(self.model(xb), target)
                value.backward()
                if self.config.train.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.network.parameters(), self.config.train.grad_clip)
                self.optimizer.step()
                total += value.detach() * len(idx)  # summed as a tensor: no per-batch sync and conversion
                seen += len(idx)
                if not self.quiet:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(total) / seen:.4f}")
        return self.validate(epoch, total, seen)

    def validate(self, epoch: int, total, seen: int) -> dict:
        """The epoch's row; rank 0 evaluates and every rank takes its row, so that all decide alike."""
        main = self.distributed is None or self.distributed.main
        if self.distributed:  # the mean over every rank's samples
            total, seen = self.distributed.sum(total, seen)
        val = evaluate_split(self.network, self.prepared, "val", self.loss) if main else {}
        row = {"epoch": epoch, "train_loss": float(total) / seen, **{f"val_{k}": v for k, v in val.items()},
               "lr": self.optimizer.param_groups[0]["lr"]}
        return self.distributed.broadcast(row) if self.distributed else row

    def score(self, row: dict) -> float:
        if self.monitor not in row:
            raise ValueError(f"train.monitor: {self.monitor!r} is not measured for task {self.task.name!r}; "
                             f"choose one of {sorted(k for k in row if k.startswith('val_'))}")
        return row[self.monitor]

    def end_epoch(self, score: float | None) -> None:
        if isinstance(self.schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.schedule.step(score)
        elif self.schedule is not None:
            self.schedule.step()

    def best_weights(self) -> dict:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.network.state_dict().items()}

    def state_dict(self) -> dict:
        return {"model": {k: v.cpu() for k, v in self.network.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict() if self.schedule is not None else {}}

    def load_state_dict(self, checkpoint: dict) -> None:
        self.network.load_state_dict(checkpoint["model"])
        load_optimizer_state(self.optimizer, checkpoint["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(checkpoint["schedule"])

    def describe(self, row: dict) -> str:
        return f"train_loss {row['train_loss']:.4f}  " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                                  if k.startswith("val_"))

    def evaluate_best(self, out: Path, state: dict) -> tuple[dict, dict]:
        """(test metrics, val_* metrics) of the best epoch's weights, on the CPU."""
        self.network.to("cpu")
        self.network.load_state_dict(torch.load(out / "best.pt", weights_only=True))
        test = self.task.test_metrics(torch_predictor(self.task.serve(self.network)), self.prepared, self.config)
        val = evaluate_split(self.network, self.prepared, "val", self.loss)
        return test, {f"val_{k}": v for k, v in val.items()}

    def plot(self, out: Path) -> list[Path]:
        outputs = batched(torch_predictor(self.task.serve(self.network)), self.prepared.X["test"])
        return self.task.plot(out, self.prepared, outputs)


def train_judge(config: RunConfig, out: Path, log: Callable[[str], None]) -> Callable[[np.ndarray], np.ndarray]:
    """Train (or reuse) the classifier that judges a generator, inside its run folder; return numpy images ->
    probabilities. It is the zoo config `eval.judge` (default digits-cnn), `eval.judge_epochs` long if given."""
    judge_dir = out / "judge"
    if not (judge_dir / "summary.json").exists():
        judge_config = load_config(config.eval.get("judge", "digits-cnn"))
        if "judge_epochs" in config.eval:
            judge_config = apply_overrides(judge_config, [f"train.epochs={int(config.eval['judge_epochs'])}"])
        log(f"training the judge classifier ({judge_config.name}) in {judge_dir}")
        fit(judge_config, judge_dir, log=lambda _m: None)
    resolved, _, network = load_trained(judge_dir)
    return torch_predictor(ServedModel(network, resolved.resolved_task))


def _make_step(config: RunConfig, prepared: Prepared, out: Path, log, quiet: bool,
               distributed: Distributed | None):
    """The run's step, once its config.json is written (rank 0); the generator's judge trains here too."""
    if architectures.get_arch(config.arch).adversarial:
        step = GANStep(config, prepared, network_hyper(config, prepared))
    else:
        step = SupervisedStep(config, prepared, distributed, quiet)
    if distributed is None or distributed.main:
        out.mkdir(parents=True, exist_ok=True)
        Resolved.of(config, prepared, step.hyper).write(out)
    if get_task(prepared.task).needs_judge:
        step.judge = train_judge(config, out, log)
    return step


def _check_launch(config: RunConfig, distributed: Distributed | None) -> None:
    if distributed is not None and architectures.get_arch(config.arch).adversarial:
        raise ValueError(f"the GAN (arch {config.arch!r}) trains in a single process only; run it without torchrun")
    if config.train.epochs < 1:
        raise ValueError(f"train.epochs: expected at least 1, got {config.train.epochs}")
    world = distributed.world_size if distributed else 1
    if config.train.batch_size % world:
        raise ValueError(f"train.batch_size: {config.train.batch_size} is the global batch and must divide evenly "
                         f"among the {world} processes; choose a multiple of {world}")


def fit(config: RunConfig, out: Path, log: Callable[[str], None] = print, quiet: bool = True,
        resume: bool = False, stop_after: int | None = None, distributed: Distributed | None = None,
        epoch_callback: Callable[[int, dict], None] | None = None, fold: tuple[int, int] | None = None):
    """Train `config` into the run folder `out`; return its runs.Summary (also written to summary.json).

    `stop_after` ends the run after that many epochs without finishing it (as if killed), for tests; it then
    returns {}. `epoch_callback(epoch, row)` is called after each epoch's validation and checkpoint with that
    epoch's metrics.jsonl row; an exception it raises ends the run and propagates (tune uses it to prune trials).
    `distributed` (a torchrun launch, from training.distributed.from_environment) trains data-parallel:
    `train.batch_size` stays the global batch, each of the world_size processes takes an equal share of it.
    `fold=(k, K)` trains and validates on fold k of a K-fold cross-validation (see training.prepare.prepare).
    """
    _check_launch(config, distributed)
    started = time.perf_counter()
    main = distributed is None or distributed.main
    if not main:  # rank 0 alone logs and shows progress
        log, quiet = (lambda _msg: None), True
    torch.manual_seed(config.seed)
    prepared = prepare(config, fold)
    step = _make_step(config, prepared, out, log, quiet, distributed)
    state = EpochLoop(step, config, out, log, quiet, distributed).run(resume, stop_after, epoch_callback)
    if state is None:
        return {}
    replicas = distributed.check_replicas(step.network) if distributed else None
    if not main:
        return distributed.broadcast(None)  # rank 0's summary, once it has written the run folder
    test, val = step.evaluate_best(out, state)
    baseline = best_baseline(get_task(prepared.task), prepared, config)
    summary = make_summary(config, prepared, state, test, val, baseline, started, distributed=replicas)
    summary.write(out)
    (out / "plots").mkdir(exist_ok=True)
    plot_curves(out, read_rows(out))
    step.plot(out)
    log(format_result(summary))
    return distributed.broadcast(summary) if distributed else summary
