"""Online detectors: pure logic over readings (see :mod:`detectors.base`).

``DETECTORS`` maps the name used in ``[detectors] enabled`` to a factory that builds the
detector from the settings. A new detector adds one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from config.settings import Settings
from detectors.base import Detector
from service.errors import ConfigError


def _rules(settings: Settings) -> Detector:
    from detectors.rules import Rule, RuleEngine

    return RuleEngine([Rule.from_settings(rule) for rule in settings.rules])


def _connectivity(settings: Settings) -> Detector:
    from detectors.connectivity import ConnectivityConfig, ConnectivityDetector

    try:
        config = ConnectivityConfig.from_mapping(settings.detectors.connectivity)
    except (TypeError, ValueError) as exc:
        raise ConfigError("detectors.connectivity", str(exc)) from exc
    return ConnectivityDetector(config)


def _gateway(settings: Settings) -> Detector:
    from detectors.gateway import GatewayConfig, GatewayDetector

    try:
        config = GatewayConfig.from_mapping(settings.detectors.gateway)
    except (TypeError, ValueError) as exc:
        raise ConfigError("detectors.gateway", str(exc)) from exc
    return GatewayDetector(config)


def _drift(settings: Settings) -> Detector:
    from detectors.drift import DriftConfig, DriftDetector

    try:
        config = DriftConfig.from_mapping(settings.detectors.drift)
    except (TypeError, ValueError) as exc:
        raise ConfigError("detectors.drift", str(exc)) from exc
    return DriftDetector(config)


def _firmware(settings: Settings) -> Detector:
    from pathlib import Path

    from detectors.firmware import FirmwareConfig, FirmwareDetector
    from service.advisories import load_advisories

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

    try:
        config = EnvironmentConfig.from_mapping(settings.detectors.environment)
    except (TypeError, ValueError) as exc:
        raise ConfigError("detectors.environment", str(exc)) from exc
    return EnvironmentDetector(config)


def _battery(settings: Settings) -> Detector:
    from detectors.battery import BatteryConfig, BatteryDetector

    try:
        config = BatteryConfig.from_mapping(settings.detectors.battery)
    except (TypeError, ValueError) as exc:
        raise ConfigError("detectors.battery", str(exc)) from exc
    return BatteryDetector(config)


def _power(settings: Settings) -> Detector:
    from detectors.power import PowerConfig, PowerDetector

    try:
        config = PowerConfig.from_mapping(settings.detectors.power)
    except (TypeError, ValueError) as exc:
        raise ConfigError("detectors.power", str(exc)) from exc
    return PowerDetector(config)


def _anomaly(settings: Settings) -> Detector:
    from detectors.anomaly import AnomalyConfig, AnomalyDetector

    try:
        config = AnomalyConfig.from_mapping(settings.detectors.anomaly)
    except (TypeError, ValueError) as exc:
        raise ConfigError("detectors.anomaly", str(exc)) from exc
    return AnomalyDetector(config)


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
