"""FleetWatch's own Prometheus metrics, on a registry that is passed in.

Labels stay bounded at any fleet size: protocol, result, reason, kind, severity, site and
status, and gateway only for the busiest gateways of each site; never a device id. Gauges
derived from the detectors' reports (firmware, battery, gateway, drift) are refreshed each
time the reports are published (``pipeline.report_interval_s``).

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> m = FleetMetrics(CollectorRegistry())
>>> m.readings.labels(protocol="mqtt", result="accepted").inc(3)
>>> b"fleetwatch_readings_total" in generate_latest(m.registry)
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.records import AlertRecord

_BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# battery time-to-empty bounds (days) of fleetwatch_battery_empty_within_devices
_TTE_BOUNDS_DAYS = (0.0, 1.0, 7.0, 14.0, 30.0, 90.0, 180.0, 365.0)
_DRIFT_STATUSES = ("fault", "out_of_tolerance", "drifting", "healthy", "warming_up")


class FleetMetrics:
    """Every metric FleetWatch exports about itself."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.messages = Counter(
            "fleetwatch_messages",
            "Messages received from transports, by protocol and result.",
            ["protocol", "result"],
            registry=registry,
        )
        self.readings = Counter(
            "fleetwatch_readings",
            "Readings by protocol and result (accepted, duplicate, rejected).",
            ["protocol", "result"],
            registry=registry,
        )
        self.decode_errors = Counter(
            "fleetwatch_decode_errors",
            "Messages or records that could not be decoded, by reason.",
            ["reason"],
            registry=registry,
        )
        self.late_readings = Counter(
            "fleetwatch_late_readings",
            "Readings older than the newest one already seen from the same device.",
            registry=registry,
        )
        self.timestamps_corrected = Counter(
            "fleetwatch_timestamps_corrected",
            "Readings whose device time was too far in the future and was corrected.",
            registry=registry,
        )
        self.ignored_fields = Counter(
            "fleetwatch_ignored_fields",
            "Payload fields that were neither metrics nor metadata and were skipped.",
            registry=registry,
        )
        self.deadletters = Counter(
            "fleetwatch_deadletters",
            "Dead-letter messages published, by outcome (published, dropped).",
            ["outcome"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "fleetwatch_queue_depth", "Messages waiting in the intake queue.", registry=registry
        )
        self.queue_capacity = Gauge(
            "fleetwatch_queue_capacity", "Size of the intake queue.", registry=registry
        )
        self.intake_paused = Counter(
            "fleetwatch_intake_pauses",
            "Times intake stopped reading from a transport because the queue was full.",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "fleetwatch_batch_duration_seconds",
            "Time to decode, normalize and run detectors over one micro-batch.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "fleetwatch_batch_messages",
            "Messages per micro-batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=registry,
        )
        self.lag_seconds = Histogram(
            "fleetwatch_processing_lag_seconds",
            "Time from receiving a message to having processed it (oldest message per batch).",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.devices_known = Gauge(
            "fleetwatch_devices_known", "Devices FleetWatch has heard from.", registry=registry
        )
        self.devices_active = Gauge(
            "fleetwatch_devices_active",
            "Devices heard from within the active window.",
            registry=registry,
        )
        self.alerts_active = Gauge(
            "fleetwatch_alerts_active",
            "Open alerts by kind, severity and site.",
            ["kind", "severity", "site"],
            registry=registry,
        )
        self.alerts_fired = Counter(
            "fleetwatch_alerts_fired", "Alerts opened, by kind.", ["kind"], registry=registry
        )
        self.alerts_resolved = Counter(
            "fleetwatch_alerts_resolved", "Alerts resolved, by kind.", ["kind"], registry=registry
        )
        self.alert_flaps = Counter(
            "fleetwatch_alert_flaps_suppressed",
            "Alerts that fired again within the resolve hold and stayed open.",
            registry=registry,
        )
        self.detector_errors = Counter(
            "fleetwatch_detector_errors",
            "Exceptions raised by a detector (a bug; the batch goes on without it).",
            ["detector"],
            registry=registry,
        )
        self.detector_seconds = Counter(
            "fleetwatch_detector_seconds",
            "Time spent in each detector's process and tick.",
            ["detector"],
            registry=registry,
        )
        self.sink_queue_depth = Gauge(
            "fleetwatch_sink_queue_depth",
            "Items waiting in an outbound sink's queue.",
            ["sink"],
            registry=registry,
        )
        self.sink_published = Counter(
            "fleetwatch_sink_published", "Items a sink delivered.", ["sink"], registry=registry
        )
        self.sink_overflow = Counter(
            "fleetwatch_sink_overflow",
            "Items a sink could not queue (see the sink's overflow policy).",
            ["sink"],
            registry=registry,
        )
        self.checkpoints = Counter(
            "fleetwatch_checkpoints",
            "Checkpoints written to the state store.",
            registry=registry,
        )
        self.checkpoint_seconds = Gauge(
            "fleetwatch_checkpoint_duration_seconds",
            "Time the last checkpoint took.",
            registry=registry,
        )
        self.checkpoint_bytes = Gauge(
            "fleetwatch_checkpoint_size_bytes",
            "Size of the last checkpoint.",
            registry=registry,
        )
        self.journal_length = Gauge(
            "fleetwatch_journal_messages",
            "Messages journaled since the last checkpoint.",
            registry=registry,
        )
        self.state_errors = Counter(
            "fleetwatch_state_errors",
            "Failures writing the state store (journal or checkpoint).",
            ["operation"],
            registry=registry,
        )
        self.firmware_devices = Gauge(
            "fleetwatch_firmware_devices",
            "Devices by model and firmware version (the most common versions per model; the "
            'rest as version="other").',
            ["model", "version"],
            registry=registry,
        )
        self.firmware_vulnerable = Gauge(
            "fleetwatch_firmware_vulnerable_devices",
            "Devices running a version an advisory lists.",
            registry=registry,
        )
        self.campaign_progress = Gauge(
            "fleetwatch_firmware_campaign_progress_ratio",
            "Share of a campaign's devices on its target version.",
            ["campaign"],
            registry=registry,
        )
        self.mqtt_connected = Gauge(
            "fleetwatch_mqtt_connected", "1 while connected to the MQTT broker.", registry=registry
        )
        self.mqtt_reconnects = Counter(
            "fleetwatch_mqtt_reconnects", "Connections made to the MQTT broker after the first.",
            registry=registry,
        )  # fmt: skip
        self.coap_requests = Counter(
            "fleetwatch_coap_requests",
            "CoAP requests answered, by method and response code (2.04, 4.00, 5.03 ...).",
            ["method", "code"],
            registry=registry,
        )
        self.lwm2m_events = Counter(
            "fleetwatch_lwm2m_events",
            "LwM2M events: registered, updated, replaced, deregistered, expired, restored, "
            "notification, notification_rejected, send.",
            ["event"],
            registry=registry,
        )
        self.lwm2m_registrations = Gauge(
            "fleetwatch_lwm2m_registrations", "LwM2M clients registered now.", registry=registry
        )
        self.alertmanager_failures = Counter(
            "fleetwatch_alertmanager_send_failures",
            "Pushes of alerts to an Alertmanager that failed (refused, error status, timeout).",
            ["alertmanager"],
            registry=registry,
        )
        self.alertmanager_alerts_sent = Counter(
            "fleetwatch_alertmanager_alerts_sent",
            "Alerts an Alertmanager accepted, by state (firing, resolved).",
            ["state"],
            registry=registry,
        )
        self.battery_empty_within = Gauge(
            "fleetwatch_battery_empty_within_devices",
            "Devices whose battery is forecast empty within this many days (cumulative, up to "
            "the battery detector's warning horizon; 0 is empty now).",
            ["days"],
            registry=registry,
        )
        self.battery_replacements_due = Gauge(
            "fleetwatch_battery_replacements_due_devices",
            "Devices in the battery replacement plan, by site.",
            ["site"],
            registry=registry,
        )
        self.gateway_load = Gauge(
            "fleetwatch_gateway_load_ratio",
            "Devices a gateway carries over its capacity (the busiest gateways of each site).",
            ["site", "gateway"],
            registry=registry,
        )
        self.gateways_overloaded = Gauge(
            "fleetwatch_gateways_overloaded",
            "Gateways judged overloaded, by site.",
            ["site"],
            registry=registry,
        )
        self.gateway_imbalance = Gauge(
            "fleetwatch_gateway_imbalance_cv",
            "Coefficient of variation of the device counts of a site's gateways.",
            ["site"],
            registry=registry,
        )
        self.drift_sensors = Gauge(
            "fleetwatch_drift_sensors",
            "Sensors in the drift detector's recalibration report, by status (fault, "
            "out_of_tolerance, drifting, healthy, warming_up).",
            ["status"],
            registry=registry,
        )

    def set_reports(self, reports: Mapping[str, Mapping[str, Any]]) -> None:
        """Update every report-based gauge from the detectors' reports (those present)."""
        if "firmware" in reports:
            self.set_firmware(reports["firmware"])
        if "battery" in reports:
            self.set_battery(reports["battery"])
        if "gateway" in reports:
            self.set_gateways(reports["gateway"])
        if "drift" in reports:
            self.set_drift(reports["drift"])

    def set_battery(self, report: Mapping[str, Any]) -> None:
        """Battery gauges from the battery detector's replacement plan.

        >>> from prometheus_client import CollectorRegistry
        >>> m = FleetMetrics(CollectorRegistry())
        >>> m.set_battery({"horizon_days": 30.0, "groups": [
        ...     {"site": "a", "devices": [{"tte_days": 0.0}, {"tte_days": 5.2}]},
        ...     {"site": None, "devices": [{"tte_days": 21.0}]}]})
        >>> [m.battery_empty_within.labels(days=d)._value.get() for d in ("0", "7", "30")]
        [1.0, 2.0, 3.0]
        >>> m.battery_replacements_due.labels(site="a")._value.get()
        2.0
        """
        horizon = float(report.get("horizon_days") or _TTE_BOUNDS_DAYS[-1])
        days: list[float] = []
        per_site: dict[str, int] = {}
        for group in report.get("groups", []):
            site = group.get("site") or ""
            for entry in group.get("devices", []):
                days.append(float(entry.get("tte_days", 0.0)))
                per_site[site] = per_site.get(site, 0) + 1
        bounds = [b for b in _TTE_BOUNDS_DAYS if b < horizon] + [horizon]
        self.battery_empty_within.clear()
        for bound in bounds:
            self.battery_empty_within.labels(days=f"{bound:g}").set(
                sum(1 for d in days if d <= bound)
            )
        self.battery_replacements_due.clear()
        for site, count in per_site.items():
            self.battery_replacements_due.labels(site=site).set(count)

    def set_gateways(self, report: Mapping[str, Any], gateways_per_site: int = 20) -> None:
        """Gateway gauges from the gateway detector's report; per site only the busiest
        ``gateways_per_site`` gateways get a load series, so cardinality stays bounded.

        >>> from prometheus_client import CollectorRegistry
        >>> m = FleetMetrics(CollectorRegistry())
        >>> m.set_gateways({"sites": {"a": {"cv": 0.4, "gateways": {
        ...     "g1": {"devices": 200, "capacity": 250, "overloaded": False},
        ...     "g2": {"devices": 300, "capacity": 250, "overloaded": True}}}}})
        >>> m.gateway_load.labels(site="a", gateway="g2")._value.get()
        1.2
        >>> m.gateways_overloaded.labels(site="a")._value.get()
        1.0
        """
        self.gateway_load.clear()
        self.gateways_overloaded.clear()
        self.gateway_imbalance.clear()
        for site, row in report.get("sites", {}).items():
            gateways = row.get("gateways", {})
            loads = {
                name: float(g.get("devices", 0)) / float(g["capacity"])
                for name, g in gateways.items()
                if g.get("capacity")
            }
            ranked = sorted(loads.items(), key=lambda kv: (-kv[1], kv[0]))
            for name, load in ranked[:gateways_per_site]:
                self.gateway_load.labels(site=site, gateway=name).set(round(load, 4))
            self.gateways_overloaded.labels(site=site).set(
                sum(1 for g in gateways.values() if g.get("overloaded"))
            )
            self.gateway_imbalance.labels(site=site).set(float(row.get("cv", 0.0)))

    def set_drift(self, report: Mapping[str, Any]) -> None:
        """Drift gauges from the drift detector's recalibration schedule.

        >>> from prometheus_client import CollectorRegistry
        >>> m = FleetMetrics(CollectorRegistry())
        >>> m.set_drift({"healthy": 7, "warming_up": 2,
        ...     "sensors": [{"status": "drifting"}, {"status": "fault"}]})
        >>> m.drift_sensors.labels(status="drifting")._value.get()
        1.0
        >>> m.drift_sensors.labels(status="out_of_tolerance")._value.get()
        0.0
        """
        counts = dict.fromkeys(_DRIFT_STATUSES, 0)
        for entry in report.get("sensors", []):
            status = str(entry.get("status"))
            if status in counts:
                counts[status] += 1
        counts["healthy"] = int(report.get("healthy", 0))
        counts["warming_up"] = int(report.get("warming_up", 0))
        for status, count in counts.items():
            self.drift_sensors.labels(status=status).set(count)

    def set_firmware(self, report: Mapping[str, Any], versions_per_model: int = 10) -> None:
        """Firmware gauges from the firmware detector's report, with bounded labels."""
        self.firmware_devices.clear()
        for model, versions in report.get("inventory", {}).items():
            ranked = sorted(versions.items(), key=lambda kv: (-kv[1], kv[0]))
            for version, count in ranked[:versions_per_model]:
                self.firmware_devices.labels(model=model, version=version).set(count)
            rest = sum(count for _, count in ranked[versions_per_model:])
            if rest:
                self.firmware_devices.labels(model=model, version="other").set(rest)
        self.firmware_vulnerable.set(report.get("vulnerable_devices", 0))
        self.campaign_progress.clear()
        for campaign in report.get("campaigns", []):
            if campaign.get("progress") is not None:
                self.campaign_progress.labels(campaign=campaign["name"]).set(campaign["progress"])

    def set_active_alerts(self, alerts: Iterable[AlertRecord]) -> None:
        """Recompute the active-alerts gauge from the full open set."""
        counts: dict[tuple[str, str, str], int] = {}
        for alert in alerts:
            key = (alert.kind, alert.severity.label, alert.site or "")
            counts[key] = counts.get(key, 0) + 1
        self.alerts_active.clear()
        for (kind, severity, site), count in counts.items():
            self.alerts_active.labels(kind=kind, severity=severity, site=site).set(count)
