"""The monitoring stack against the real thing: Debian's Prometheus and promtool, nnserve on 127.0.0.1.

Marker `monitoring` (`make test-monitoring`, which installs the `prometheus` package); not part of `make test`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import ROOT, SHIPPED_MODELS, free_port, start_server

pytestmark = pytest.mark.monitoring
MONITORING = ROOT / "deploy" / "monitoring"
REQUESTS = 25


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make test-monitoring`, which installs Debian's prometheus")
    return path


def test_promtool_checks_the_config_and_the_alert_rules():
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run([tool("promtool"), *args], cwd=MONITORING, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    rules = set(re.findall(r"^\s*- alert: (\w+)", (MONITORING / "alerts.yml").read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "alerts_test.yml").read_text()))
    assert rules == tested == {"NnserveDown", "NnserveHighErrorRate", "NnserveHighP99Latency", "NnserveModelLoadFailed"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """nnserve on 127.0.0.1 after REQUESTS inference requests to digits-mlp."""
    srv = start_server(SHIPPED_MODELS, tmp_path_factory.mktemp("logs"), "--workers", "2")
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]})
    for _ in range(REQUESTS):
        assert srv.request("POST", "/v2/models/digits-mlp/infer", body.encode())[0] == 200
    yield srv
    srv.stop()


def test_promtool_finds_nothing_wrong_with_the_exposition(served):
    result = subprocess.run([tool("promtool"), "check", "metrics"], input=served.metrics(), capture_output=True,
                            text=True)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr


def test_the_dashboard_queries_only_metrics_the_service_exposes(served):
    from service.metrics import Metrics

    # What the service defines (a labelled counter appears in /metrics only once it has a sample), and what it
    # exposes now.
    exposed = {family.name for family in Metrics().registry.collect()}
    exposed |= {m.group(1) for m in re.finditer(r"^# TYPE (\w+) (\w+)", served.metrics(), re.M)}
    assert "nnserve_inference_requests" in exposed
    names = set()
    for family in exposed:  # a histogram exposes _bucket, _sum and _count; a counter _total
        names |= {family, f"{family}_bucket", f"{family}_sum", f"{family}_count", f"{family}_total"}
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "nnserve.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\b(nnserve_\w+)", e)}
    assert used and used <= names, used - names
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests per second", "p50", "p99", "errors", "batch size", "queue", "loaded model versions",
                  "by protocol"):
        assert topic in titles


def test_a_real_prometheus_scrapes_the_service_and_counts_the_requests(served, tmp_path):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text((MONITORING / "prometheus.yml").read_text()
                      .replace("scrape_interval: 5s", "scrape_interval: 1s")
                      .replace('["nnserve:8080"]', f'["{served.url}"]'))
    shutil.copy(MONITORING / "alerts.yml", tmp_path / "alerts.yml")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"

    def get(path: str) -> dict:
        with urllib.request.urlopen(api + path, timeout=5) as resp:
            return json.loads(resp.read())

    try:
        deadline = time.monotonic() + 60
        up = value = None
        query = urllib.parse.quote('sum(nnserve_inference_requests_total{model="digits-mlp",outcome="success"})')
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                targets = get("/targets")["data"]["activeTargets"]
                up = [t["health"] for t in targets if t["labels"]["job"] == "nnserve"]
                result = get(f"/query?query={query}")["data"]["result"]
                value = float(result[0]["value"][1]) if result else None
            except OSError:
                continue
            if up == ["up"] and value == REQUESTS:
                break
        assert up == ["up"], (up, (tmp_path / "prometheus.log").read_text()[-2000:])
        assert value == REQUESTS
        rules = get("/rules")["data"]["groups"]
        assert {r["name"] for g in rules for r in g["rules"]} >= {"NnserveDown", "NnserveHighErrorRate"}
        alerts = get("/alerts")["data"]["alerts"]
        assert not [a for a in alerts if a["state"] == "firing"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
