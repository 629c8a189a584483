"""Several daemons sharing one broker, each taking a group of sites (sharding by site).

Each daemon subscribes to its own sites' topics and has its own client id, status topic and
state; all publish to the same alert topics. Every reading is processed by exactly one daemon
and every alert is raised exactly once.
"""

from __future__ import annotations

import orjson
import pytest

from tests.daemon_helpers import daemon_settings, firing_alerts, running_daemon

pytestmark = pytest.mark.broker

NOW = 1_767_225_600


def shard(host: str, port: int, prefix: str, name: str, sites: list[str]):  # type: ignore[no-untyped-def]
    return daemon_settings(
        host, port, prefix,
        mqtt={"client_id": f"fleetwatch-{prefix}-{name}",
              "subscriptions": [{"filter": f"{prefix}/fleet/{site}/+/+", "qos": 1}
                                for site in sites]},
        topics={"templates": [f"{prefix}/fleet/{{site}}/{{device_id}}/{{kind}}"],
                "alerts_prefix": f"{prefix}/fleetwatch/alerts",
                "deadletter": f"{prefix}/fleetwatch/deadletter",
                "status": f"{prefix}/fleetwatch/status/{name}"},
        http={"enabled": False},
    )  # fmt: skip


async def test_two_daemons_sharded_by_site_split_the_fleet_and_alert_once(
    broker, topic_prefix, mqtt_client
) -> None:  # type: ignore[no-untyped-def]
    east = shard(broker.host, broker.port, topic_prefix, "east", ["plant-a", "plant-b"])
    west = shard(broker.host, broker.port, topic_prefix, "west", ["plant-c"])
    alerts = f"{topic_prefix}/fleetwatch/alerts/#"
    async with running_daemon(east) as first, running_daemon(west) as second:
        await mqtt_client.subscribe(alerts)
        devices = {"plant-a": ["a1", "a2"], "plant-b": ["b1"], "plant-c": ["c1", "c2", "c3"]}
        for seq, volts in ((1, 3.7), (2, 3.0)):
            for site, names in devices.items():
                for name in names:
                    payload = orjson.dumps({"ts": NOW + 60 * seq, "seq": seq, "battery_v": volts})
                    await mqtt_client.publish(
                        f"{topic_prefix}/fleet/{site}/{name}/telemetry", payload
                    )
        firing = await firing_alerts(mqtt_client, alerts, {"a1", "a2", "b1", "c1", "c2", "c3"})
        assert len(firing) == len(set(firing)), firing
        assert ("rule.battery_low", "c3") in firing
        assert sorted(info.device_id for info in first.pipeline.registry) == ["a1", "a2", "b1"]
        assert sorted(info.device_id for info in second.pipeline.registry) == ["c1", "c2", "c3"]
        assert first.pipeline.totals.accepted == 6 and second.pipeline.totals.accepted == 6
        assert {a.subject for a in first.pipeline.alerts.active()} <= {"a1", "a2", "b1"}
        assert {a.subject for a in second.pipeline.alerts.active()} <= {"c1", "c2", "c3"}
