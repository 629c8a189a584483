"""FleetWatch's typed settings: one TOML file plus environment overrides.

Settings are validated once, at start-up. A bad value raises
:class:`service.errors.ConfigError` naming the setting, e.g. ``mqtt.port``.

Environment variables override the file: ``FLEETWATCH_MQTT__HOST=broker`` sets
``mqtt.host``; ``__`` separates levels (pydantic-settings' ``env_prefix`` and
``env_nested_delimiter``). Lists and tables are JSON (``'["a", "b"]'``); other values are
read as TOML literals when they parse (``FLEETWATCH_HTTP__PORT=9200`` is an integer,
``FLEETWATCH_DETECTORS__DRIFT__TOLERANCE=0.05`` a float) and as plain strings otherwise.

>>> s = load_settings(None, environ={"FLEETWATCH_MQTT__PORT": "1884"})
>>> s.mqtt.port, s.pipeline.queue_size
(1884, 10000)
>>> load_settings(None, environ={"FLEETWATCH_MQTT__PORT": "99999"})
Traceback (most recent call last):
...
service.errors.ConfigError: mqtt.port: Input should be less than or equal to 65535
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import EnvSettingsSource

from service.errors import ConfigError

ENV_PREFIX = "FLEETWATCH_"
EXAMPLE_CONFIG = Path(__file__).with_name("fleetwatch.example.toml")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsSettings(_Section):
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True


class Subscription(_Section):
    filter: str
    qos: Literal[0, 1] = 1


class MqttSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = "fleetwatch"
    username: str | None = None
    password: str | None = Field(None, repr=False)
    tls: TlsSettings = TlsSettings()
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    clean_start: bool = False
    session_expiry_s: int = Field(86_400, ge=0)
    keepalive_s: int = Field(60, ge=5, le=65_535)
    receive_maximum: int = Field(10_000, ge=1, le=65_535)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    subscriptions: tuple[Subscription, ...] = (
        Subscription(filter="fleet/+/+/+"),
        Subscription(filter="devices/+/+"),
    )
    shared_group: str | None = None
    close_timeout_s: float = Field(5.0, ge=0)

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttSettings:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self


class TopicSettings(_Section):
    templates: tuple[str, ...] = (
        "fleet/{site}/{device_id}/{kind}",
        "devices/{device_id}/{kind}",
    )
    alerts_prefix: str = "fleetwatch/alerts"
    deadletter: str = "fleetwatch/deadletter"
    status: str = "fleetwatch/status"
    reports_prefix: str = "fleetwatch/reports"

    @field_validator("templates")
    @classmethod
    def _need_device(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one topic template is needed")
        for template in value:
            if "{device_id}" not in template:
                raise ValueError(f"template {template!r} has no {{device_id}} level")
        return value


class MetricAlias(_Section):
    metric: str
    scale: float = 1.0
    offset: float = 0.0


def _known_content_type(value: str) -> str:
    """``value`` if a payload codec reads it (checked at start-up, not per message)."""
    from protocols.codecs import CODECS

    base = value.split(";", 1)[0].strip().lower()
    known = sorted(ct for codec in CODECS.values() for ct in codec().content_types)
    if base not in known:
        raise ValueError(f"unknown content type {value!r} (known: {', '.join(known)})")
    return value


class ContentTypeRule(_Section):
    """The payload format of MQTT messages on topics matching ``filter`` (``+`` and ``#``
    wildcards) that carry no MQTT 5 content type."""

    filter: str
    content_type: str

    @field_validator("filter")
    @classmethod
    def _valid_filter(cls, value: str) -> str:
        levels = value.split("/")
        for index, level in enumerate(levels):
            if "#" in level and (level != "#" or index != len(levels) - 1):
                raise ValueError(f"filter {value!r}: '#' must be a whole, last level")
            if "+" in level and level != "+":
                raise ValueError(f"filter {value!r}: '+' must be a whole level")
        return value

    @field_validator("content_type")
    @classmethod
    def _known(cls, value: str) -> str:
        return _known_content_type(value)


class IngestSettings(_Section):
    max_payload_bytes: int = Field(256 * 1024, ge=64)
    max_batch_records: int = Field(10_000, ge=1)
    max_metrics_per_reading: int = Field(256, ge=1)
    max_future_skew_s: float = Field(300.0, ge=0)
    oldest_valid_ts: float = Field(946_684_800.0, description="2000-01-01T00:00:00Z")
    dedupe_capacity: int = Field(500_000, ge=0)
    allowed_devices: tuple[str, ...] = ()
    allowed_sites: tuple[str, ...] = ()
    aliases: dict[str, str | MetricAlias] = Field(default_factory=dict)
    content_types: tuple[ContentTypeRule, ...] = ()
    default_content_type: str = "application/json"

    @field_validator("default_content_type")
    @classmethod
    def _known_default(cls, value: str) -> str:
        return _known_content_type(value)


class PipelineSettings(_Section):
    queue_size: int = Field(10_000, ge=1)
    max_batch: int = Field(2_000, ge=1)
    tick_interval_s: float = Field(5.0, gt=0)
    shutdown_timeout_s: float = Field(10.0, gt=0)
    active_window_s: float = Field(900.0, gt=0)
    report_interval_s: float = Field(60.0, gt=0)
    # worker processes sharded by site; 0: one per core (see service/runtime/workers.py)
    workers: int = Field(0, ge=0, le=64)


class AlertSettings(_Section):
    fire_hold_s: float = Field(0.0, ge=0)
    resolve_hold_s: float = Field(0.0, ge=0)
    sink_queue_size: int = Field(10_000, ge=1)
    recent_capacity: int = Field(1_000, ge=0)


class HttpSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)
    username: str | None = None
    password: str | None = Field(None, repr=False)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @model_validator(mode="after")
    def _auth_pairs(self) -> HttpSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be set together")
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file needs tls_cert_file")
        return self


class RuleSettings(_Section):
    name: str
    metric: str
    kind: Literal["above", "below", "outside", "rate"]
    threshold: float | None = None
    min: float | None = None
    max: float | None = None
    max_rate_per_s: float | None = None
    for_s: float = Field(0.0, ge=0)
    hysteresis: float = Field(0.0, ge=0)
    severity: Literal["info", "warning", "critical"] = "warning"
    models: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    summary: str | None = None
    action: str | None = None

    @model_validator(mode="after")
    def _parameters_for_kind(self) -> RuleSettings:
        needed = {
            "above": ("threshold",),
            "below": ("threshold",),
            "outside": ("min", "max"),
            "rate": ("max_rate_per_s",),
        }[self.kind]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"rule {self.name!r} of kind {self.kind!r} needs {', '.join(missing)}")
        if (
            self.kind == "outside"
            and self.min is not None
            and self.max is not None
            and (self.min >= self.max)
        ):
            raise ValueError(f"rule {self.name!r}: min must be below max")
        return self


class DetectorSettings(_Section):
    enabled: tuple[str, ...] = (
        "rules", "connectivity", "gateway", "drift", "firmware", "environment", "battery",
        "power",
    )  # fmt: skip
    connectivity: dict[str, float | int] = Field(default_factory=dict)
    gateway: dict[str, float | int | dict[str, int] | dict[str, str]] = Field(default_factory=dict)
    drift: dict[str, Any] = Field(default_factory=dict)
    firmware: dict[str, Any] = Field(default_factory=dict)
    environment: dict[str, float | int] = Field(default_factory=dict)
    battery: dict[str, Any] = Field(default_factory=dict)
    power: dict[str, Any] = Field(default_factory=dict)
    anomaly: dict[str, Any] = Field(default_factory=dict)


class SiteSettings(_Section):
    """A facility on the fleet view: display name, region, map position."""

    name: str | None = None
    region: str | None = None
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)


class FleetViewSettings(_Section):
    enabled: bool = True
    title: str = "FleetWatch"
    tile_url: str | None = None  # a {z}/{x}/{y} tile server; none: a plain background
    sites: dict[str, SiteSettings] = Field(default_factory=dict)


class StateSettings(_Section):
    enabled: bool = True
    path: Path = Path("fleetwatch-state.db")
    checkpoint_interval_s: float = Field(60.0, gt=0)
    journal: bool = True
    synchronous: Literal["normal", "full"] = "normal"


class AlertmanagerSettings(_Section):
    """Where and how alerts are pushed to Prometheus Alertmanager (``POST /api/v2/alerts``)."""

    enabled: bool = False
    urls: tuple[str, ...] = ("http://127.0.0.1:9093",)
    resend_interval_s: float = Field(60.0, gt=0)
    timeout_s: float = Field(5.0, gt=0)
    queue_size: int = Field(10_000, ge=1)
    max_batch: int = Field(500, ge=1)
    retry_min_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)
    labels: dict[str, str] = Field(default_factory=dict)
    generator_url: str | None = None

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one Alertmanager URL is needed")
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return value

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not a valid Alertmanager label name")
        return value

    @model_validator(mode="after")
    def _retry_order(self) -> AlertmanagerSettings:
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must be at least retry_min_s")
        return self


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class CoapSettings(_Section):
    """The CoAP server (``protocols/coap.py``): UDP, one resource path template."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(5683, ge=0, le=65535)  # 0: any free port (tests)
    path: str = "t/{device_id}"
    max_payload_bytes: int = Field(65_536, ge=64)
    retry_after_s: int = Field(5, ge=0, le=3600)  # Max-Age of a 5.03 under backpressure

    @field_validator("path")
    @classmethod
    def _path_template(cls, value: str) -> str:
        value = value.strip("/")
        if "{device_id}" not in value.split("/"):
            raise ValueError(f"path template {value!r} has no {{device_id}} segment")
        return value


