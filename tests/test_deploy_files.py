"""Static checks of the container files (no Docker daemon is needed to run them)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from config.settings import load_settings
from service.alerts.metrics import FleetMetrics

ROOT = Path(__file__).resolve().parents[1]
METRIC_NAME = re.compile(r"\bfleetwatch_[a-z0-9_]+\b")


def compose_file() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's bind mounts from the repository: container path -> repository path."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = source
    return found


def exported_series() -> set[str]:
    """Every series name FleetWatch's /metrics can expose (from the metric definitions)."""
    names = set()
    for family in FleetMetrics(CollectorRegistry()).registry.collect():
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",),
        }[family.type]
        names.update(family.name + suffix for suffix in suffixes)
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_is_multi_stage_non_root_locked_and_healthchecked() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "uv sync --locked" in runs
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert any(keyword == "HEALTHCHECK" and "/healthz" in rest for keyword, rest in instructions)
    assert any(keyword == "VOLUME" for keyword, _ in instructions)


def test_dockerfile_copies_only_paths_that_exist() -> None:
    for keyword, rest in dockerfile_instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _destination = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), source


def test_compose_services_mount_files_from_the_repository() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"mosquitto", "fleetwatch", "simulator"} <= set(services)
    assert services["simulator"]["profiles"] == ["simulator"]
    named_volumes = set(compose.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name}: {source}"
            else:
                assert source in named_volumes, f"{name}: {source}"
        for dependency in service.get("depends_on", []):
            assert dependency in services
    assert "9108:9108" in services["fleetwatch"]["ports"]


def test_compose_monitoring_services_ports_and_volumes() -> None:
    compose = compose_file()
    services = compose["services"]
    assert {"prometheus", "alertmanager", "grafana"} <= set(services)
    assert "9090:9090" in services["prometheus"]["ports"]
    assert "9093:9093" in services["alertmanager"]["ports"]
    assert "3000:3000" in services["grafana"]["ports"]
    assert {"prometheus-data", "alertmanager-data", "grafana-data"} <= set(compose["volumes"])
    assert mounts(services["prometheus"]) == {
        "/etc/prometheus/prometheus.yml": "./config/prometheus/prometheus.yml",
        "/etc/prometheus/rules.yml": "./config/prometheus/rules.yml",
    }
    assert mounts(services["alertmanager"]) == {
        "/etc/alertmanager/alertmanager.yml": "./config/alertmanager/alertmanager.yml",
    }
    grafana = mounts(services["grafana"])
    assert "./config/grafana/dashboards/fleetwatch.json" in grafana.values()
    for service in ("prometheus", "alertmanager", "grafana"):
        for target, source in mounts(services[service]).items():
            assert (ROOT / source).is_file(), f"{service}: {source} -> {target}"
    # the files the commands name are the mounted ones
    for service in ("prometheus", "alertmanager"):
        flags = dict(arg.split("=", 1) for arg in services[service]["command"])
        assert flags["--config.file"] in mounts(services[service]), service


def test_prometheus_config_scrapes_fleetwatch_and_loads_the_mounted_rules() -> None:
    compose = compose_file()
    services = compose["services"]
    config = yaml.safe_load((ROOT / "config/prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets["fleetwatch"] == "fleetwatch:9108"
    for rule_file in config["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounts(services["prometheus"])
        assert (ROOT / "config/prometheus" / rule_file).is_file()
    managers = [
        target
        for manager in config["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    ]
    for target in [*managers, *targets.values()]:
        host, port = target.split(":")
        assert host == "localhost" or f"{port}:{port}" in services[host]["ports"], target
    assert managers == ["alertmanager:9093"]


def test_rules_and_dashboard_name_only_metrics_fleetwatch_exports() -> None:
    exported = exported_series()
    texts = {
        "rules": (ROOT / "config/prometheus/rules.yml").read_text(),
        "dashboard": (ROOT / "config/grafana/dashboards/fleetwatch.json").read_text(),
    }
    for what, text in texts.items():
        named = set(METRIC_NAME.findall(text))
        assert named, what
        assert named <= exported, f"{what} names unknown metrics: {sorted(named - exported)}"


def test_grafana_provisioning_points_at_prometheus_and_the_mounted_dashboard() -> None:
    services = compose_file()["services"]
    grafana = mounts(services["grafana"])
    datasources = yaml.safe_load(
        (ROOT / "config/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert [(d["type"], d["url"]) for d in datasources] == [
        ("prometheus", "http://prometheus:9090")
    ]
    providers = yaml.safe_load(
        (ROOT / "config/grafana/provisioning/dashboards/fleetwatch.yml").read_text()
    )["providers"]
    folder = providers[0]["options"]["path"]
    dashboards = [target for target in grafana if target.startswith(folder + "/")]
    assert dashboards and all(target.endswith(".json") for target in dashboards)
    for target in grafana:
        if target.startswith("/etc/grafana/provisioning/"):
            assert grafana[target].startswith("./config/grafana/provisioning/")
    dashboard = json.loads((ROOT / "config/grafana/dashboards/fleetwatch.json").read_text())
    assert dashboard["uid"] == "fleetwatch"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("readings", "lag", "dead letters", "alerts by kind", "alerts by site",
                  "battery", "firmware", "gateway load", "drift"):  # fmt: skip
        assert topic in titles, topic


def test_compose_environment_gives_valid_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = {
        key: str(value) for key, value in compose["services"]["fleetwatch"]["environment"].items()
    }
    settings = load_settings(ROOT / "config" / "fleetwatch.example.toml", environ=environment)
    assert settings.mqtt.host == "mosquitto"
    assert settings.http.host == "0.0.0.0"
    assert settings.alertmanager.enabled
    services = compose["services"]
    for url in settings.alertmanager.urls:
        host, _, port = url.removeprefix("http://").partition(":")
        assert host in services and f"{port}:{port}" in services[host]["ports"]
