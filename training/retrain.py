"""`python -m training retrain NAME`: fit from the model's config, export, verify, gate, publish, and tell a service.

The promotion gate refuses a version whose test metric is worse than the published one's by more than a
small tolerance, unless forced. With a service URL, it calls the repository extension's load for the model
and waits until the new version answers.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from service import artifact
from training.tasks import higher_is_better

POINTS_TOLERANCE = 0.005  # metrics in [0, 1] (accuracy, ROC AUC, R^2): half a point
RELATIVE_TOLERANCE = 0.02  # errors in data units (MAE): 2 %
READY_TIMEOUT = 60.0


class PromotionRefused(Exception):
    """The new version is worse than the published one beyond the tolerance."""


def promotion_problem(metric: str, new: float, old: float) -> str | None:
    """Why `new` may not replace `old`, or None when it may."""
    if higher_is_better(metric):
        if new < old - POINTS_TOLERANCE:
            return (f"test {metric} {new:.4f} is worse than the published {old:.4f} by more than "
                    f"{POINTS_TOLERANCE * 100:.1f} points")
    elif new > old * (1 + RELATIVE_TOLERANCE):
        return f"test {metric} {new:.4f} is worse than the published {old:.4f} by more than {RELATIVE_TOLERANCE:.0%}"
    return None


def _request(method: str, url: str, token: str | None = None, body: bytes | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = resp.read()
            return resp.status, json.loads(data) if data else {}
    except urllib.error.HTTPError as err:
        data = err.read()
        try:
            return err.code, json.loads(data)
        except ValueError:
            return err.code, {"error": data[:200].decode(errors="replace")}


def load_on_service(service: str, name: str, version: int, token: str | None,
                    log: Callable[[str], None] = print) -> None:
    """Ask a running service to load `name` and wait until `version` is what it serves by default."""
    base = service.rstrip("/")
    status, body = _request("POST", f"{base}/v2/repository/models/{name}/load", token, b"{}")
    if status != 200:
        raise RuntimeError(f"{base} refused to load {name}: {status} {body.get('error', '')}")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        ready, _ = _request("GET", f"{base}/v2/models/{name}/versions/{version}/ready")
        status, meta = _request("GET", f"{base}/v2/models/{name}")
        if ready == 200 and status == 200 and meta.get("parameters", {}).get("version") == str(version):
            log(f"{base} serves {name} version {version}")
            return
        time.sleep(0.2)
    raise RuntimeError(f"{base} did not serve {name} version {version} within {READY_TIMEOUT:.0f} s")


def retrain(name: str, models: Path, service: str | None = None, force: bool = False, token: str | None = None,
            out: Path | None = None, log: Callable[[str], None] = print, quiet: bool = True) -> int:
    """Fit, export, verify, gate and publish the next version of `name`; return the new version."""
    from training.config import load_config
    from training.export import export_run, publish
    from training.trainer import fit

    config = load_config(name)
    run_dir = out or Path("runs") / "retrain" / f"{name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    fit(config, run_dir, log=log if not quiet else (lambda _m: None), quiet=quiet)
    exported, resolved, summary = export_run(run_dir)
    metric = summary["headline_metric"]
    new = exported.onnx_metrics[metric]
    versions = artifact.list_versions(Path(models) / name)
    published = artifact.read_metadata(Path(models) / name / str(versions[-1])) if versions else None
    old = published["training"]["metrics"].get(f"onnx_test_{metric}") if published else None
    if old is not None:
        problem = promotion_problem(metric, new, old)
        if problem and not force:
            raise PromotionRefused(f"{name}: not published: {problem} (use --force to publish anyway)")
        if problem:
            log(f"{name}: publishing although {problem} (--force)")
    version, path = publish(exported, resolved, summary, name, Path(models), run_dir)
    log(f"published {name} version {version} at {path}")
    rows = [("metric", f"version {versions[-1]}" if versions else "-", f"version {version} (new)")]
    for key in sorted(k for k in summary["metrics"] if k.startswith("test_")):
        before = published["training"]["metrics"].get(key) if published else None
        rows.append((key[5:], "-" if before is None else f"{before:.4f}", f"{summary['metrics'][key]:.4f}"))
    width = max(len(r[0]) for r in rows)
    for row in rows:
        log(f"  {row[0]:<{width}}  {row[1]:>12}  {row[2]:>18}")
    if service:
        load_on_service(service, name, version, token, log)
    return version