class Lwm2mSettings(_Section):
    """The LwM2M server (``protocols/lwm2m``), served on the CoAP server's UDP port."""

    enabled: bool = False
    observe: tuple[int, ...] = (3, 4, 5, 6, 3301, 3303, 3304, 3315, 3316, 3317, 3323, 3328)
    write_attributes: bool = True  # Write-Attributes pmin/pmax before observing
    pmin_s: int = Field(10, ge=0)
    pmax_s: int = Field(300, ge=1)
    accept: Literal[11542, 112, 110, 11543] = 11542  # Accept option of requests to devices
    lifetime_grace_s: float = Field(30.0, ge=0)
    default_lifetime_s: int = Field(86_400, ge=1)  # a registration without lt
    request_timeout_s: float = Field(60.0, gt=0)
    sweep_interval_s: float = Field(1.0, gt=0)
    retry_after_s: int = Field(5, ge=0, le=3600)  # Max-Age of a 5.03
    max_records: int = Field(10_000, ge=1)

    @field_validator("observe")
    @classmethod
    def _known_objects(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        from protocols.lwm2m.objects import OBSERVED_OBJECTS

        unknown = sorted(set(value) - set(OBSERVED_OBJECTS))
        if unknown:
            known = ", ".join(map(str, OBSERVED_OBJECTS))
            raise ValueError(f"objects {unknown} are not in the object model (known: {known})")
        return value

    @model_validator(mode="after")
    def _period_order(self) -> Lwm2mSettings:
        if self.pmax_s < self.pmin_s:
            raise ValueError("pmax_s must be at least pmin_s")
        return self


class Settings(_Section):
    """Every setting; :func:`load_settings` reads them from a file under the environment."""

    mqtt: MqttSettings = MqttSettings()
    topics: TopicSettings = TopicSettings()
    ingest: IngestSettings = IngestSettings()
    pipeline: PipelineSettings = PipelineSettings()
    alerts: AlertSettings = AlertSettings()
    http: HttpSettings = HttpSettings()
    alertmanager: AlertmanagerSettings = AlertmanagerSettings()
    state: StateSettings = StateSettings()
    fleetview: FleetViewSettings = FleetViewSettings()
    logging: LoggingSettings = LoggingSettings()
    detectors: DetectorSettings = DetectorSettings()
    rules: tuple[RuleSettings, ...] = ()
    coap: CoapSettings = CoapSettings()
    lwm2m: Lwm2mSettings = Lwm2mSettings()

    @model_validator(mode="after")
    def _lwm2m_needs_coap(self) -> Settings:
        if self.lwm2m.enabled and not self.coap.enabled:
            raise ValueError("lwm2m.enabled needs coap.enabled: LwM2M is served on the CoAP port")
        return self

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, value: tuple[RuleSettings, ...]) -> tuple[RuleSettings, ...]:
        seen: set[str] = set()
        for rule in value:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return value


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _literals(node: dict[str, Any]) -> dict[str, Any]:
    for key, value in node.items():
        if isinstance(value, dict):
            _literals(value)
        elif isinstance(value, str):
            node[key] = _env_value(value)
    return node


