"""bench.train_speed's lockstep harness: every side is timed over the same epochs, the trainer's whole epochs."""

from __future__ import annotations

import json

from training.config import apply_overrides, load_config


def test_lockstep_times_every_side_over_epochs_2_to_n():
    from bench.train_speed import SIDES, lockstep

    config = apply_overrides(load_config("diabetes-mlp"), ["train.epochs=4", "train.patience=0"])
    durations = lockstep(config)
    assert set(durations) == set(SIDES)
    assert all(len(durations[side]) == 3 and all(d > 0 for d in durations[side]) for side in SIDES)


def test_the_bench_writes_its_rows(tmp_path):
    from bench.train_speed import main

    out = tmp_path / "speed.json"
    assert main(["--models", "diabetes-mlp", "--epochs", "3", "--repeats", "2", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["model"] == "diabetes-mlp" and row["optimizer"] == "sgd" and row["epochs_counted"] == 2
    assert len(row["trainer_runs"]) == len(row["hand_runs"]) == len(row["hand_fused_runs"]) == 2
    assert row["ratio"] == row["trainer_samples_per_s"] / row["hand_samples_per_s"]
