"""Every architecture x task pairing of the zoo trains on tiny settings; resume, seeds, data and config rules."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import torch
import pytest

from tests.conftest import ROOT
from training import architectures
from training.config import CONFIG_DIR, RunConfig, apply_overrides, load_config
from training.data import DATASETS, load_dataset
from training.optim import make_optimizer, make_schedule
from training.prepare import prepare
from training.tasks import get_task
from training.texttasks import TEXT_ARCHS
from training.trainer import build_network, evaluate_split, fit
from training.zoo import ZOO

# Tiny versions of the zoo configs: one or two epochs, narrow layers. Keys are the zoo's pairings.
TINY = {
    "digits-mlp": ["train.epochs=2", "model.hidden_dims=[16]"],
    "digits-cnn": ["train.epochs=1", "model.channels=[4, 8]", "model.hidden_dim=16"],
    "digits-transformer": ["train.epochs=1", "model.d_model=16", "model.nhead=2", "model.num_layers=1",
                           "model.dim_feedforward=16"],
    "breast-cancer-mlp": ["train.epochs=2"],
    "diabetes-mlp": ["train.epochs=2"],
    "co2-lstm": ["train.epochs=1", "model.hidden_dim=8"],
    "sunspots-gru": ["train.epochs=2", "model.hidden_dim=8"],
    "sunspots-rnn": ["train.epochs=2", "model.hidden_dim=8"],
    "digits-autoencoder": ["train.epochs=2", "model.hidden_dims=[16]", "model.latent_dim=4"],
    "digits-gan": ["train.epochs=2", "model.base_channels=8", "eval.judge_epochs=1", "eval.min_diversity=0.0",
                   "eval.samples_per_class=10"],
}
PLOTS = {"multiclass": "confusion.png", "binary": "confusion.png", "forecasting": "forecast.png",
         "anomaly": "reconstructions.png", "generation": "samples.png", "regression": "curves.png"}


def pairing(name: str) -> tuple[str, str]:
    config = load_config(name)
    if config.arch in TEXT_ARCHS:  # trained by its own modules, one task each
        return config.arch, TEXT_ARCHS[config.arch]["task"]
    return config.arch, prepare(config).task


# The text models train through their own modules (training/texttasks.py), not `fit`; tests/training/test_text.py
# and test_textgen.py train them.
TEXT_ZOO = {name for name in ZOO if load_config(name).arch in TEXT_ARCHS}


def test_every_registered_architecture_is_trained_by_a_test():
    tested = {load_config(name).arch for name in TINY}
    assert tested == set(architectures.ARCHITECTURES), "an architecture has no training test"
    assert set(TINY) | TEXT_ZOO == set(ZOO), "every zoo config needs a tiny training test"


@pytest.mark.parametrize("name", list(TINY))
def test_zoo_pairing_trains_on_tiny_settings(name, tmp_path):
    config = apply_overrides(load_config(name), TINY[name])
    summary = fit(config, tmp_path / name, log=lambda _m: None)
    run = tmp_path / name
    assert {"config.json", "metrics.jsonl", "best.pt", "last.pt", "summary.json"} <= {p.name for p in run.iterdir()}
    assert (run / "plots" / "curves.png").stat().st_size > 1000
    assert (run / "plots" / PLOTS[summary["task"]]).stat().st_size > 1000
    headline = summary["metrics"][f"test_{summary['headline_metric']}"]
    assert np.isfinite(headline)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == config.train.epochs
    assert_something_was_learned(config, summary, rows)


def assert_something_was_learned(config, summary, rows: list[dict]) -> None:
    """The best epoch's validation loss is below the untrained network's (the same seed, so the same initial
    weights as the run's); a GAN, which has no validation loss, ends with a lower discriminator loss than its first
    epoch had."""
    if "d_loss" in rows[0]:
        assert len(rows) >= 2 and rows[-1]["d_loss"] < rows[0]["d_loss"]
        return
    torch.manual_seed(config.seed)
    prepared = prepare(config)
    network, _ = build_network(config, prepared)
    untrained = evaluate_split(network, prepared, "val", get_task(prepared.task).loss())["loss"]
    assert summary["metrics"]["val_loss"] < untrained


def test_the_zoo_uses_the_pairings_the_issue_names():
    assert {name: pairing(name) for name in ZOO} == {
        "digits-mlp": ("mlp", "multiclass"), "digits-cnn": ("cnn", "multiclass"),
        "digits-transformer": ("transformer", "multiclass"), "breast-cancer-mlp": ("mlp", "binary"),
        "diabetes-mlp": ("mlp", "regression"), "co2-lstm": ("lstm", "forecasting"),
        "sunspots-gru": ("gru", "forecasting"), "sunspots-rnn": ("rnn", "forecasting"),
        "digits-autoencoder": ("autoencoder", "anomaly"), "digits-gan": ("gan", "generation"),
        "fortunes-language": ("text-transformer", "multiclass"), "fortunes-writer": ("char-lstm", "generation")}


def test_same_seed_same_metrics_and_other_seed_differs(tmp_path):
    config = apply_overrides(load_config("digits-cnn"), TINY["digits-cnn"] + ["train.epochs=2"])
    first = fit(config, tmp_path / "a", log=lambda _m: None)["metrics"]
    second = fit(config, tmp_path / "b", log=lambda _m: None)["metrics"]
    third = fit(apply_overrides(config, ["seed=1"]), tmp_path / "c", log=lambda _m: None)["metrics"]
    assert first == second
    assert first != third


def _metric_rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_killed_run_resumes_and_ends_where_an_uninterrupted_one_does(tmp_path):
    """SIGKILL a real `python -m training fit` mid-run, `--resume` it, compare with an uninterrupted run."""
    args = ["fit", "digits-cnn", "--quiet", "--set", "train.epochs=10", "--set", "train.checkpoint_seconds=0",
            "--set", "model.channels=[4, 8]",
            "--set", "model.hidden_dim=16", "--set", "schedule.name='step'", "--set", "schedule.step_size=3"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "training", *args, "--out", str(killed)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").exists() and len(_metric_rows(killed)) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(_metric_rows(killed))
    assert 3 <= done_before < 10 and not (killed / "summary.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "training", *args, "--out", str(killed), "--resume"],
                             cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-m", "training", *args, "--out", str(straight)], cwd=ROOT, check=True,
                   capture_output=True)
    assert _metric_rows(killed) == _metric_rows(straight)
    ours = json.loads((killed / "summary.json").read_text())["metrics"]
    theirs = json.loads((straight / "summary.json").read_text())["metrics"]
    assert ours == theirs


def test_in_process_stop_and_resume_matches(tmp_path):
    config = apply_overrides(load_config("sunspots-gru"), ["train.epochs=6", "model.hidden_dim=8",
                                                           "schedule.name='plateau'", "schedule.patience=1"])
    every_epoch = apply_overrides(config, ["train.checkpoint_seconds=0"])
    fit(every_epoch, tmp_path / "a", log=lambda _m: None, stop_after=2)
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state"]["epoch"] == 2
    resumed = fit(config, tmp_path / "a", log=lambda _m: None, resume=True)
    straight = fit(config, tmp_path / "b", log=lambda _m: None)
    assert resumed["metrics"] == straight["metrics"]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_bundled_datasets_load_and_split_deterministically(name):
    data = load_dataset(name)
    assert len(data.X) > 100 and np.isfinite(data.X).all()
    arch = "lstm" if data.kind == "series" else ("cnn" if data.kind == "image" else "mlp")
    config = RunConfig(arch=arch, dataset=name)
    first, second = prepare(config), prepare(config)
    assert first.split.describe() == second.split.describe()
    if data.kind == "series":  # split by time: every training window ends before validation starts
        assert first.split.train.max() < first.split.val.min() <= first.split.val.max() < first.split.test.min()
        assert first.X["train"].shape[1] == 24 and first.y["train"].shape[1] == 1
    else:
        assert len(set(first.split.train) & set(first.split.test)) == 0


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_optimizers(name):
    import torch

    cfg = load_config("digits-mlp").optimizer
    cfg.name, cfg.nesterov = name, name == "sgd"
    assert make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))]).defaults["lr"] == cfg.lr


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_optimizers_take_the_steps_of_torchs_default_implementation(name):
    import torch

    cfg = load_config("digits-mlp").optimizer
    cfg.name, cfg.momentum, cfg.nesterov, cfg.weight_decay = name, 0.9, name == "sgd", 0.01
    torch.manual_seed(0)
    start, grads = torch.randn(40, 30), [torch.randn(40, 30) for _ in range(10)]
    fused, plain = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ours = make_optimizer(cfg, [fused])
    assert ours.defaults["fused"] is True
    defaults = {k: v for k, v in ours.defaults.items() if k not in ("fused", "decoupled_weight_decay")}
    reference = type(ours)([plain], **defaults, fused=None)
    for grad in grads:
        for param, opt in ((fused, ours), (plain, reference)):
            param.grad = grad.clone()
            opt.step()
    assert not torch.equal(fused.detach(), start)
    torch.testing.assert_close(fused.detach(), plain.detach(), rtol=1e-5, atol=1e-6)


def test_a_checkpoint_from_an_unfused_optimizer_resumes_fused():
    import torch

    from training.optim import load_optimizer_state

    cfg = load_config("digits-mlp").optimizer  # adam
    param = torch.nn.Parameter(torch.ones(3))
    old = torch.optim.Adam([param], lr=cfg.lr)  # as the trainer made it before the fused kernel
    param.grad = torch.ones(3)
    old.step()
    new = make_optimizer(cfg, [param])
    load_optimizer_state(new, old.state_dict())
    assert new.param_groups[0]["fused"] is True and new.param_groups[0]["lr"] == cfg.lr
    assert new.state[param]["exp_avg"].equal(old.state[param]["exp_avg"])
    new.step()  # the loaded state suits the fused kernel
    assert int(new.state[param]["step"]) == 2


@pytest.mark.parametrize("name", ["none", "step", "cosine", "plateau"])
def test_schedules(name):
    import torch

    cfg = load_config("digits-mlp")
    cfg.schedule.name = name
    opt = make_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(2))])
    schedule = make_schedule(cfg.schedule, opt, 10, maximize=False)
    assert (schedule is None) == (name == "none")


@pytest.mark.parametrize("overrides, fragment", [
    (["optimizer.name='lbfgs'"], "unknown optimizer 'lbfgs'; valid optimizers are"),
    (["schedule.name='exp'"], "unknown schedule 'exp'; valid schedules are"),
    (["model.activation='swish2'"], "unknown activation 'swish2'; valid activations are"),
    (["train.monitor='val_f1'"], "train.monitor: 'val_f1' is not measured"),
    (["task='regression'"], "architecture 'autoencoder' does not do task 'regression'"),
])
def test_bad_choices_name_the_valid_ones(overrides, fragment, tmp_path):
    base = "digits-autoencoder" if overrides[0].startswith("task") else "digits-mlp"
    config = apply_overrides(load_config(base), ["train.epochs=1", *overrides])
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        fit(config, tmp_path / "r", log=lambda _m: None)


def test_set_overrides_are_typed():
    config = apply_overrides(load_config("co2-lstm"), ["optimizer.lr=0.01", "train.grad_clip=2", "data.window=30",
                                                       "model.bidirectional=true", "optimizer.name=sgd"])
    assert config.optimizer.lr == 0.01 and config.data["window"] == 30 and config.model["bidirectional"] is True
    assert config.optimizer.name == "sgd"


@pytest.mark.parametrize("setting, expected", [
    ("optimizer.lr=abc", "optimizer.lr: expected a number, got 'abc' (a string)"),
    ('optimizer.lr="0.01"', "optimizer.lr: expected a number, got '0.01' (a string) (write numbers and booleans "
                            "without quotes)"),
    ("optimizer.lr=0", "optimizer.lr: expected a value > 0, got 0.0"),
    ("model.hidden_dims=64,32", "model.hidden_dims: expected an array of integers in TOML syntax, e.g. "
                                "model.hidden_dims=[64, 32], got '64,32' (a string)"),
    ("model.hidden_dims=[64,0]", "model.hidden_dims[1]: expected a positive integer, got 0"),
    ("model.dropout=1.5", "model.dropout: expected a value in [0, 1), got 1.5"),
    ("model.batch_norm=yes", "model.batch_norm: expected true or false, got 'yes' (a string)"),
    ("train.epochs=ten", "train.epochs: expected an integer, got 'ten' (a string)"),
    ("train.epochs=2.5", "train.epochs: expected an integer, got 2.5 (a number)"),
    ("train.batch_size=0", "train.batch_size: expected a value >= 1, got 0"),
    ("split.test=1.2", "split.test: expected a value in (0, 1), got 1.2"),
    ("seed=-1", "seed: expected a value >= 0, got -1"),
    ("data=3", "data: expected a table, got 3 (an integer)"),
])
def test_a_bad_set_value_gets_one_line_naming_the_key_the_value_and_the_type(setting, expected, tmp_path, capsys):
    from training.__main__ import main

    assert main(["fit", "digits-mlp", "--set", setting, "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == f"python -m training fit: {expected}\n"
    assert not (tmp_path / "r").exists()


def test_a_run_of_a_file_anywhere_goes_under_runs_with_a_clean_name(tmp_path, monkeypatch, capsys):
    import re

    from sklearn.datasets import load_wine

    from training.__main__ import main

    data = tmp_path / "elsewhere" / "my data"
    data.mkdir(parents=True)
    load_wine(as_frame=True).frame.to_csv(data / "wine.csv", index=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["fit", "--arch", "mlp", "--dataset", str(data / "wine.csv"), "--set", "data.target='target'",
                 "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(r"runs/wine-csv-mlp-\d{8}-\d{6}", out), out
    assert (work / out / "summary.json").exists() and not list(data.parent.glob("*mlp*"))


def test_resume_with_nothing_to_resume_says_it_starts_a_new_run(tmp_path, capsys):
    from training.__main__ import main

    out = tmp_path / "r"
    assert main(["fit", "digits-mlp", "--epochs", "1", "--quiet", "--out", str(out), "--resume"]) == 0
    assert f"--resume: {out} holds no checkpoint (last.pt) to continue; starting a new run" in capsys.readouterr().err
    assert (out / "last.pt").exists()
    assert main(["fit", "digits-mlp", "--epochs", "1", "--quiet", "--out", str(out), "--resume"]) == 0
    assert "no checkpoint" not in capsys.readouterr().err


def test_every_zoo_config_is_valid():
    for name in ZOO:
        config = load_config(CONFIG_DIR / f"{name}.toml")
        assert config.name == name


def test_user_csv_table_trains(tmp_path):
    from sklearn.datasets import load_iris

    iris = load_iris()
    rows = ["a,b,c,d,species"] + [",".join(map(str, x)) + f",{iris.target_names[t]}" for x, t in
                                  zip(iris.data, iris.target)]
    path = tmp_path / "flowers.csv"
    path.write_text("\n".join(rows) + "\n")
    config = apply_overrides(RunConfig(arch="mlp", dataset=str(path)), ["data.target='species'", "train.epochs=30"])
    summary = fit(config, tmp_path / "run", log=lambda _m: None)
    assert summary["task"] == "multiclass" and summary["metrics"]["test_accuracy"] > 0.8
    assert json.loads((tmp_path / "run" / "config.json").read_text())["labels"] == sorted(iris.target_names)


def test_user_csv_series_trains(tmp_path):
    t = np.arange(300)
    path = tmp_path / "wave.csv"
    path.write_text("value\n" + "\n".join(f"{v:.4f}" for v in np.sin(t / 5) + t / 100) + "\n")
    config = apply_overrides(RunConfig(arch="gru", dataset=str(path)),
                             ["data.window=20", "data.horizon=2", "data.season=31", "train.epochs=3"])
    summary = fit(config, tmp_path / "run", log=lambda _m: None)
    assert summary["task"] == "forecasting" and "last value" in summary["baseline"]["all"]


def test_bad_user_file_names_the_file_and_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("x,y\n1,2\n3,oops\n4,5\n")
    proc = subprocess.run([sys.executable, "-m", "training", "fit", "--dataset", str(path), "--set", "data.target='x'",
                           "--epochs", "1", "--out", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "bad.csv" in proc.stderr and "row 3" in proc.stderr and "column 'y'" in proc.stderr
    assert "'oops'" in proc.stderr


def test_list_shows_architectures_datasets_and_zoo():
    out = subprocess.run([sys.executable, "-m", "training", "list"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    for word in [*architectures.ARCHITECTURES, *DATASETS, *ZOO]:
        assert word in out


def test_config_hash_ignores_how_a_run_is_carried_out_but_not_what_it_learns():
    config = load_config("digits-mlp")
    assert apply_overrides(config, ["train.checkpoint_seconds=0"]).sha256() == config.sha256()
    assert apply_overrides(config, ["train.epochs=3"]).sha256() != config.sha256()


def test_a_fresh_run_in_an_old_folder_drops_its_checkpoints(tmp_path):
    """Else a run killed before its first checkpoint would, with --resume, continue the earlier run's."""
    config = apply_overrides(load_config("digits-mlp"), ["train.epochs=2", "model.hidden_dims=[8]"])
    fit(config, tmp_path / "run", log=lambda _m: None)
    assert (tmp_path / "run" / "last.pt").exists()
    fit(apply_overrides(config, ["train.epochs=5"]), tmp_path / "run", log=lambda _m: None, stop_after=1)
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()
