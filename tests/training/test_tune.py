"""`python -m training tune`: the search table, two worker processes on one SQLite study, pruning, the outputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import optuna
import pytest

from tests.conftest import ROOT
from training.config import RunConfig, load_config
from training.trainer import fit
from training.config_toml import config_toml
from training.tune_space import apply_values, base_params, suggest
from training.tune_study import TuneSettings, load_study, open_storage
from training.zoo import ZOO

# diabetes is the smallest dataset: a trial of 3 epochs takes a fraction of a second.
TINY_TOML = """
name = "tiny-diabetes"
arch = "mlp"
dataset = "diabetes"
seed = 4

[model]
hidden_dims = [16]
activation = "tanh"

[optimizer]
name = "adam"
lr = 0.01

[train]
batch_size = 32
epochs = 3

[search]
"optimizer.lr" = {type = "float", low = 1e-5, high = 0.1, log = true}
"optimizer.name" = {type = "categorical", choices = ["adam", "sgd", "rmsprop"]}
"model.hidden_dims" = {type = "widths", layers = [1, 2], low = 4, high = 32, log = true}
"model.activation" = {type = "categorical", choices = ["relu", "tanh"]}
"train.batch_size" = {type = "categorical", choices = [16, 32, 64]}
"""
TRIALS = 8


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One `tune --jobs 2` run: two worker processes on the run folder's SQLite study."""
    tmp = tmp_path_factory.mktemp("tune")
    (tmp / "tiny.toml").write_text(TINY_TOML)
    out = tmp / "run"
    proc = subprocess.run([sys.executable, "-m", "training", "tune", str(tmp / "tiny.toml"), "--trials", str(TRIALS),
                           "--jobs", "2", "--startup-trials", "2", "--warmup-epochs", "0", "--out", str(out),
                           "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    return out


def _study(out) -> optuna.Study:
    return optuna.load_study(study_name="tiny-diabetes", storage=f"sqlite:///{out / 'study.db'}")


def test_two_workers_share_the_budget_of_one_sqlite_study(tuned):
    trials = _study(tuned).get_trials()
    assert [t.number for t in trials] == list(range(TRIALS)), "exactly --trials trials in all"
    assert all(t.state.is_finished() for t in trials), "a trial was left running or waiting"
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both worker processes ran trials"
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in trials), "the aggressive pruner pruned none"
    config = load_config(tuned.parent / "tiny.toml")
    assert trials[0].params == base_params(config) and trials[0].user_attrs["source"] == "config as written"


def test_best_config_is_a_complete_config_that_fits_to_the_best_trial(tuned, tmp_path):
    study = _study(tuned)
    best = load_config(tuned / "best_config.toml")
    assert best.search == {} and "search" not in tomllib.loads((tuned / "best_config.toml").read_text())
    expected = apply_values(load_config(tuned.parent / "tiny.toml"),
                            suggest(optuna.trial.FixedTrial(study.best_trial.params),
                                    load_config(tuned.parent / "tiny.toml").search))
    assert best == expected
    summary = fit(best, tmp_path / "refit", log=lambda _m: None)  # what `python -m training fit FILE` runs
    assert summary["metrics"]["val_loss"] == pytest.approx(study.best_value, rel=1e-5)
    report = json.loads((tuned / "summary.json").read_text())
    assert report["best"]["number"] == study.best_trial.number
    assert report["best_fit"]["test_r2"] == pytest.approx(summary["metrics"]["test_r2"], rel=1e-5)
    assert {"test_r2", "val_loss"} <= set(report["base_fit"])


def test_report_and_plots(tuned):
    for name in ("optimization_history", "intermediate_values", "param_importances"):
        png = tuned / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    report = (tuned / "report.md").read_text()
    assert "## Best trial" in report and "| config as written |" in report
    assert sum(line.startswith(f"| {n} | ") for n in range(TRIALS) for line in report.splitlines()) == TRIALS


@pytest.mark.parametrize("search, fragment", [
    ({"optimizer.lrr": {"type": "float", "low": 0.1, "high": 1.0}}, "search.optimizer.lrr: optimizer has no such key"),
    ({"optimiser.lr": {"type": "float", "low": 0.1, "high": 1.0}}, "search.optimiser.lr: not a config path"),
    ({"optimizer.lr": {"type": "normal"}}, "search.optimizer.lr.type: 'normal' is not a search type; valid types"),
    ({"optimizer.lr": {"type": "float", "low": 0.1}}, "search.optimizer.lr.high: expected a number"),
    ({"optimizer.lr": {"type": "float", "low": 1.0, "high": 0.1}}, "search.optimizer.lr: low (1.0) must be below"),
    ({"optimizer.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "search.optimizer.lr.low: a log"),
    ({"optimizer.lr": {"type": "float", "low": 0.1, "high": 1.0, "lg": True}}, "search.optimizer.lr: unknown key(s)"),
    ({"train.batch_size": {"type": "int", "low": 8.5, "high": 64}}, "search.train.batch_size.low: expected an int"),
    ({"optimizer.name": {"type": "categorical", "choices": []}}, "search.optimizer.name.choices: expected a non-empty"),
    ({"model.hidden_dims": {"type": "widths", "low": 4, "high": 8}}, "search.model.hidden_dims.layers: expected"),
    ({"model": {"type": "float", "low": 0.1, "high": 1.0}}, "search.model: model is a table"),
    ({"seed.x": {"type": "int", "low": 0, "high": 9}}, "search.seed.x: seed is a single value"),
])
def test_a_bad_search_table_names_the_field(search, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        RunConfig.from_dict({"search": search})


def test_suggest_and_apply_values_set_dotted_paths_widths_and_tables():
    config = RunConfig.from_dict({"arch": "cnn", "model": {"channels": [8, 16], "kernel_sizes": [3, 3]}, "search": {
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "model.hidden_dims": {"type": "widths", "layers": [1, 3], "low": 8, "high": 64},
        "model": {"type": "categorical", "choices": [{"channels": [8, 16], "kernel_sizes": [3, 3]},
                                                     {"channels": [8, 16, 32], "kernel_sizes": [3, 3, 3]}]},
    }})
    params = {"optimizer.lr": 0.01, "model.hidden_dims.layers": 2, "model.hidden_dims.0": 32,
              "model.hidden_dims.1": 16, "model": json.dumps({"channels": [8, 16, 32], "kernel_sizes": [3, 3, 3]})}
    tuned = apply_values(config, suggest(optuna.trial.FixedTrial(params), config.search))
    assert tuned.optimizer.lr == 0.01 and tuned.model == {"channels": [8, 16, 32], "kernel_sizes": [3, 3, 3],
                                                          "hidden_dims": [32, 16]}
    assert tuned.search == {}
    assert base_params(config) is None  # its hidden_dims are not set, so it is not in the space


def test_the_search_table_leaves_the_config_hash_alone():
    """The shipped models record their config's hash; a search table in the config must not orphan them."""
    config = RunConfig.from_dict(tomllib.loads(TINY_TOML))
    assert config.sha256() == apply_values(config, {}).sha256()
    assert apply_values(config, {"optimizer.lr": 0.02}).sha256() != config.sha256()


def test_the_zoo_search_tables_hold_their_own_config():
    """So that trial 0 of `tune digits-cnn` is the zoo config itself."""
    searched = {name: load_config(name) for name in ZOO if load_config(name).search}
    assert set(searched) == {"digits-cnn", "diabetes-mlp"}
    assert all(base_params(config) is not None for config in searched.values())


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_config_writes_back_as_toml(name, tmp_path):
    config = load_config(name)
    (tmp_path / "c.toml").write_text(config_toml(config, "a header"))
    assert load_config(tmp_path / "c.toml") == apply_values(config, {})


def test_a_study_refuses_another_metric(tmp_path):
    config = RunConfig.from_dict(tomllib.loads(TINY_TOML))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    settings = TuneSettings(config=config, out=tmp_path, storage=url, study="s", trials=1, metric="val_loss")
    load_study(settings, open_storage(url))
    other = TuneSettings(config=config, out=tmp_path, storage=url, study="s", trials=1, metric="val_r2")
    with pytest.raises(ValueError, match="optimizes 'val_loss', not 'val_r2'"):
        load_study(other, open_storage(url))


def test_tune_needs_a_search_table(tmp_path, capsys):
    from training.__main__ import main

    assert main(["tune", "diabetes-mlp", "--trials", "2", "--out", str(tmp_path / "r"), "--set", "search={}"]) == 2
    assert "has no [search] table" in capsys.readouterr().err


def test_a_study_refuses_another_number_of_folds(tmp_path):
    config = RunConfig.from_dict(tomllib.loads(TINY_TOML))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    load_study(TuneSettings(config=config, out=tmp_path, storage=url, study="s", trials=1, metric="val_loss",
                            folds=3), open_storage(url))
    with pytest.raises(ValueError, match="with 3 fold\\(s\\), not 1"):
        load_study(TuneSettings(config=config, out=tmp_path, storage=url, study="s", trials=1, metric="val_loss"),
                   open_storage(url))


@pytest.mark.parametrize("name", ["diabetes-mlp", "digits-mlp"])
def test_folds_partition_the_training_and_validation_rows_and_keep_the_test_rows(name):
    from training.prepare import prepare

    config = load_config(name)
    whole = prepare(config)
    rest = set(whole.split.train) | set(whole.split.val)
    folds = [prepare(config, (k, 4)) for k in range(4)]
    for fold in folds:
        assert list(fold.split.test) == list(whole.split.test)
        assert set(fold.split.train) | set(fold.split.val) == rest
        assert not set(fold.split.train) & set(fold.split.val)
        assert "fold" in fold.split.method
    validated = [set(fold.split.val) for fold in folds]
    assert set().union(*validated) == rest and sum(map(len, validated)) == len(rest)  # each row validated once
    if whole.task == "multiclass":  # stratified: each fold validates on a quarter of each class, give or take one
        rest_y = whole.data.y[sorted(rest)]
        for fold in folds:
            for label in range(len(whole.labels)):
                assert abs((fold.y["val"] == label).sum() - (rest_y == label).sum() / 4) <= 1
    assert not (folds[0].x_mean == folds[1].x_mean).all()  # standardized on each fold's own training rows


def test_folds_refuse_a_series_and_too_few_folds(tmp_path):
    from training.prepare import prepare

    with pytest.raises(ValueError, match="is a series"):
        prepare(load_config("co2-lstm"), (0, 3))
    with pytest.raises(ValueError, match="at least 2 folds"):
        prepare(load_config("diabetes-mlp"), (0, 1))


def test_tune_with_folds_scores_each_trial_by_the_mean_of_its_folds(tmp_path):
    """Every complete trial's value is the mean of its folds' values, each the metric at the epoch fit keeps."""
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "training", "tune", str(tmp_path / "tiny.toml"), "--trials", "3",
                           "--folds", "3", "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr
    study = _study(out)
    assert study.user_attrs["folds"] == 3
    complete = [t for t in study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert complete
    for trial in complete:
        kept = []
        for k in range(3):
            rows = [json.loads(line) for line in (out / "trials" / str(trial.number) / f"fold-{k}" / "metrics.jsonl")
                    .read_text().splitlines()]
            kept.append(min(rows, key=lambda r: r["val_loss"])["val_loss"])  # monitor = val_loss: the kept epoch
        assert trial.user_attrs["fold_values"] == pytest.approx(kept)
        assert trial.value == pytest.approx(sum(kept) / 3)
        assert sorted(trial.intermediate_values) == [1, 2, 3]  # fold 0's epochs: the pruner judges the first fold
        assert trial.user_attrs["epochs"] == 9  # the report's epoch count is every fold's
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    assert summary["folds"] == 3 and "3-fold cross-validation" in report and "| epochs (all folds) |" in report
    assert re.search(r"^\| 0 \| complete \| [0-9.]+ \| 9 \|", report, re.MULTILINE)


def test_a_study_from_before_folds_counts_as_one_fold(tmp_path):
    config = RunConfig.from_dict(tomllib.loads(TINY_TOML))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    study.set_user_attr("metric", "val_loss")
    study.enqueue_trial({"optimizer.lr": 0.01})
    with pytest.raises(ValueError, match="with 1 fold\\(s\\), not 3"):
        load_study(TuneSettings(config=config, out=tmp_path, storage=url, study="s", trials=1, metric="val_loss",
                                folds=3), open_storage(url))


def test_under_folds_the_pruner_judges_the_first_fold_and_a_pruned_trial_runs_no_other(tmp_path):
    """A pruner that stops every trial whose value exceeds 0 stops it at fold 0's first epoch."""
    from training.tune_study import _quiet_optuna
    from training.tune_trials import run_trial

    config = RunConfig.from_dict(tomllib.loads(TINY_TOML))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    settings = TuneSettings(config=config, out=tmp_path, storage=url, study="s", trials=1, metric="val_loss",
                            folds=3, quiet=True)
    with _quiet_optuna():  # as run_worker does: a heartbeat storage outside Study.optimize warns
        storage = open_storage(url)
        study = optuna.create_study(storage=storage, study_name="s", pruner=optuna.pruners.ThresholdPruner(upper=0.0))
        trial = study.ask()
        run_trial(study, trial, settings, storage, log=print)
    done = study.trials[0]
    assert done.state is optuna.trial.TrialState.PRUNED
    assert list(done.intermediate_values) == [1] and "fold_values" not in done.user_attrs
    assert (tmp_path / "trials/0/fold-0/metrics.jsonl").exists() and not (tmp_path / "trials/0/fold-1").exists()
