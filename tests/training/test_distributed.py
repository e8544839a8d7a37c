"""Data-parallel training under torchrun: two processes on the CPU (gloo) against one process.

The runs train a small digits MLP with SGD (momentum 0.9, no dropout): an SGD step grows with the gradient, so
gradients summed where they should be averaged would show (Adam's step would hide them), and without dropout
the two runs draw nothing at random differently. Both runs see the same global batches of 64 in the same
order (the two processes take 32 each), so they differ only by
- float reduction order (gradients all-reduced, OMP_NUM_THREADS=1 under torchrun), and
- the padding of each epoch to a multiple of the world size (DistributedSampler): 1167 training samples
  become 1168, so the last batch of every epoch holds one sample twice.
Measured here over 5 epochs: train loss within 0.6 %, validation loss within 2.1 % (relative), validation and
test accuracy within 0.4 points (one sample). The test allows 5 % and 2 points. The bugs it must catch move the
losses far more: summed gradients (twice the learning rate) change the first epoch's train loss by 21 %,
per-process batches of 64 (global 128) by 20 %, unsharded processes (each runs the whole epoch in batches of
32) by 36 %.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from training.config import apply_overrides, load_config
from training.distributed import Distributed, ReplicasDiverged, from_environment, parameter_digest
from training.prepare import prepare
from training.trainer import build_network, fit

EPOCHS = 5
SETTINGS = ["model.hidden_dims=[32]", "model.dropout=0.0", "optimizer.name='sgd'", "optimizer.lr=0.05"]
LOSS_RTOL = 0.05  # relative, per epoch: train and validation loss
ACCURACY_ATOL = 0.02  # absolute: validation accuracy per epoch, test accuracy
RUN_FILES = {"config.json", "metrics.jsonl", "best.pt", "last.pt", "summary.json", "plots"}


def torchrun(out: Path, *extra: str, epochs: int = EPOCHS) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run` (torchrun) with 2 processes; --standalone picks a free port."""
    sets = [arg for setting in [*SETTINGS, f"train.epochs={epochs}"] for arg in ("--set", setting)]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                           "-m", "training", "fit", "digits-mlp", *sets, "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = torchrun(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_two_processes_write_one_run_folder_and_end_with_identical_replicas(ddp_run):
    out, proc = ddp_run
    assert {p.name for p in out.iterdir()} == RUN_FILES  # rank 0's files, and nothing from rank 1
    assert len(rows(out)) == EPOCHS
    assert proc.stdout.count(f"epoch   1/{EPOCHS}") == 1 and proc.stdout.count("digits-mlp: test accuracy") == 1
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    # Every rank hashed its parameters after the last step and compared (a mismatch fails the run).
    replicas = summary(out)["distributed"]
    assert replicas["world_size"] == 2 and replicas["backend"] == "gloo" and replicas["replicas_identical"]
    last = torch.load(out / "last.pt", weights_only=True)["model"]
    config = apply_overrides(load_config("digits-mlp"), SETTINGS)
    network, _ = build_network(config, prepare(config))
    network.load_state_dict(last)
    assert parameter_digest(network) == replicas["param_sha256"]  # rank 0's saved weights are what was compared


def test_two_processes_match_one_process_over_the_same_global_batch(ddp_run, tmp_path):
    out, _ = ddp_run
    config = apply_overrides(load_config("digits-mlp"), [*SETTINGS, f"train.epochs={EPOCHS}"])
    single = fit(config, tmp_path / "single", log=lambda _m: None)
    for two, one in zip(rows(out), rows(tmp_path / "single"), strict=True):
        for key in ("train_loss", "val_loss"):
            assert two[key] == pytest.approx(one[key], rel=LOSS_RTOL), (two["epoch"], key)
        assert two["val_accuracy"] == pytest.approx(one["val_accuracy"], abs=ACCURACY_ATOL), two["epoch"]
    assert summary(out)["metrics"]["test_accuracy"] == pytest.approx(single["metrics"]["test_accuracy"],
                                                                     abs=ACCURACY_ATOL)


def test_resume_under_torchrun_ends_where_an_uninterrupted_run_does(ddp_run, tmp_path):
    out, _ = ddp_run
    resumed = tmp_path / "resumed"
    first = torchrun(resumed, epochs=2)
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(resumed, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count(f"resuming {resumed} after epoch 2") == 1  # every rank resumed, rank 0 logged
    assert {p.name for p in resumed.iterdir()} == RUN_FILES
    assert rows(resumed) == rows(out)
    assert summary(resumed)["metrics"] == summary(out)["metrics"]


def fake(world_size: int) -> Distributed:
    """Rank 0 of `world_size`, with no process group: enough for the checks made before any communication."""
    return Distributed(rank=0, world_size=world_size, local_rank=0, backend="gloo", device=torch.device("cpu"))


@pytest.mark.parametrize("name, overrides, fragment", [
    ("digits-mlp", ["train.batch_size=63"], "train.batch_size: 63 is the global batch and must divide evenly"),
    ("digits-gan", [], "the GAN (arch 'gan') trains in a single process only"),
])
def test_what_cannot_run_data_parallel_is_refused(name, overrides, fragment, tmp_path):
    config = apply_overrides(load_config(name), overrides)
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        fit(config, tmp_path / "run", log=lambda _m: None, distributed=fake(2))
    assert not (tmp_path / "run").exists()


def test_world_size_without_torchrun_is_refused():
    with pytest.raises(ValueError, match="WORLD_SIZE=2 is set but this process was not started by torchrun"):
        from_environment({"WORLD_SIZE": "2"})
    assert from_environment({}) is None


def test_only_fit_runs_under_torchrun():
    proc = subprocess.run([sys.executable, "-m", "training", "check"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TORCHELASTIC_RUN_ID": "test"})
    assert proc.returncode == 2 and "only `fit` runs under torchrun" in proc.stderr


def test_diverged_replicas_name_the_ranks():
    message = str(ReplicasDiverged(["a" * 64, "a" * 64, "b" * 64]))
    assert "rank(s) [2]" in message and "different from rank 0's" in message
