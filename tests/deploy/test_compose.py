"""compose.yaml, structurally (it is not run here: the Prometheus and Grafana images need a registry)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import ROOT


def test_compose_wires_nnserve_prometheus_and_grafana_to_files_that_exist():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"nnserve", "prometheus", "grafana"}
    nnserve = services["nnserve"]  # the image's user (10001) on a read-only root, /tmp its only writable place
    assert nnserve["build"] == {"context": ".", "target": "runtime"}
    assert nnserve["read_only"] is True and nnserve["tmpfs"] == ["/tmp"]
    assert "no-new-privileges:true" in nnserve["security_opt"]
    assert nnserve["sysctls"] == {"net.ipv4.tcp_migrate_req": 1}
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port  # published on loopback only
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"{source} is mounted but does not exist"
    prometheus = yaml.safe_load((ROOT / "deploy/monitoring/prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["nnserve:8080"] and prometheus["rule_files"] == ["alerts.yml"]
    datasource = yaml.safe_load((ROOT / "deploy/monitoring/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((ROOT / "deploy/monitoring/grafana/provisioning/dashboards/nnserve.yml").read_text())
    mounted = {v.split(":")[1]: Path(v.split(":")[0]) for v in services["grafana"]["volumes"]}
    dashboards = ROOT / mounted[provider["providers"][0]["options"]["path"]]
    dashboard = json.loads((dashboards / "nnserve.json").read_text())
    assert dashboard["uid"] == "nnserve" and all(t["datasource"]["uid"] == "prometheus"
                                                 for p in dashboard["panels"] for t in p["targets"])
