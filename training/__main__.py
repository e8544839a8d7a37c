"""`python -m training`: fit, tune, export, retrain, train the zoo, check a repository, list what exists."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from service import artifact

DEFAULT_MODELS = Path("models")
EXIT_CODES = """exit codes:
  0  done
  1  zoo: a model missed its quality bar; check: the repository has problems
  2  a configuration or input error (one line says which value and what was expected)
  3  export, retrain, zoo: refused by verification or a gate (parity, int8, the metric, a changed signature);
     nothing was published
  4  retrain: the service is unreachable or refused the token, found before training; tune: a worker process died
  5  retrain: the new version is published, but the service's load call failed"""


def _fit(args: argparse.Namespace) -> int:
    from training.config import RunConfig, apply_overrides, load_config
    from training.data import dataset_label
    from training.distributed import from_environment
    from training.texttasks import text_fit
    from training.trainer import fit

    config = load_config(args.config) if args.config else RunConfig()
    flags = {"arch": args.arch, "dataset": args.dataset, "seed": args.seed}
    overrides = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    config = apply_overrides(config, overrides + list(args.set))
    if not config.name:
        config.name = f"{dataset_label(config.dataset)}-{config.arch}"
    if args.resume and not args.out:
        raise ValueError("--resume needs --out RUN_DIR: the run folder to continue")
    out = args.out or Path("runs") / f"{config.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    distributed = from_environment()  # None unless started by torchrun
    if args.resume and not (Path(out) / "last.pt").exists() and (distributed is None or distributed.main):
        print(f"python -m training fit: --resume: {out} holds no checkpoint (last.pt) to continue; starting a new "
              "run there", file=sys.stderr)
    if distributed and not args.out:  # every rank must name the same folder; rank 0's clock decides
        out = distributed.broadcast(out)
    fit_text = text_fit(config.arch)
    if fit_text:  # strings in: trained by their own modules (training/texttasks.py), in one process
        fit_text(config, Path(out), log=(lambda _msg: None) if args.quiet else print, quiet=args.quiet)
        print(out)
        return 0
    try:
        fit(config, Path(out), log=(lambda _msg: None) if args.quiet else print, quiet=args.quiet,
            resume=args.resume, distributed=distributed)
        if distributed:
            distributed.barrier()  # no rank leaves while another still talks to it
    finally:
        if distributed:  # also after an error, without a barrier the other ranks may never reach
            distributed.close()
    if distributed is None or distributed.main:
        print(out)
    return 0


def _zoo(args: argparse.Namespace) -> int:
    from training.zoo import run_zoo, target_met

    results = run_zoo(args.out, args.only or None, quiet=args.quiet, models=args.models)
    return 0 if all(target_met(name, summary) for name, summary in results.items()) else 1


