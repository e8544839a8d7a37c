"""bench.train_speed's lockstep harness: every side is timed over epochs 2..N, the trainer's whole epochs only."""

from __future__ import annotations

import json
import time

from training.config import apply_overrides, load_config

PAUSE = 1.0  # seconds: well above a diabetes-mlp epoch, even on a loaded machine


def _config(epochs: int):
    return apply_overrides(load_config("diabetes-mlp"), [f"train.epochs={epochs}", "train.patience=0"])


def test_the_trainer_is_timed_without_the_hand_loops(monkeypatch):
    """Each hand epoch runs inside the trainer's epoch callback; none of that time may count as the trainer's."""
    from bench import train_speed

    def slow_epoch(self):
        time.sleep(PAUSE)
        return PAUSE

    monkeypatch.setattr(train_speed.HandLoop, "epoch", slow_epoch)
    durations = train_speed.lockstep(_config(4))
    assert set(durations) == set(train_speed.SIDES)
    assert all(len(durations[side]) == 3 for side in train_speed.SIDES)  # epochs 2..4
    assert durations["hand"] == durations["hand_fused"] == [PAUSE] * 3
    assert all(0 < d < PAUSE for d in durations["trainer"])  # 2 x PAUSE per epoch if the callback counted


def test_the_trainer_is_timed_with_its_validation(monkeypatch):
    from bench import train_speed
    from training import trainer

    validate = trainer.evaluate_split

    def slow_validation(*args, **kwargs):
        time.sleep(PAUSE)
        return validate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_split", slow_validation)
    durations = train_speed.lockstep(_config(3))
    assert len(durations["trainer"]) == 2 and all(d >= PAUSE for d in durations["trainer"])
    assert all(d < PAUSE for d in durations["hand"] + durations["hand_fused"])


def test_the_bench_writes_its_rows(tmp_path):
    from bench.train_speed import main

    out = tmp_path / "speed.json"
    assert main(["--models", "diabetes-mlp", "--epochs", "3", "--repeats", "2", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["model"] == "diabetes-mlp" and row["optimizer"] == "sgd" and row["epochs_counted"] == 2
    assert len(row["trainer_runs"]) == len(row["hand_runs"]) == len(row["hand_fused_runs"]) == 2
