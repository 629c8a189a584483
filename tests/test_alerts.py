"""The alert lifecycle: one alert per (kind, subject), escalation, holds, resolve."""

from __future__ import annotations

from service.alerts.lifecycle import AlertManager, Transition
from service.records import AlertState, Severity, Signal


def sig(
    firing: bool, at: float, severity: Severity = Severity.WARNING, subject: str = "d1"
) -> Signal:
    return Signal("rule.hot", subject, firing, at=at, severity=severity, summary="hot",
                  evidence={"value": at}, site="plant-a")  # fmt: skip


def test_one_alert_per_kind_and_subject() -> None:
    am = AlertManager()
    first = am.apply([sig(True, 1.0)])
    repeat = am.apply([sig(True, 2.0), sig(True, 3.0)])
    other = am.apply([sig(True, 4.0, subject="d2")])
    assert [c.transition for c in first] == [Transition.OPENED]
    assert repeat == []
    assert [c.record.subject for c in other] == ["d2"]
    assert len(am) == 2


def test_escalation_updates_the_open_alert_but_not_downgrade() -> None:
    am = AlertManager()
    opened = am.apply([sig(True, 1.0)])[0].record
    escalated = am.apply([sig(True, 2.0, Severity.CRITICAL)])
    assert [c.transition for c in escalated] == [Transition.ESCALATED]
    assert escalated[0].record.id == opened.id
    assert escalated[0].record.severity is Severity.CRITICAL
    assert am.apply([sig(True, 3.0, Severity.INFO)]) == []
    assert am.get("rule.hot", "d1").severity is Severity.CRITICAL  # type: ignore[union-attr]


def test_resolve_without_hold() -> None:
    am = AlertManager()
    opened = am.apply([sig(True, 1.0)])[0].record
    resolved = am.apply([sig(False, 5.0)])
    assert [c.transition for c in resolved] == [Transition.RESOLVED]
    record = resolved[0].record
    assert record.id == opened.id and record.state is AlertState.RESOLVED
    assert record.resolved_at == 5.0 and record.started_at == 1.0
    assert len(am) == 0 and list(am.recent) == [record]


def test_clear_without_open_alert_is_ignored() -> None:
    assert AlertManager().apply([sig(False, 1.0)]) == []


def test_fire_hold_ignores_brief_conditions() -> None:
    am = AlertManager(fire_hold_s=60)
    assert am.apply([sig(True, 0.0)]) == []
    assert am.apply([sig(False, 30.0)]) == []
    assert am.tick(120.0) == []
    assert am.apply([sig(True, 200.0)]) == []
    opened = am.tick(260.0)
    assert [c.transition for c in opened] == [Transition.OPENED]
    assert opened[0].record.started_at == 200.0


def test_fire_hold_opens_on_a_later_signal_too() -> None:
    am = AlertManager(fire_hold_s=60)
    am.apply([sig(True, 0.0)])
    changes = am.apply([sig(True, 61.0, Severity.CRITICAL)])
    assert changes[0].record.severity is Severity.CRITICAL


def test_resolve_hold_suppresses_flapping() -> None:
    am = AlertManager(resolve_hold_s=60)
    am.apply([sig(True, 0.0)])
    for t in range(10, 100, 20):  # clears and fires again every 10 s
        assert am.apply([sig(False, float(t))]) == []
        assert am.apply([sig(True, float(t + 10))]) == []
        assert am.tick(float(t + 10)) == []
    assert am.flaps_suppressed == 5
    am.apply([sig(False, 200.0)])
    assert am.tick(230.0) == []
    resolved = am.tick(260.0)
    assert [c.record.state for c in resolved] == [AlertState.RESOLVED]
    assert am.fired_total == 1


def test_state_round_trip_keeps_open_alerts() -> None:
    am = AlertManager(resolve_hold_s=60)
    record = am.apply([sig(True, 1.0, Severity.CRITICAL)])[0].record
    am.apply([sig(False, 10.0)])
    restored = AlertManager(resolve_hold_s=60)
    restored.load_state(am.state_dict())
    again = restored.get("rule.hot", "d1")
    assert again is not None and again.id == record.id and again.severity is Severity.CRITICAL
    assert restored.apply([sig(True, 20.0)]) == []  # no second alert after a restart
    assert [c.transition for c in restored.tick(200.0)] == []  # fired again: still open


def test_alert_json_has_the_documented_fields() -> None:
    record = AlertManager().apply([sig(True, 1_700_000_000.0)])[0].record
    body = record.to_json_dict()
    assert set(body) == {
        "id", "kind", "subject", "subject_type", "site", "zone", "severity", "state",
        "started_at", "updated_at", "resolved_at", "summary", "evidence", "action",
    }  # fmt: skip
    assert body["state"] == "firing" and body["severity"] == "warning"
    assert body["started_at"] == "2023-11-14T22:13:20Z" and body["resolved_at"] is None


def test_alerts_about_a_device_follow_open_resolve_and_restore() -> None:
    am = AlertManager()
    am.apply([sig(True, 1.0), sig(True, 1.0, subject="d1/temperature_c"),
              sig(True, 1.0, subject="d10")])  # fmt: skip
    assert [a.subject for a in am.about("d1")] == ["d1", "d1/temperature_c"]
    am.apply([sig(False, 2.0)])
    assert [a.subject for a in am.about("d1")] == ["d1/temperature_c"]
    restored = AlertManager()
    restored.load_state(am.state_dict())
    assert [a.subject for a in restored.about("d1")] == ["d1/temperature_c"]
    assert [a.subject for a in restored.about("d10")] == ["d10"]
    restored.apply([sig(False, 3.0, subject="d1/temperature_c")])
    assert restored.about("d1") == []
    assert restored.about("nothing") == []
