"""FleetWatch's Prometheus rules, scrape config and exposition, checked by real Prometheus.

``promtool`` checks and unit-tests the rules and lints a real scrape of a running daemon;
a real ``prometheus`` (Debian package ``prometheus``) scrapes a running daemon every second,
evaluates the shipped rules, and answers queries with FleetWatch's series, including every
query of the Grafana dashboard.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.daemon_helpers import daemon_settings, running_daemon, scrape
from tests.monitoring_helpers import (
    PROMETHEUS,
    PROMTOOL,
    get_json,
    loopback_address,
    poll,
    running_process,
)

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "config" / "prometheus" / "rules.yml"
NOW = 1_767_225_600

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)"
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (Debian package prometheus)"
)


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, timeout=60, check=False, cwd=ROOT
    )


def telemetry(ts: int, seq: int, battery_v: float, **meta: str) -> bytes:
    return orjson.dumps({"ts": ts, "seq": seq, "battery_v": battery_v, **meta})


async def feed(mqtt_client: Any, prefix: str) -> None:
    """Telemetry that opens a battery alert, plus a message that cannot be read."""
    topic = f"{prefix}/fleet/plant-a/th-1/telemetry"
    await mqtt_client.subscribe(f"{prefix}/fleetwatch/#")
    meta = {"model": "TH-200", "firmware": "1.4.2", "gateway": "gw-a-1", "zone": "z1"}
    await mqtt_client.publish(topic, telemetry(NOW, 1, 3.70, **meta))
    await mqtt_client.publish(topic, telemetry(NOW + 60, 2, 3.10, **meta))
    await mqtt_client.publish(f"{prefix}/fleet/plant-a/th-2/telemetry", b"{not json")
    await mqtt_client.expect(f"{prefix}/fleetwatch/alerts/rule.battery_low/th-1")
    await mqtt_client.expect(f"{prefix}/fleetwatch/deadletter", timeout=5.0)


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"SUCCESS" in result.stdout


@needs_promtool
def test_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", "config/prometheus/rules_test.yml")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"SUCCESS" in result.stdout


@needs_promtool
def test_scrape_config_passes_promtool_check() -> None:
    result = promtool("check", "config", "config/prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


@needs_promtool
@pytest.mark.broker
async def test_daemon_exposition_passes_promtool_check_metrics(
    broker: Any, topic_prefix: str, mqtt_client: Any
) -> None:
    settings = daemon_settings(broker.host, broker.port, topic_prefix)
    async with running_daemon(settings) as daemon:
        await feed(mqtt_client, topic_prefix)
        daemon.publish_reports(f"{topic_prefix}/fleetwatch/reports")
        exposition = (await scrape(daemon.http_port)).encode()  # type: ignore[arg-type]
    for name in (
        b"fleetwatch_readings_total",
        b"fleetwatch_decode_errors_total",
        b"fleetwatch_alerts_active",
        b"fleetwatch_firmware_devices",
        b"fleetwatch_gateway_load_ratio",
        b"fleetwatch_battery_empty_within_devices",
        b"fleetwatch_drift_sensors",
    ):
        assert b"\n" + name + b"{" in exposition, name
    result = await asyncio.to_thread(promtool, "check", "metrics", stdin=exposition)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""


PrometheusFactory = Callable[[str], AbstractAsyncContextManager[str]]


@pytest.fixture
def prometheus(tmp_path: Path) -> PrometheusFactory:
    """Start a real Prometheus scraping ``target`` every second with the shipped rules.

    The configuration is the shipped ``config/prometheus/prometheus.yml`` with its
    FleetWatch target replaced, 1 s intervals, the rules file by absolute path and no
    Alertmanager. It listens on a free 127.0.0.1 port and keeps its TSDB in a temp dir.
    """

    @asynccontextmanager
    async def start(target: str) -> AsyncIterator[str]:
        assert PROMETHEUS is not None
        config = yaml.safe_load((ROOT / "config/prometheus/prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES)]
        config.pop("alerting", None)
        config["scrape_configs"] = [
            {**job, "static_configs": [{"targets": [target]}]}
            for job in config["scrape_configs"]
            if job["job_name"] == "fleetwatch"
        ]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        address = loopback_address()
        argv = [
            PROMETHEUS,
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={address}",
            "--log.level=warn",
        ]
        url = f"http://{address}"
        async with running_process(argv, f"{url}/-/ready", tmp_path / "prometheus.log"):
            yield url

    return start


async def instant_query(url: str, query: str) -> list[dict[str, Any]]:
    body = await get_json(f"{url}/api/v1/query", query=query)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def dashboard_queries() -> list[str]:
    """Every query of the Grafana dashboard, with its variables filled in."""
    dashboard = json.loads((ROOT / "config/grafana/dashboards/fleetwatch.json").read_text())
    values = {"$__rate_interval": "1m", "$__range": "5m", "$job": ".*", "$instance": ".*"}
    values["$site"] = ".*"
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            query = target["expr"]
            for name, value in values.items():
                query = query.replace(name, value)
            queries.append(query)
    return queries


@needs_prometheus
@pytest.mark.broker
async def test_real_prometheus_scrapes_daemon_and_evaluates_rules(
    broker: Any, topic_prefix: str, mqtt_client: Any, prometheus: PrometheusFactory
) -> None:
    settings = daemon_settings(broker.host, broker.port, topic_prefix)
    async with running_daemon(settings) as daemon:
        await feed(mqtt_client, topic_prefix)
        async with prometheus(f"127.0.0.1:{daemon.http_port}") as url:

            async def series(query: str) -> list[dict[str, Any]] | None:
                return await instant_query(url, query) or None

            accepted = await poll(
                lambda: series('fleetwatch_readings_total{job="fleetwatch",result="accepted"}'),
                15.0,
                "Prometheus has FleetWatch's readings",
            )
            assert float(accepted[0]["value"][1]) == 2
            assert await poll(lambda: series("up == 1"), 5.0, "target up")
            recorded = await poll(
                lambda: series('fleetwatch:alerts_active:sum_by_kind_severity{kind="rule.battery_low"}'),
                15.0,
                "the recording rules evaluated",
            )  # fmt: skip
            assert recorded[0]["metric"]["severity"] == "critical"
            assert float(recorded[0]["value"][1]) == 1
            errors = await poll(
                lambda: series("fleetwatch:deadletters:rate5m"), 15.0, "dead letters recorded"
            )
            assert {e["metric"]["reason"] for e in errors} == {"malformed_json"}

            rules = await get_json(f"{url}/api/v1/rules")
            groups = {g["name"]: g for g in rules["data"]["groups"]}
            assert set(groups) == {"fleetwatch.recording", "fleetwatch.alerts"}
            for group in groups.values():
                for rule in group["rules"]:
                    assert rule["health"] != "err", rule
            alerting = {rule["name"] for rule in groups["fleetwatch.alerts"]["rules"]}
            assert {
                "FleetWatchIntakeStalled",
                "FleetWatchDeadLetterRateHigh",
                "FleetWatchQueueSaturated",
                "FleetWatchMqttDisconnected",
                "FleetWatchManyCriticalAlerts",
            } <= alerting

            for query in dashboard_queries():
                body = await get_json(f"{url}/api/v1/query", query=query)
                assert body["status"] == "success", (query, body)
