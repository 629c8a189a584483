"""A live terminal view of alerts, fed from FleetWatch's own alert topics.

The demo subscribes to ``fleetwatch/alerts/#`` like any alerting system would, and shows
what arrives: a table of the active alerts and a log of changes (rich's ``Live`` view on a
terminal, plain lines otherwise).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One alert change as it arrived on MQTT."""

    state: str
    severity: str
    kind: str
    subject: str
    site: str | None
    summary: str
    at: str

    def line(self) -> str:
        return (
            f"{self.at} {self.state.upper():<8} {self.severity:<8} {self.kind:<24} "
            f"{self.subject:<14} {self.summary}"
        )


class AlertConsole:
    """Keeps the active alerts and recent changes seen on the alert topics."""

    def __init__(
        self, *, history: int = 12, on_event: Callable[[AlertEvent], None] | None = None
    ) -> None:
        self.active: dict[str, dict[str, object]] = {}
        self.events: collections.deque[AlertEvent] = collections.deque(maxlen=history)
        self.fired = 0
        self.resolved = 0
        self._on_event = on_event
        self.started = time.monotonic()

    def handle(self, topic: str, payload: bytes) -> AlertEvent | None:
        """Take one message from an alert topic; return the change it shows, if any."""
        if not payload:
            self.active.pop(topic, None)  # the retained alert was cleared
            return None
        try:
            alert = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(alert, dict):
            return None
        state = str(alert.get("state", "?"))
        if state == "firing":
            if topic not in self.active:
                self.fired += 1
            self.active[topic] = alert
        else:
            self.active.pop(topic, None)
            self.resolved += 1
        at = str(alert.get("resolved_at") or alert.get("updated_at") or "")
        event = AlertEvent(
            state=state,
            severity=str(alert.get("severity", "?")),
            kind=str(alert.get("kind", "?")),
            subject=str(alert.get("subject", "?")),
            site=alert.get("site") if isinstance(alert.get("site"), str) else None,
            summary=str(alert.get("summary", "")),
            at=at[11:19] if len(at) >= 19 else at,
        )
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)
        return event

    def render(self, header: str = "") -> Group:
        table = Table(
            expand=True, title=f"Active alerts ({len(self.active)})", title_justify="left"
        )
        for column in ("severity", "kind", "subject", "site", "since", "summary"):
            table.add_column(column, overflow="ellipsis", no_wrap=column != "summary")
        rows = sorted(
            self.active.values(),
            key=lambda a: (
                {"critical": 0, "warning": 1}.get(str(a.get("severity")), 2),
                str(a.get("kind")),
            ),
        )
        for alert in rows[:20]:
            severity = str(alert.get("severity", ""))
            started = str(alert.get("started_at", ""))
            table.add_row(
                Text(severity, style=_SEVERITY_STYLE.get(severity, "")),
                str(alert.get("kind", "")),
                str(alert.get("subject", "")),
                str(alert.get("site") or ""),
                started[11:19],
                str(alert.get("summary", "")),
            )
        log = Text()
        for event in self.events:
            style = (
                "green" if event.state == "resolved" else _SEVERITY_STYLE.get(event.severity, "")
            )
            log.append(event.line() + "\n", style=style)
        return Group(
            Text(header, style="bold"),
            table,
            Panel(log, title=f"changes (fired {self.fired}, resolved {self.resolved})"),
        )


def plain_printer(console: Console) -> Callable[[AlertEvent], None]:
    """Print each change as one line (for logs and terminals without live views)."""

    def show(event: AlertEvent) -> None:
        style = "green" if event.state == "resolved" else _SEVERITY_STYLE.get(event.severity, "")
        console.print(event.line(), style=style, highlight=False, soft_wrap=True)

    return show
