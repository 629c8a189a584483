"""Settings: the example file, environment overrides, errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import EXAMPLE_CONFIG, load_settings
from detectors import build_detectors
from service.errors import ConfigError


def test_example_config_loads_and_documents_every_section() -> None:
    settings = load_settings(EXAMPLE_CONFIG, environ={})
    assert settings.mqtt.client_id == "fleetwatch"
    assert settings.mqtt.clean_start is False
    assert {rule.name for rule in settings.rules} >= {"battery_low", "overheating"}
    text = EXAMPLE_CONFIG.read_text()
    for section, model in settings:
        if section == "rules":
            continue
        assert f"[{section}]" in text, section
        for key in type(model).model_fields:
            assert key in text, f"{section}.{key} is not documented in the example"
    assert build_detectors(settings)


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[mqtt]\nhost = "a"\nport = 1883\n')
    settings = load_settings(
        path,
        environ={
            "FLEETWATCH_MQTT__HOST": "b",
            "FLEETWATCH_MQTT__PASSWORD": "s3cret",
            "FLEETWATCH_HTTP__PORT": "9200",
            "FLEETWATCH_MQTT__TLS__ENABLED": "true",
            "UNRELATED": "x",
        },
    )
    assert (settings.mqtt.host, settings.http.port, settings.mqtt.tls.enabled) == ("b", 9200, True)
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("[mqtt]\nport = 0\n", "mqtt.port"),
        ("[mqtt]\nprotocol = '4'\n", "mqtt.protocol"),
        ("[pipeline]\nqueue_size = -1\n", "pipeline.queue_size"),
        ("[mqtt]\nhots = 'typo'\n", "mqtt.hots"),
        ("[[rules]]\nname='r'\nmetric='m'\nkind='above'\n", "rules.0"),
        ("[[rules]]\nname='r'\nmetric='m'\nkind='between'\nthreshold=1\n", "rules.0.kind"),
        ("[topics]\ntemplates = ['fleet/{site}']\n", "topics.templates"),
        ("[detectors]\nenabled = ['nope']\n", "detectors.enabled"),
    ],
)
def test_bad_values_name_the_setting(tmp_path: Path, text: str, setting: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        build_detectors(load_settings(path, environ={}))
    assert info.value.setting == setting
    assert str(info.value).startswith(setting)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "none.toml", environ={})
    bad = tmp_path / "x.toml"
    bad.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})


def test_environment_reaches_detector_tables_as_numbers_and_lists_as_json() -> None:
    settings = load_settings(
        None,
        environ={
            "FLEETWATCH_DETECTORS__DRIFT__TOLERANCE": "0.05",
            "FLEETWATCH_DETECTORS__ENABLED": '["rules", "drift"]',
            "fleetwatch_mqtt__host": "lower-case-works",
        },
    )
    assert settings.detectors.drift == {"tolerance": 0.05}
    assert settings.detectors.enabled == ("rules", "drift")
    assert settings.mqtt.host == "lower-case-works"


def test_environment_passed_in_is_the_only_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWATCH_MQTT__PORT", "2000")
    assert load_settings(None, environ={}).mqtt.port == 1883
    assert load_settings(None).mqtt.port == 2000


def test_bad_environment_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="environment"):
        load_settings(None, environ={"FLEETWATCH_DETECTORS__ENABLED": "[not json"})
    with pytest.raises(ConfigError, match=r"mqtt\.hots"):
        load_settings(None, environ={"FLEETWATCH_MQTT__HOTS": "typo"})
