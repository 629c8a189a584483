"""Generate ``telemetry_pb2.py`` from ``telemetry.proto`` with the protoc of grpcio-tools.

    uv run python -m protocols.proto.generate [--check]

With ``--check`` nothing is written; the exit status says whether the generated file is
up to date.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GENERATED = HERE / "telemetry_pb2.py"


def generate() -> str:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        status = protoc.main(
            ["protoc", f"-I{HERE}", f"--python_out={out}", str(HERE / "telemetry.proto")]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed with status {status}")
        return (Path(out) / "telemetry_pb2.py").read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = generate()
    if args.check:
        return 0 if GENERATED.exists() and GENERATED.read_text() == text else 1
    GENERATED.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
