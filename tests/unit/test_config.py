from pathlib import Path

import pytest

from edge.config import AppConfig, load_config, parse_mqtt_url
from edge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_need_no_file():
    config = load_config(environ={})
    assert config.mqtt.qos == 1
    assert config.counting.target_count == 300
    assert (config.bundle / "bundle.json").is_file()


def test_example_file_matches_the_defaults():
    assert load_config(ROOT / "config.example.yaml", environ={}) == load_config(environ={})


def test_state_paths_default_to_one_directory_unless_set_or_nulled(tmp_path, state_dir, monkeypatch):
    config = load_config(environ={})
    assert (config.counting.journal, config.mqtt.outbox, config.review.store) == (
        state_dir / "slides.sqlite", state_dir / "outbox.sqlite", state_dir / "slides-review.sqlite"
    )  # fmt: skip
    assert AppConfig().review.store is None  # the model alone stays pure: load_config fills the paths
    path = tmp_path / "c.yaml"
    path.write_text(f"counting:\n  journal: null\nreview:\n  store: {tmp_path / 'mine.sqlite'}\n")
    config = load_config(path, environ={})
    assert config.counting.journal is None and config.review.store == tmp_path / "mine.sqlite"
    assert config.mqtt.outbox == state_dir / "outbox.sqlite"
    monkeypatch.delenv("MARROW_EDGE_STATE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_config(environ={}).review.store == tmp_path / "xdg" / "marrow-edge" / "slides-review.sqlite"


def test_yaml_then_environment_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("device_id: box-1\ncounting:\n  target_count: 400\nmqtt:\n  url: mqtt://a:1\n")
    env = {"MARROW_EDGE__COUNTING__TARGET_COUNT": "500", "MARROW_EDGE__ENGINE__REQUIRE_PROVIDERS": "true"}
    config = load_config(path, environ=env, overrides={"mqtt": {"url": "mqtt://b:2"}})
    assert config.device_id == "box-1"
    assert config.counting.target_count == 500
    assert config.engine.require_providers is True
    assert config.mqtt.url == "mqtt://b:2"


def test_password_comes_from_environment_and_is_hidden():
    config = load_config(environ={"MARROW_EDGE__MQTT__PASSWORD": "s3cret"})
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt:\n  hots: x\n", "mqtt.hots: unknown key"),
        ("counting:\n  target_count: -3\n", "counting.target_count:"),
        ("mqtt:\n  url: http://x\n", "mqtt.url:"),
        ("device_id: 'bad id/with slash'\n", "device_id:"),
        ("engine:\n  providers: [gpu]\n", "engine.providers.0:"),
    ],
)
def test_bad_keys_and_values_are_named(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_environment_key_is_refused():
    with pytest.raises(ConfigError, match=r"mqtt\.nope: unknown key"):
        load_config(environ={"MARROW_EDGE__MQTT__NOPE": "1"})


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, environ={})
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listed, environ={})


def test_parse_mqtt_url():
    assert parse_mqtt_url("mqtt://10.0.0.2:1884") == ("10.0.0.2", 1884)
    assert parse_mqtt_url("mqtt://broker") == ("broker", 1883)
    for bad in ("broker:1883", "mqtt://:1883", "mqtt://h:0", "mqtt://h:x"):
        with pytest.raises(ValueError):
            parse_mqtt_url(bad)


def test_environment_text_values_are_taken_as_written():
    # issue 13.12: YAML parsing cut 's3cret #1' at the '#' and refused a numeric password or device id
    from edge.config import load_config

    config = load_config(
        environ={
            "MARROW_EDGE__MQTT__PASSWORD": "s3cret #1",
            "MARROW_EDGE__DEVICE_ID": "123456",
            "MARROW_EDGE__COUNTING__TARGET_COUNT": "500",
            "MARROW_EDGE__ENGINE__PROVIDERS": "[cpu]",
        }
    )
    assert config.mqtt.password.get_secret_value() == "s3cret #1"
    assert config.device_id == "123456"
    assert config.counting.target_count == 500 and config.engine.providers == ["cpu"]


def test_an_unparsable_environment_value_never_shows_it():
    import pytest

    from edge.config import load_config
    from edge.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        load_config(environ={"MARROW_EDGE__COUNTING__TARGET_COUNT": "{s3cret: [oops"})
    assert "MARROW_EDGE__COUNTING__TARGET_COUNT" in str(raised.value) and "s3cret" not in str(raised.value)


def test_smaller_config_gaps_of_issue_13():
    import pytest

    from edge.config import load_config, parse_mqtt_url
    from edge.errors import ConfigError

    assert parse_mqtt_url("mqtt://[::1]:1884") == ("::1", 1884)
    assert parse_mqtt_url("mqtts://[fe80::1]") == ("fe80::1", 8883)
    for prefix in ("marrow/+/v1", "marrow/#", "/marrow", "marrow/"):
        with pytest.raises(ConfigError, match="topic_prefix"):
            load_config(overrides={"mqtt": {"topic_prefix": prefix}})
    assert load_config(overrides={"mqtt": {"topic_prefix": "lab-3/marrow"}}).mqtt.topic_prefix == "lab-3/marrow"
    with pytest.raises(ConfigError, match="target_count"):
        load_config(overrides={"counting": {"target_count": True}})


def test_the_engine_is_chosen_by_type_with_only_its_own_settings(tmp_path):
    from edge.analysis.field_models import ENGINES
    from edge.config import ENGINE_TYPES, OnnxRuntimeEngine, TensorRTEngine, TorchEngine

    assert set(ENGINES) == set(ENGINE_TYPES)  # every type has a builder, every builder a type
    assert isinstance(AppConfig().engine, OnnxRuntimeEngine)
    assert isinstance(AppConfig(engine={"type": "torch", "device": "cpu"}).engine, TorchEngine)
    assert isinstance(AppConfig(engine={"backend": "tensorrt"}).engine, TensorRTEngine)  # the old key
    path = tmp_path / "c.yaml"
    path.write_text("engine:\n  type: onnxruntime\n  cuda_graphs: true\n")  # a torch setting
    with pytest.raises(ConfigError, match=r"engine\.cuda_graphs: unknown key"):
        load_config(path)
    env = {"MARROW_EDGE__ENGINE__TYPE": "torch", "MARROW_EDGE__ENGINE__TORCH_WEIGHTS": "123"}
    engine = load_config(environ=env).engine
    assert isinstance(engine, TorchEngine) and str(engine.torch_weights) == "123"  # a path stays text