def _list(args: argparse.Namespace) -> int:
    from training.architectures import ARCHITECTURES
    from training.config import CONFIG_DIR, load_config
    from training.data import DATASETS, load_dataset
    from training.zoo import ZOO

    print("architectures:")
    for name, spec in ARCHITECTURES.items():
        print(f"  {name:12s} tasks: {', '.join(spec.tasks)}")
    print("datasets (or a path to a .csv, a .npz, or a folder of class folders):")
    for name in DATASETS:
        data = load_dataset(name)
        print(f"  {name:14s} {data.task:12s} {data.description}")
    print("zoo models (training/configs/):")
    for name in ZOO:
        config = load_config(CONFIG_DIR / f"{name}.toml")
        print(f"  {name:20s} {config.arch:12s} {config.dataset}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.export import export_run, quantize
    from training.publish import SignatureChanged, publish
    from training.texttasks import run_arch, text_publish

    if not artifact.is_valid_name(args.name):
        raise ValueError(f"--name: expected letters, digits, '.', '_' or '-', got {args.name!r}")
    publish_text = text_publish(run_arch(args.run_dir) or "")
    if publish_text:  # a text run: its graph takes strings
        publish_text(args.run_dir, args.name, args.models)
        return 0
    if args.stream and args.quantize:
        raise ValueError("--quantize: a step graph (--stream) is published in float32 only; leave out one of them")
    if args.stream:
        from training.stream_export import export_stream

        exported, resolved, summary = export_stream(args.run_dir)
    else:
        exported, resolved, summary = export_run(args.run_dir)
    if args.quantize == "dynamic":
        quantized, reasons, report = quantize(exported, resolved, args.run_dir)
        if quantized is None:
            print("python -m training export: the int8 model was refused, nothing was published:\n  - "
                  + "\n  - ".join(reasons), file=sys.stderr)
            return 3
        timing = report["timings"][str(report["gate_batch"])]
        print(f"quantized to int8: {report['float_bytes']} -> {report['int8_bytes']} bytes, metric change "
              f"{-report['metric_drop_points']:+.2f} points, {timing['speedup']:.2f}x faster at batch "
              f"{report['gate_batch']} (measured side by side)")
        exported = quantized
    try:
        version, path = publish(exported, resolved, summary, args.name, args.models, args.run_dir, force=args.force)
    except SignatureChanged as exc:
        print(f"python -m training export: {exc}", file=sys.stderr)
        return 3
    parity, metric = exported.parity, summary.headline_metric
    print(f"published {args.name} version {version} at {path}")
    print(f"  parity: max |onnx - torch| = {parity['max_abs_diff']:.2e} over {len(parity['checks'])} input shapes "
          f"(atol {parity['atol']:g})")
    if "stream" in parity:
        print(f"  stream: max |step - window| / max(1, |window|) = {parity['stream']['max_scaled_diff']:.2e} over "
              f"{len(parity['stream']['checks'])} checks, compared after every call")
    print(f"  test {metric}: torch {summary.headline:.4f}, "
          f"onnx {exported.onnx_metrics[metric]:.4f}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from training.repository import check_repository

    problems = check_repository(args.models_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {args.models_dir}", file=sys.stderr)
        return 1
    print(f"{args.models_dir}: every model and version is valid")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from training.retrain import LoadFailed, PromotionRefused, retrain

    token = args.token or os.environ.get("NNSERVE_REPOSITORY_TOKEN")
    try:
        retrain(args.name, args.models, args.service, args.force, token, args.out, quiet=args.quiet)
    except PromotionRefused as exc:  # the metric or the signature gate: nothing was published
        print(exc, file=sys.stderr)
        return 3
    except LoadFailed as exc:  # published; only the load call on the service failed
        print(f"python -m training retrain: {exc}", file=sys.stderr)
        return 5
    except RuntimeError as exc:  # the service refused or did not answer, checked before training
        print(f"python -m training retrain: {exc}", file=sys.stderr)
        return 4
    return 0


def _tune(args: argparse.Namespace) -> int:
    from training.config import apply_overrides, load_config
    from training.data import dataset_label
    from training.tune import tune

    config = apply_overrides(load_config(args.config), list(args.set))
    if not config.name:
        config.name = f"{dataset_label(config.dataset)}-{config.arch}"
    out = args.out or Path("runs") / "tune" / f"{config.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    try:
        tune(config, Path(out), args.trials, storage=args.storage, jobs=args.jobs, metric=args.metric,
             pruner=args.pruner, startup_trials=args.startup_trials, warmup_epochs=args.warmup_epochs,
             sampler_seed=args.sampler_seed, study_name=args.study, quiet=args.quiet, folds=args.folds)
    except RuntimeError as exc:  # a worker process died
        print(f"python -m training tune: {exc}", file=sys.stderr)
        return 4
    print(out)
    return 0


def _add_fit(sub) -> None:
    fit = sub.add_parser("fit", help="train a model and write a run folder")
    fit.add_argument("config", nargs="?", help="TOML config file, or a zoo name such as digits-mlp")
    fit.add_argument("--arch", help="architecture (e.g. mlp)")
    fit.add_argument("--dataset", help="a bundled dataset (e.g. digits; `list` shows them) or your data: a .csv, a .npz, "
                     "or a folder with one sub-folder of images per class")
    fit.add_argument("--epochs", type=int, help="number of epochs")
    fit.add_argument("--seed", type=int, help="random seed for the split, the weights and the batches")
    fit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set optimizer.lr=0.01 (repeatable)")
    fit.add_argument("--out", type=Path, help="run folder (default runs/<name>-<timestamp>)")
    fit.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    fit.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines (for logs and CI)")
    fit.set_defaults(func=_fit)


def _add_zoo(sub) -> None:
    zoo = sub.add_parser("zoo", help="train every zoo model from its config and print the results table")
    zoo.add_argument("--out", type=Path, default=Path("runs") / "zoo", help="folder for the runs (default runs/zoo)")
    zoo.add_argument("--only", nargs="+", metavar="NAME", help="train only these zoo models")
    zoo.add_argument("--models", type=Path, help="also export, verify and publish each model to this repository")
    zoo.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    zoo.set_defaults(func=_zoo)


def _add_retrain(sub) -> None:
    retrain = sub.add_parser("retrain", help="fit a model from its config, export, verify and publish the next version")
    retrain.add_argument("name", help="zoo model name (its config is training/configs/NAME.toml)")
    retrain.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="model repository (default models)")
    retrain.add_argument("--service", help="URL of a running service to load the new version, e.g. http://127.0.0.1:8080")
    retrain.add_argument("--token", help="the service's repository token (default: $NNSERVE_REPOSITORY_TOKEN)")
    retrain.add_argument("--force", action="store_true", help="publish even if worse than the published version, or "
                         "if its inputs or outputs differ from the published version's")
    retrain.add_argument("--out", type=Path, help="run folder (default runs/retrain/<name>-<timestamp>)")
    retrain.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    retrain.set_defaults(func=_retrain)


def _add_check(sub) -> None:
    check = sub.add_parser("check", help="validate a model repository; exit 1 with a line per problem")
    check.add_argument("models_dir", nargs="?", type=Path, default=DEFAULT_MODELS, help="repository (default models)")
    check.set_defaults(func=_check)


def _add_list(sub) -> None:
    lister = sub.add_parser("list", help="show architectures, datasets and zoo models")
    lister.set_defaults(func=_list)


def _add_export(sub) -> None:
    export = sub.add_parser("export", help="export a run to ONNX, verify it, publish the next version")
    export.add_argument("run_dir", type=Path, help="run folder written by fit")
    export.add_argument("--name", required=True, help="model name in the repository, e.g. digits-mlp")
    export.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="model repository (default models)")
    export.add_argument("--force", action="store_true",
                        help="publish even if the inputs or outputs differ from the latest published version's")
    export.add_argument("--stream", action="store_true",
                        help="publish the run's stateful step graph instead (rnn, lstm or gru forecasting with "
                             "data.scaling = \"diff\"): one new value per request, the state kept by the server's "
                             "sequence batcher; conventionally named <model>-stream")
    export.add_argument("--quantize", choices=["dynamic"], help="publish an int8 (dynamic) model instead, if it loses "
                        "<= 0.5 points and is faster at batch 64 measured side by side (MatMul/Gemm-only graphs)")
    export.set_defaults(func=_export)


def _add_tune(sub) -> None:
    tune = sub.add_parser("tune", help="search the config's [search] space with Optuna, then fit the best config")
    tune.add_argument("config", help="TOML config with a [search] table, or a zoo name such as digits-cnn")
    tune.add_argument("--trials", type=int, required=True,
                      help="trials in the study in all, shared by every worker process (and every command on the "
                           "same --storage); the config as written is trial 0 when it lies in the space")
    tune.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/study.db); several processes or "
                      "machines share one study through the same URL")
    tune.add_argument("--jobs", type=int, default=1, help="worker processes on this machine (default 1)")
    tune.add_argument("--folds", type=int, default=1,
                      help="score each trial by K-fold cross-validation over the training and validation rows (the "
                           "mean of K fits) instead of the validation split alone (default 1: the split alone)")
    tune.add_argument("--study", help="study name (default: the config's name)")
    tune.add_argument("--metric", help="validation metric to optimize (default: the config's train.monitor)")
    tune.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                      help="stop trials whose validation metric lags at the same epoch (default median)")
    tune.add_argument("--startup-trials", type=int, default=5,
                      help="median pruner: completed trials before any trial is pruned (default 5)")
    tune.add_argument("--warmup-epochs", type=int,
                      help="epochs a trial runs before it may be pruned (default: a tenth of train.epochs)")
    tune.add_argument("--sampler-seed", type=int, help="TPE seed; worker i uses seed + i (default: the config's "
                      "seed). Give each command that shares a study its own")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value before the search, e.g. --set train.epochs=20 (repeatable)")
    tune.add_argument("--out", type=Path, help="run folder (default runs/tune/<name>-<timestamp>)")
    tune.add_argument("--quiet", action="store_true", help="no line per trial")
    tune.set_defaults(func=_tune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_fit(sub)
    _add_zoo(sub)
    _add_retrain(sub)
    _add_check(sub)
    _add_list(sub)
    _add_export(sub)
    _add_tune(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "fit" and "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun in every process it starts
        print(f"python -m training {args.command}: only `fit` runs under torchrun; start this without it",
              file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ValueError as exc:  # configuration and input errors: one clear line, no traceback
        print(f"python -m training {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        export = sys.modules.get("training.export")  # loaded by every command that exports (it imports torch)
        if export is None or not isinstance(exc, export.ExportError):
            raise
        print(f"python -m training {args.command}: {exc}", file=sys.stderr)  # every failed check; nothing published
        return 3


if __name__ == "__main__":
    sys.exit(main())
