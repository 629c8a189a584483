"""Static checks of the container files (no Docker daemon is needed to run them)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from config.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_is_multi_stage_non_root_locked_and_healthchecked() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "uv sync --locked" in runs
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert any(keyword == "HEALTHCHECK" and "/healthz" in rest for keyword, rest in instructions)
    assert any(keyword == "VOLUME" for keyword, _ in instructions)


def test_dockerfile_copies_only_paths_that_exist() -> None:
    for keyword, rest in dockerfile_instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _destination = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), source


def test_compose_services_mount_files_from_the_repository() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"mosquitto", "fleetwatch", "simulator"} <= set(services)
    assert services["simulator"]["profiles"] == ["simulator"]
    named_volumes = set(compose.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name}: {source}"
            else:
                assert source in named_volumes, f"{name}: {source}"
        for dependency in service.get("depends_on", []):
            assert dependency in services
    assert "9108:9108" in services["fleetwatch"]["ports"]


def test_compose_environment_gives_valid_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = {
        key: str(value) for key, value in compose["services"]["fleetwatch"]["environment"].items()
    }
    settings = load_settings(ROOT / "config" / "fleetwatch.example.toml", environ=environment)
    assert settings.mqtt.host == "mosquitto"
    assert settings.http.host == "0.0.0.0"
