"""`python -m training retrain NAME`: fit from the model's config, export, verify, gate, publish, and tell a service.

The promotion gate refuses a version whose test metric is worse than the published one's by more than a
small tolerance, or whose inputs and outputs differ from the published one's, unless forced. With a service URL,
it first checks that the service answers the repository index with the token (before any training), and after
publishing calls the repository extension's load for the model and waits until the new version answers.
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
from training import texttasks
from training.tasks import higher_is_better

POINTS_TOLERANCE = 0.005  # metrics in [0, 1] (accuracy, ROC AUC, R^2): half a point
RELATIVE_TOLERANCE = 0.02  # errors in data units (MAE): 2 %
READY_TIMEOUT = 60.0


class PromotionRefused(Exception):
    """The new version is worse than the published one beyond the tolerance, or its signature (inputs, outputs,
    feature order) differs from the published one's; nothing was published."""


class ServiceRefused(RuntimeError):
    """The service given with --service cannot take a new version (unreachable, no token, the token refused);
    found before training, so nothing was trained or published."""


class LoadFailed(RuntimeError):
    """The version was published, and only the service's load call (or the wait for it to serve) failed."""


def promotion_problem(metric: str, new: float, old: float) -> str | None:
    """Why `new` may not replace `old`, or None when it may."""
    if higher_is_better(metric):
        if new < old - POINTS_TOLERANCE:
            return (f"test {metric} {new:.4f} is worse than the published {old:.4f} by more than "
                    f"{POINTS_TOLERANCE * 100:.1f} points")
    elif new > old * (1 + RELATIVE_TOLERANCE):
        return f"test {metric} {new:.4f} is worse than the published {old:.4f} by more than {RELATIVE_TOLERANCE:.0%}"
    return None


def _request(method: str, url: str, token: str | None = None, body: bytes | None = None) -> tuple[int, object]:
    """(status, JSON body) of one call; status 0 when the service cannot be reached (the reason under 'error')."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, data = err.code, err.read()
    except (urllib.error.URLError, OSError) as exc:  # refused, unknown host, timed out
        return 0, {"error": str(getattr(exc, "reason", exc))}
    try:
        return status, json.loads(data) if data else {}
    except ValueError:
        return status, {"error": data[:200].decode(errors="replace")}


def _error(body: object) -> str:
    return str(body.get("error", "")) if isinstance(body, dict) else ""


def check_service(service: str, token: str | None) -> str:
    """The service's base URL once it answers the repository index with `token`; else raise ServiceRefused (or
    ValueError for a URL that is not http(s))."""
    base = service.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"--service: expected a URL such as http://127.0.0.1:8080, got {service!r}")
    nothing = "nothing was trained or published"
    if not token:
        raise ServiceRefused(f"--service {base}: no repository token; give --token TOKEN or set "
                             f"NNSERVE_REPOSITORY_TOKEN to the service's token; {nothing}")
    status, body = _request("POST", f"{base}/v2/repository/index", token, b"{}")
    if status == 0:
        raise ServiceRefused(f"--service {base}: cannot reach the service ({_error(body)}); {nothing}")
    if status == 401:
        raise ServiceRefused(f"--service {base}: the service refused the repository token (401); check --token or "
                             f"NNSERVE_REPOSITORY_TOKEN; {nothing}")
    if status == 403:
        raise ServiceRefused(f"--service {base}: the service's repository extension is off (403: {_error(body)}); "
                             f"{nothing}")
    if status != 200 or not isinstance(body, list):
        raise ServiceRefused(f"--service {base}: POST /v2/repository/index answered {status} {_error(body)}, not "
                             f"the model index of an nnserve service; {nothing}")
    return base


def load_on_service(service: str, name: str, version: int, token: str | None,
                    log: Callable[[str], None] = print) -> None:
    """Ask a running service to load `name` and wait until `version` is what it serves by default; raise
    LoadFailed, saying that the version is published, when it does not."""
    base = service.rstrip("/")
    published = f"{name} version {version} is published, only the load call failed"
    status, body = _request("POST", f"{base}/v2/repository/models/{name}/load", token, b"{}")
    if status != 200:
        answer = f"cannot reach {base} ({_error(body)})" if status == 0 else \
            f"{base} answered {status} {_error(body)}"
        raise LoadFailed(f"{published}: {answer}; load it later with POST {base}/v2/repository/models/{name}/load")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        ready, _ = _request("GET", f"{base}/v2/models/{name}/versions/{version}/ready")
        status, meta = _request("GET", f"{base}/v2/models/{name}")
        if ready == 200 and status == 200 and isinstance(meta, dict) \
                and meta.get("parameters", {}).get("version") == str(version):
            log(f"{base} serves {name} version {version}")
            return
        time.sleep(0.2)
    raise LoadFailed(f"{published}: {base} did not serve {name} version {version} within {READY_TIMEOUT:.0f} s")


def retrain(name: str, models: Path, service: str | None = None, force: bool = False, token: str | None = None,
            out: Path | None = None, log: Callable[[str], None] = print, quiet: bool = True) -> int:
    """Fit, export, verify, gate and publish the next version of `name`; return the new version.

    With `service`, the service and the token are checked first (ServiceRefused, nothing trained); after
    publishing, a failed load raises LoadFailed. The metric gate and the signature gate raise PromotionRefused
    unless `force`."""
    from training.config import load_config
    from training.export import export_run
    from training.publish import SignatureChanged, publish
    from training.trainer import fit

    if service:
        service = check_service(service, token)
    config = load_config(name)
    run_dir = out or Path("runs") / "retrain" / f"{name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    text_fit, publish_text = texttasks.text_fit(config.arch), texttasks.text_publish(config.arch)
    summary = (text_fit or fit)(config, run_dir, log=log if not quiet else (lambda _m: None), quiet=quiet)
    if not text_fit:
        exported, resolved, summary = export_run(run_dir)
    metric = summary.headline_metric
    # a text run's ONNX metric equals torch's: its export verifies that (or the generated texts) before publishing
    new = summary.headline if text_fit else exported.onnx_metrics[metric]
    versions = artifact.list_versions(Path(models) / name)
    published = artifact.read_metadata(Path(models) / name / str(versions[-1])) if versions else None
    old = published["training"]["metrics"].get(f"{'' if text_fit else 'onnx_'}test_{metric}") if published else None
    if old is not None:
        problem = promotion_problem(metric, new, old)
        if problem and not force:
            raise PromotionRefused(f"{name}: not published: {problem} (use --force to publish anyway)")
        if problem:
            log(f"{name}: publishing although {problem} (--force)")
    try:
        version, path = publish_text(run_dir, name, Path(models), log) if publish_text else \
            publish(exported, resolved, summary, name, Path(models), run_dir, force=force, log=log)
    except SignatureChanged as exc:
        raise PromotionRefused(str(exc)) from None
    log(f"published {name} version {version} at {path}")
    rows = [("metric", f"version {versions[-1]}" if versions else "-", f"version {version} (new)")]
    for key in sorted(k for k in summary.metrics if k.startswith("test_")):
        before = published["training"]["metrics"].get(key) if published else None
        rows.append((key[5:], "-" if before is None else f"{before:.4f}", f"{summary.metrics[key]:.4f}"))
    width = max(len(r[0]) for r in rows)
    for row in rows:
        log(f"  {row[0]:<{width}}  {row[1]:>12}  {row[2]:>18}")
    if service:
        load_on_service(service, name, version, token, log)
    return version
