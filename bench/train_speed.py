"""Training speed: the trainer (`training.trainer.fit`) against a minimal hand-written PyTorch loop.

Same zoo configuration, same network (built by the trainer's own builder), same optimizer, data, batch size and
epochs, in the same process. The trainer's time includes everything it does per epoch (validation, the
checkpoint, metrics.jsonl); the hand loop only trains. Samples/s are counted over epochs 2..N (the first is a
warm-up for both), from the trainer's own end-of-epoch log lines; each side runs --repeats times, alternated,
and the median counts. Early stopping is turned off so both run N epochs.

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


def trainer_stamps(config) -> list[float]:
    """perf_counter() at the end of each of the trainer's epochs (its own log line)."""
    from training.trainer import fit

    stamps: list[float] = []

    def log(line: str) -> None:
        if line.startswith("epoch "):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="nnserve-train-speed-") as tmp:
        fit(config, Path(tmp) / "run", log=log, quiet=True)
    return stamps


def hand_loop_stamps(config, epochs: int) -> tuple[list[float], int]:
    """perf_counter() at the end of each epoch of a minimal loop, and the number of training samples."""
    import torch

    from training.tasks import loss_fn, training_target
    from training.trainer import build_network, make_optimizer, prepare

    torch.manual_seed(config.seed)
    prepared = prepare(config)
    network, _ = build_network(config, prepared)
    optimizer = make_optimizer(config.optimizer, network.parameters())
    loss = loss_fn(prepared.task)
    X = torch.from_numpy(prepared.X["train"])
    y = None if prepared.y["train"] is None else torch.from_numpy(prepared.y["train"])
    batch = config.train.batch_size
    stamps = []
    for _ in range(epochs):
        network.train()
        order = torch.randperm(len(X))
        for i in range(0, len(X), batch):
            idx = order[i:i + batch]
            xb = X[idx]
            optimizer.zero_grad(set_to_none=True)
            value = loss(network(xb), training_target(prepared.task, network, xb, None if y is None else y[idx]))
            value.backward()
            if config.train.grad_clip > 0:  # the same work as the trainer where the config clips
                torch.nn.utils.clip_grad_norm_(network.parameters(), config.train.grad_clip)
            optimizer.step()
        stamps.append(time.perf_counter())
    return stamps, len(X)


def measure(name: str, epochs: int, repeats: int) -> dict:
    from training.config import apply_overrides, load_config
    from training.zoo import CONFIG_DIR

    config = apply_overrides(load_config(CONFIG_DIR / f"{name}.toml"),
                             [f"train.epochs={epochs}", "train.patience=0"])
    counted = epochs - 1
    hand_rates, trainer_rates = [], []
    for _ in range(repeats):  # alternated, so that a slow spell of the machine hits both sides
        hand, samples = hand_loop_stamps(config, epochs)
        hand_rates.append(samples * counted / (hand[-1] - hand[0]))
        trainer = trainer_stamps(config)
        trainer_rates.append(samples * counted / (trainer[-1] - trainer[0]))
    hand_rate, trainer_rate = statistics.median(hand_rates), statistics.median(trainer_rates)
    return {"model": name, "epochs_counted": counted, "repeats": repeats, "train_samples": samples,
            "batch_size": config.train.batch_size, "hand_samples_per_s": hand_rate,
            "trainer_samples_per_s": trainer_rate, "ratio": trainer_rate / hand_rate,
            "hand_runs": hand_rates, "trainer_runs": trainer_rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["digits-mlp", "digits-cnn", "co2-lstm"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each side, alternated; the median counts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/train_speed.json")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        raise SystemExit("bench.train_speed: --epochs must be at least 2 (the first is a warm-up)")
    import torch

    rows = []
    for name in args.models:
        row = measure(name, args.epochs, args.repeats)
        rows.append(row)
        print(f"{name:<20} hand {row['hand_samples_per_s']:10.0f} samples/s  trainer "
              f"{row['trainer_samples_per_s']:10.0f} samples/s  ratio {row['ratio']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch_threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
