"""The advisory file: loading it, and noticing when it changes.

>>> from config.settings import EXAMPLE_CONFIG
>>> [a.id for a in load_advisories(EXAMPLE_CONFIG.with_name("advisories.toml"))]
['FW-2026-001', 'FW-2026-002']
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

from detectors.firmware import Advisory
from service.errors import ConfigError

log = logging.getLogger(__name__)


def load_advisories(path: Path) -> list[Advisory]:
    """Read ``[[advisory]]`` entries; a bad file raises :class:`ConfigError` naming it."""
    try:
        data = tomllib.loads(path.read_text())
        return [Advisory.from_mapping(entry) for entry in data.get("advisory", [])]
    except (OSError, tomllib.TOMLDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError("detectors.firmware.advisories_file", f"{path}: {exc}") from exc


class AdvisoryWatcher:
    """Reloads the advisory file when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = self._stat()

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def changed(self) -> list[Advisory] | None:
        """The new advisories if the file changed since the last call, else ``None``.

        A file that no longer parses is reported in the log and the old advisories stay.
        """
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return None
        self._mtime = mtime
        try:
            advisories = load_advisories(self.path)
        except ConfigError as exc:
            log.error("advisories not reloaded: %s", exc)
            return None
        log.info("reloaded %d advisories from %s", len(advisories), self.path)
        return advisories
