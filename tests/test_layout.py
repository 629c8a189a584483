"""The code's layout: rooms by concern, imports pointing one way only.

``service/`` is split into rooms (subpackages), each with a rank. A module may import its
own room and rooms of a lower rank, never a higher one, so a change in a lower room cannot
depend on the daemon, the CLI or the HTTP side. Detectors depend only on the shared records
and errors. Every import counts, including those inside functions and under
``TYPE_CHECKING``; only ``service.records`` may name ``service.errors`` for annotations.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RANKS = {
    "service.errors": 0,
    "service.records": 0,
    "service.simulator": 1,
    "service.state": 1,
    "service.alerts": 1,
    "service.intake": 2,
    "service.api": 3,
    "service.runtime": 4,
    "service.replay": 5,
    "service.commands": 6,
}
"""Room -> rank; a room may import rooms of a lower rank and itself."""

FOUNDATION = ("service.records", "service.errors")
OWN_PACKAGES = ("service", "detectors", "protocols", "config")


def room_of(module: str) -> str | None:
    """The room a dotted module name belongs to (``None`` outside ``service``).

    >>> room_of("service.intake.pipeline"), room_of("service.records"), room_of("detectors.drift")
    ('service.intake', 'service.records', None)
    """
    parts = module.split(".")
    if parts[0] != "service" or len(parts) < 2:
        return None
    room = ".".join(parts[:2])
    if room not in RANKS:
        raise AssertionError(f"{module}: service.{parts[1]} is not a known room; add it to RANKS")
    return room


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(source: str) -> list[tuple[str, bool]]:
    """Every FleetWatch module ``source`` imports, with whether it is for annotations only.

    >>> imports_of("from service.records import Reading\\nimport detectors.drift\\nimport os")
    [('service.records', False), ('detectors.drift', False)]
    """
    tree = ast.parse(source)
    typing_only = _type_checking_lines(tree)
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name.split(".")[0] in OWN_PACKAGES:
                found.append((name, node.lineno in typing_only))
    return found


def violations(module: str, source: str) -> list[str]:
    """What ``module`` (dotted name) imports against the layout; empty when it keeps it.

    >>> violations("service.alerts.sinks", "from service.runtime.daemon import Daemon")
    ['service.alerts.sinks imports service.runtime.daemon (a higher room)']
    >>> violations("service.runtime.daemon", "from service.alerts.sinks import Sink")
    []
    """
    found: list[str] = []
    top = module.split(".")[0]
    room = room_of(module)
    for target, typing_only in imports_of(source):
        target_room = room_of(target)
        if top == "detectors" and target.startswith("service") and target_room not in FOUNDATION:
            found.append(f"{module} imports {target} (detectors use only records and errors)")
        elif top == "protocols" and (
            target.startswith("detectors")
            or (target_room is not None and RANKS[target_room] > RANKS["service.intake"])
        ):
            found.append(f"{module} imports {target} (transports and codecs sit below the runtime)")
        elif top == "config" and target_room is not None and target_room not in FOUNDATION:
            found.append(f"{module} imports {target} (settings use only records and errors)")
        elif room in FOUNDATION and target_room is not None and target_room != room:
            if not (room == "service.records" and target == "service.errors" and typing_only):
                found.append(f"{module} imports {target} (the foundation imports nothing else)")
        elif (
            room is not None
            and target_room is not None
            and target_room != room
            and RANKS[target_room] >= RANKS[room]
        ):
            found.append(f"{module} imports {target} (a higher room)")
    return found


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in OWN_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            found.append((".".join(parts), path))
    return found


def test_every_module_imports_only_its_room_and_lower_rooms() -> None:
    modules = _modules()
    assert len(modules) > 60  # the walk found the code
    problems = [v for name, path in modules for v in violations(name, path.read_text())]
    assert problems == []


def test_the_checker_catches_an_upward_import() -> None:
    assert violations("service.intake.pipeline", "from service.api.http import serve") != []
    assert violations("service.state.store", "import service.alerts.lifecycle") != []
    assert violations("detectors.drift", "from service.intake.pipeline import Pipeline") != []
    assert violations("service.records", "from service.errors import DecodeError") != []
    assert violations("protocols.coap", "from service.runtime.daemon import Daemon") != []
    assert violations("service.api.fleetapi", "def f():\n    from service.runtime import shards\n")


@pytest.mark.parametrize("room", sorted(r for r in RANKS if r not in FOUNDATION))
def test_every_room_says_what_lives_there_and_what_it_may_import(room: str) -> None:
    init = ROOT / room.replace(".", "/") / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc is not None and "May import" in doc, f"{init} needs a docstring with 'May import'"


def test_no_module_is_left_in_service_outside_a_room() -> None:
    loose = sorted(
        p.stem for p in (ROOT / "service").glob("*.py") if p.stem != "__init__"
    )
    assert loose == ["errors", "records"]


def test_readme_code_map_names_every_room() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Code map")
    code_map = readme[start : readme.index("\n## ", start + 1)]
    rooms = {p.name for p in (ROOT / "service").iterdir() if (p / "__init__.py").exists()}
    missing = sorted(r for r in rooms if f"service/{r}/" not in code_map)
    assert missing == []
    for entry in ("service/records.py", "service/errors.py", "detectors/", "protocols/codecs/"):
        assert entry in code_map
