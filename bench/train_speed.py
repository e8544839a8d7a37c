"""Training speed: the trainer (`training.trainer.fit`) against a minimal hand-written PyTorch loop.

Same zoo configuration, same network (built by the trainer's own builder), same optimizer and hyperparameters,
data, batch size, gradient clipping and epochs, in the same process. The hand loop makes its optimizer as code
written by hand does, `torch.optim.Adam(params, lr=..., weight_decay=...)`: torch's default implementation. The
trainer asks torch for its fused kernel (training.optim.make_optimizer), which is part of what it offers. A third
side, the hand loop with the fused kernel, separates that from the trainer's own per-epoch work (validation,
the checkpoint, metrics.jsonl); the hand loops only train.

The sides run in lockstep: after each of the trainer's epochs its epoch callback runs one epoch of each hand
loop, so that the slow and fast spells of a shared machine hit every side alike. (Timed one after another, the
same side's runs differed by up to 45 % on this 2-core machine, more than the differences measured.) A trainer
epoch is timed from the end of the previous callback to its own end-of-epoch log line, so it includes its
validation and any checkpoint. Samples/s are counted over epochs 2..N (the first is a warm-up for every side);
the whole lockstep run is repeated --repeats times and the median counts. Early stopping is turned off so that
all run N epochs.

    .venv-dev/bin/python -m bench.train_speed [--models digits-mlp digits-cnn] [--epochs 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("hand", "hand_fused", "trainer")


def hand_optimizer(cfg, params, fused: bool):
    """The optimizer as a hand-written loop makes it: torch's class with the config's hyperparameters."""
    import torch

    kind = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
            "rmsprop": torch.optim.RMSprop}[cfg.name]
    extra = {"momentum": cfg.momentum} if cfg.name in ("sgd", "rmsprop") else {}
    if cfg.name == "sgd":
        extra["nesterov"] = cfg.nesterov
    if fused and cfg.name != "rmsprop":  # torch has no fused RMSprop
        extra["fused"] = True
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


class HandLoop:
    """A minimal training loop over the trainer's network and data, one epoch per call."""

    def __init__(self, config, fused: bool):
        import torch

        from training.prepare import prepare
        from training.tasks import get_task
        from training.trainer import build_network

        torch.manual_seed(config.seed)
        prepared = prepare(config)
        self.task, self.clip, self.batch = get_task(prepared.task), config.train.grad_clip, config.train.batch_size
        self.network, _ = build_network(config, prepared)
        self.optimizer = hand_optimizer(config.optimizer, self.network.parameters(), fused)
        self.loss = self.task.loss()
        self.X = torch.from_numpy(prepared.X["train"])
        self.y = None if prepared.y["train"] is None else torch.from_numpy(prepared.y["train"])

    def epoch(self) -> float:
        """Train one epoch; return its duration in seconds."""
        import torch

        started = time.perf_counter()
        network, optimizer, X, y = self.network, self.optimizer, self.X, self.y
        network.train()
        order = torch.randperm(len(X))
        for i in range(0, len(X), self.batch):
            idx = order[i:i + self.batch]
            xb = X[idx]
            optimizer.zero_grad(set_to_none=True)
            value = self.loss(network(xb), self.task.target(network, xb, None if y is None else y[idx]))
            value.backward()
            if self.clip > 0:  # the same work as the trainer where the config clips
                torch.nn.utils.clip_grad_norm_(network.parameters(), self.clip)
            optimizer.step()
        return time.perf_counter() - started


def lockstep(config) -> dict[str, list[float]]:
    """Epoch durations of every side over epochs 2..N, each hand epoch right after the trainer's epoch."""
    from training.trainer import fit

    hands = {"hand": HandLoop(config, fused=False), "hand_fused": HandLoop(config, fused=True)}
    durations: dict[str, list[float]] = {side: [] for side in SIDES}
    mark: list[float] = []  # when the last callback returned: the start of the trainer's next epoch

    def log(line: str) -> None:
        if line.startswith("epoch ") and mark:
            durations["trainer"].append(time.perf_counter() - mark[-1])

    def callback(epoch: int, _row: dict) -> None:
        for name in sorted(hands, reverse=epoch % 2 == 1):  # the two hand loops take turns at going first
            seconds = hands[name].epoch()
            if epoch > 1:
                durations[name].append(seconds)
        mark.append(time.perf_counter())

    # The trainer checkpoints every train.checkpoint_seconds of wall time, which here includes the hand loops' epochs:
    # at 20 epochs of the zoo models the whole lockstep run is shorter than 10 s, so only the final one is written.
    with tempfile.TemporaryDirectory(prefix="nnserve-train-speed-") as tmp:
        fit(config, Path(tmp) / "run", log=log, quiet=True, epoch_callback=callback)
    return durations


def measure(name: str, epochs: int, repeats: int) -> dict:
    from training.config import apply_overrides, load_config
    from training.prepare import prepare
    from training.zoo import CONFIG_DIR

    config = apply_overrides(load_config(CONFIG_DIR / f"{name}.toml"),
                             [f"train.epochs={epochs}", "train.patience=0"])
    samples = len(prepare(config).X["train"])
    counted = epochs - 1
    runs: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(repeats):
        durations = lockstep(config)
        for side in SIDES:
            assert len(durations[side]) == counted, (side, len(durations[side]))
            runs[side].append(samples * counted / sum(durations[side]))
    rate = {side: statistics.median(runs[side]) for side in SIDES}
    return {"model": name, "optimizer": config.optimizer.name, "epochs_counted": counted, "repeats": repeats,
            "train_samples": samples, "batch_size": config.train.batch_size,
            "hand_samples_per_s": rate["hand"], "hand_fused_samples_per_s": rate["hand_fused"],
            "trainer_samples_per_s": rate["trainer"], "ratio": rate["trainer"] / rate["hand"],
            "ratio_to_hand_fused": rate["trainer"] / rate["hand_fused"],
            **{f"{side}_runs": runs[side] for side in SIDES}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["digits-mlp", "digits-cnn", "co2-lstm"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="lockstep runs; the median counts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/train_speed.json")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        raise SystemExit("bench.train_speed: --epochs must be at least 2 (the first is a warm-up)")
    import torch

    rows = []
    for name in args.models:
        row = measure(name, args.epochs, args.repeats)
        rows.append(row)
        print(f"{name:<20} samples/s: hand {row['hand_samples_per_s']:8.0f}  hand+fused "
              f"{row['hand_fused_samples_per_s']:8.0f}  trainer {row['trainer_samples_per_s']:8.0f}  "
              f"ratio {row['ratio']:.3f} (to hand+fused {row['ratio_to_hand_fused']:.3f})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch_threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
