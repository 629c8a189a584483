"""Online detectors: pure logic over readings (see :mod:`detectors.base`).

``DETECTORS`` maps the name used in ``[detectors] enabled`` to a factory that builds the
detector from the settings. A new detector adds one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from config.settings import Settings
from detectors.base import Detector
from service.errors import ConfigError

T = TypeVar("T", covariant=True)


class _FromMapping(Protocol[T]):
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> T: ...


def _config(config_class: type[_FromMapping[T]], name: str, settings: Settings) -> T:
    """The ``[detectors.<name>]`` table as the detector's config; a bad one stops start-up."""
    try:
        return config_class.from_mapping(getattr(settings.detectors, name))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"detectors.{name}", str(exc)) from exc


def _rules(settings: Settings) -> Detector:
    from detectors.rules import Rule, RuleEngine

    return RuleEngine([Rule.from_settings(rule) for rule in settings.rules])


def _connectivity(settings: Settings) -> Detector:
    from detectors.connectivity import ConnectivityConfig, ConnectivityDetector

    return ConnectivityDetector(_config(ConnectivityConfig, "connectivity", settings))


def _gateway(settings: Settings) -> Detector:
    from detectors.gateway import GatewayConfig, GatewayDetector

    return GatewayDetector(_config(GatewayConfig, "gateway", settings))


def _drift(settings: Settings) -> Detector:
    from detectors.drift import DriftConfig, DriftDetector

    return DriftDetector(_config(DriftConfig, "drift", settings))


def _firmware(settings: Settings) -> Detector:
    from pathlib import Path

    from config.advisories import load_advisories
    from detectors.firmware import FirmwareConfig, FirmwareDetector

    data = settings.detectors.firmware
    path = data.get("advisories_file")
    advisories = load_advisories(Path(path)) if path else []
    try:
        config = FirmwareConfig.from_mapping(data, advisories)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError("detectors.firmware", str(exc)) from exc
    return FirmwareDetector(config)


def _environment(settings: Settings) -> Detector:
    from detectors.environment import EnvironmentConfig, EnvironmentDetector

    return EnvironmentDetector(_config(EnvironmentConfig, "environment", settings))


def _battery(settings: Settings) -> Detector:
    from detectors.battery import BatteryConfig, BatteryDetector

    return BatteryDetector(_config(BatteryConfig, "battery", settings))


def _power(settings: Settings) -> Detector:
    from detectors.power import PowerConfig, PowerDetector

    return PowerDetector(_config(PowerConfig, "power", settings))


def _anomaly(settings: Settings) -> Detector:
    from detectors.anomaly import AnomalyConfig, AnomalyDetector

    return AnomalyDetector(_config(AnomalyConfig, "anomaly", settings))


DETECTORS: dict[str, Callable[[Settings], Detector]] = {
    "rules": _rules,
    "connectivity": _connectivity,
    "gateway": _gateway,
    "drift": _drift,
    "firmware": _firmware,
    "environment": _environment,
    "battery": _battery,
    "power": _power,
    "anomaly": _anomaly,
}


def build_detectors(settings: Settings) -> list[Detector]:
    """The detectors ``settings.detectors.enabled`` names, in that order."""
    detectors: list[Detector] = []
    for name in settings.detectors.enabled:
        factory = DETECTORS.get(name)
        if factory is None:
            known = ", ".join(sorted(DETECTORS))
            raise ConfigError("detectors.enabled", f"unknown detector {name!r} (known: {known})")
        detectors.append(factory(settings))
    return detectors
