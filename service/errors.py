"""FleetWatch's errors: one root, a few kinds, each carrying its context.

- :class:`ConfigError` stops start-up; its message names the setting.
- :class:`DecodeError` is per message: it is counted by ``reason``, dead-lettered, logged
  at WARNING, and the daemon goes on.
- :class:`StateError` stops start-up: the state file cannot be read.
- Anything else raised from our own code is a bug and logged at ERROR.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class FleetWatchError(Exception):
    """Root of every error FleetWatch raises on purpose."""


class ConfigError(FleetWatchError):
    """A setting is missing or invalid; ``setting`` names it (dotted path)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class DecodeError(FleetWatchError):
    """A message could not be turned into readings.

    ``reason`` is a short, stable, bounded label used as the metric label and in the
    dead-letter message (``malformed_json``, ``not_an_object``, ``too_large`` ...);
    ``detail`` says what exactly was wrong.

    >>> err = DecodeError("malformed_json", "unexpected end of data", topic="fleet/a/d1/telemetry")
    >>> str(err)
    'malformed_json: unexpected end of data (topic fleet/a/d1/telemetry)'
    """

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        topic: str | None = None,
        device_id: str | None = None,
        content_type: str | None = None,
    ) -> None:
        where = f" (topic {topic})" if topic else ""
        super().__init__(f"{reason}: {detail}{where}")
        self.reason = reason
        self.detail = detail
        self.topic = topic
        self.device_id = device_id
        self.content_type = content_type


class BrokerUnavailableError(FleetWatchError):
    """No MQTT broker could be started or reached."""


class StateError(FleetWatchError):
    """Saved state cannot be used (newer format, corrupt, not a FleetWatch file)."""


def check_state_version(component: str, state: Mapping[str, Any], supported: int) -> None:
    """Refuse saved state of ``component`` written in a newer format than ``supported``.

    >>> check_state_version("alerts", {"version": 1}, 1)
    >>> check_state_version("alerts", {"version": 3}, 1)
    Traceback (most recent call last):
    ...
    service.errors.StateError: saved state of alerts has format 3; this FleetWatch reads up to 1 (upgrade FleetWatch, or move the state file away to start fresh)
    """
    version = state.get("version", 1)
    if not isinstance(version, int) or version > supported:
        raise StateError(
            f"saved state of {component} has format {version}; this FleetWatch reads up to "
            f"{supported} (upgrade FleetWatch, or move the state file away to start fresh)"
        )
