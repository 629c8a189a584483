"""The Protobuf schema and its generated code stay in step."""

from __future__ import annotations

import pytest

from protocols.proto.generate import GENERATED, generate


def test_generated_code_is_up_to_date_with_the_proto() -> None:
    pytest.importorskip("grpc_tools")
    assert GENERATED.read_text() == generate(), (
        "telemetry_pb2.py is stale: run `uv run python -m protocols.proto.generate`"
    )
