"""Golden vectors for every codec: ``testdata/<case>/input`` decoded with the codec its
``content_type`` names gives ``expected`` (records, or the decode error's reason)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.codecs import CODECS, CodecSet, DecodeContext
from service.errors import DecodeError

TESTDATA = Path(__file__).resolve().parents[1] / "testdata"
CASES = sorted(p.name for p in TESTDATA.iterdir() if (p / "input").exists())
RECEIVED = 1_700_000_000.0


def decode(case: str) -> dict[str, object]:
    folder = TESTDATA / case
    content_type = (folder / "content_type").read_text().strip()
    codec = CodecSet().for_content_type(content_type)
    assert codec is not None, content_type
    try:
        records = codec.decode((folder / "input").read_bytes(), DecodeContext(received_at=RECEIVED))
    except DecodeError as exc:
        return {"error": exc.reason}
    return {"records": records}


@pytest.mark.parametrize("case", CASES)
def test_golden_vector(case: str) -> None:
    expected = orjson.loads((TESTDATA / case / "expected").read_bytes())
    assert decode(case) == expected


def test_every_codec_has_golden_vectors() -> None:
    covered = {(TESTDATA / case / "content_type").read_text().strip() for case in CASES}
    for name, cls in CODECS.items():
        assert set(cls().content_types) & covered, f"codec {name} has no golden vector"


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=200), name=st.sampled_from(sorted(CODECS)))
def test_no_codec_raises_anything_but_a_decode_error(payload: bytes, name: str) -> None:
    codec = CODECS[name]()
    try:
        records = codec.decode(payload, DecodeContext(received_at=RECEIVED))
    except DecodeError as exc:
        assert exc.reason
        return
    assert all(isinstance(record, dict) for record in records)


def test_every_format_ends_in_the_same_reading() -> None:
    import cbor2
    from prometheus_client import CollectorRegistry

    from config.settings import Settings
    from service.alerts.metrics import FleetMetrics
    from service.alerts.sinks import MemorySink
    from service.intake.pipeline import Pipeline
    from service.records import RawMessage

    record = {"ts": 1_767_225_600, "temperature_c": 23.5, "battery_v": 3.6}
    senml = [{"bt": 1_767_225_600, "n": "temperature", "u": "Cel", "v": 23.5},
             {"n": "batt", "u": "V", "v": 3.6}]  # fmt: skip
    payloads = {
        "application/json": orjson.dumps(record),
        "application/cbor": cbor2.dumps(record),
        "application/senml+json": orjson.dumps(senml),
        "application/senml+cbor": cbor2.dumps(
            [{-3: 1_767_225_600, 0: "temperature", 1: "Cel", 2: 23.5}, {0: "batt", 1: "V", 2: 3.6}]
        ),
    }
    seen = []

    class Keep:
        name = "keep"

        def process(self, batch):  # type: ignore[no-untyped-def]
            seen.extend(batch)
            return []

        def tick(self, now):  # type: ignore[no-untyped-def]
            return []

        def state_dict(self):  # type: ignore[no-untyped-def]
            return {}

        def load_state(self, state):  # type: ignore[no-untyped-def]
            pass

    pipeline = Pipeline.build(Settings(), detectors=[Keep()], sinks=[MemorySink()],
                              metrics=FleetMetrics(CollectorRegistry()))  # fmt: skip
    messages = [
        RawMessage(f"fleet/plant-a/d{i}/telemetry", payload, 1_767_225_601.0, "mqtt", content_type)
        for i, (content_type, payload) in enumerate(payloads.items())
    ]
    outcome = pipeline.process_messages(messages)
    assert outcome.accepted == 4 and outcome.rejected == 0
    assert {(r.ts, tuple(sorted(r.metrics.items()))) for r in seen} == {
        (1_767_225_600.0, (("battery_v", 3.6), ("temperature_c", 23.5)))
    }