class EnvironmentSource(EnvSettingsSource):
    """``FLEETWATCH_A__B=value`` variables of ``environ`` as nested settings data.

    pydantic-settings finds the variables (prefix, ``__`` nesting, any case) and decodes
    lists and tables as JSON; plain values are then read as TOML literals, so untyped
    detector tables get numbers and booleans, not strings.

    >>> EnvironmentSource(Settings, {"FLEETWATCH_MQTT__PORT": "1884", "HOME": "/root"})()
    {'mqtt': {'port': 1884}}
    """

    def __init__(self, settings_cls: type[BaseModel], environ: Mapping[str, str]) -> None:
        super().__init__(
            settings_cls,  # type: ignore[arg-type]  # any model: its fields are what is read
            case_sensitive=False, env_prefix=ENV_PREFIX, env_nested_delimiter="__",
        )  # fmt: skip
        self.env_vars = {name.lower(): value for name, value in environ.items()}

    def __call__(self) -> dict[str, Any]:
        return _literals(super().__call__())


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    """Validate a mapping (as read from TOML) into :class:`Settings`."""
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(location, message) from exc


# files a settings file names, resolved against the settings file's own folder when relative
_FILES_BESIDE = (("detectors", "firmware", "advisories_file"),)


def _resolve_beside(data: dict[str, Any], folder: Path) -> None:
    for section, table, key in _FILES_BESIDE:
        holder = data.get(section, {}).get(table)
        if isinstance(holder, dict) and isinstance(holder.get(key), str):
            path = Path(holder[key])
            if not path.is_absolute():
                holder[key] = str(folder / path)


def load_settings(path: Path | str | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file at ``path`` (defaults only when ``None``), apply the environment."""
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError("--config", f"file {file} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{file} is not valid TOML: {exc}") from exc
        _resolve_beside(data, file.parent)
    try:
        overrides = EnvironmentSource(Settings, os.environ if environ is None else environ)()
    except ValueError as exc:  # a list or table that is not JSON
        raise ConfigError("environment", str(exc)) from exc
    return settings_from_mapping(_merge(data, overrides))
