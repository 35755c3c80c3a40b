"""Settings: every variable typed and range-checked at start, with one line per wrong
variable naming it, the value given (never a secret's) and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stream_app.config import Settings, SettingsError, env_name

#: (variable, nonsense value, words the error must contain): the settings issue 9 and
#: issue 12 found accepted, and their neighbours
NONSENSE = [
    ("IMPORTANCE_TARGET_KEEP_RATE", "2", "less than or equal to 1"),
    ("IMPORTANCE_TARGET_KEEP_RATE", "7", "less than or equal to 1"),
    ("IMPORTANCE_TARGET_KEEP_RATE", "nan", "finite"),
    ("IMPORTANCE_TARGET_KEEP_RATE", "0", "greater than 0"),
    ("IMPORTANCE_MAX_PENDING_PER_USER", "-1", "greater than or equal to 1"),
    ("IMPORTANCE_MAX_PENDING_PER_PARTITION", "0", "greater than or equal to 1"),
    ("IMPORTANCE_ATTRIBUTION_WINDOW_S", "-5", "greater than 0"),
    ("IMPORTANCE_ATTRIBUTION_WINDOW_S", "nan", "finite"),
    ("IMPORTANCE_ATTRIBUTION_WINDOW_S", "inf", "finite"),
    ("IMPORTANCE_SNAPSHOT_EVERY", "0", "greater than or equal to 1"),
    ("IMPORTANCE_SNAPSHOT_INTERVAL_S", "0", "greater than or equal to 0.1"),
    ("IMPORTANCE_ROLLING_PUBLISH_S", "-1", "greater than or equal to 0.1"),
    ("IMPORTANCE_ROLLING_STEP_S", "nan", "finite"),
    ("IMPORTANCE_ROLLING_WINDOWS", "5m,90s", "multiple of the step"),
    ("IMPORTANCE_ROLLING_WINDOWS", "soon", "duration"),
    ("IMPORTANCE_PARTITIONS", "four", "valid integer"),
    ("IMPORTANCE_PARTITIONS", "0", "greater than or equal to 1"),
    ("IMPORTANCE_WEB_PORT", "0", "greater than or equal to 1"),
    ("IMPORTANCE_WEB_PORT", "65536", "less than or equal to 65535"),
    ("IMPORTANCE_MAX_CONSECUTIVE_FAILURES", "0", "greater than or equal to 1"),
    ("IMPORTANCE_ROLLING", "maybe", "valid boolean"),
    ("IMPORTANCE_SCORE_IN_PLACE", "2", "valid boolean"),
    ("IMPORTANCE_PROCESSING_GUARANTEE", "twice", "exactly_once"),
    ("IMPORTANCE_APP_ID", "my app", "pattern"),
    ("IMPORTANCE_TOPIC_DLQ", "dlq/1", "pattern"),
    ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "host:port"),
    ("KAFKA_BOOTSTRAP_SERVERS", "a:1,b:99999", "host:port"),
    ("KAFKA_SECURITY_PROTOCOL", "TLS", "SASL_SSL"),
    ("IMPORTANCE_TABLE_STORE", "disk", "rocksdb"),
    ("IMPORTANCE_STANDBY_REPLICAS", "-1", "greater than or equal to 0"),
    ("IMPORTANCE_STANDBY_REPLICAS", "11", "less than or equal to 10"),
    ("IMPORTANCE_STANDBY_REPLICAS", "one", "valid integer"),
    ("IMPORTANCE_GROUP_INSTANCE_ID", "my worker", "pattern"),
]


def test_standby_replicas_need_the_local_store():
    """The memory store would read a standby's whole changelog again at takeover."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"IMPORTANCE_STANDBY_REPLICAS": "1", "IMPORTANCE_TABLE_STORE": "memory"})
    text = str(info.value)
    assert "IMPORTANCE_STANDBY_REPLICAS=1" in text and "IMPORTANCE_TABLE_STORE=rocksdb" in text


def test_group_instance_id_auto_is_stable_per_worker():
    settings = Settings.from_env(
        {"IMPORTANCE_GROUP_INSTANCE_ID": "auto", "IMPORTANCE_WEB_PORT": "7001"}
    )
    assert settings.group_instance_id_or_none() == settings.group_instance_id_or_none()
    assert settings.group_instance_id_or_none().endswith("-7001")
    assert Settings.from_env({}).group_instance_id_or_none() is None


@pytest.mark.parametrize(
    ("name", "value", "words"), NONSENSE, ids=[f"{n}={v}" for n, v, _ in NONSENSE]
)
def test_nonsense_setting_gets_one_clear_line(name, value, words):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    text = str(info.value)
    assert len(info.value.problems) == 1 and "\n" not in text
    assert name in text and value in text, text
    assert words in text, text


def test_every_wrong_variable_is_named_at_once():
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"IMPORTANCE_PARTITIONS": "x", "IMPORTANCE_TARGET_KEEP_RATE": "7"})
    assert len(info.value.problems) == 2
    assert "IMPORTANCE_PARTITIONS='x'" in str(info.value)
    assert "IMPORTANCE_TARGET_KEEP_RATE='7'" in str(info.value)


def test_allowed_values_are_stated():
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"IMPORTANCE_TARGET_KEEP_RATE": "2"})
    assert "allowed: a number > 0 and <= 1" in str(info.value)


def test_the_sampler_and_its_salt_are_checked():
    from models.label_sampling import SAMPLERS

    settings = Settings.from_env({"IMPORTANCE_SAMPLER": "uniform", "IMPORTANCE_SAMPLER_SALT": "9"})
    assert (settings.importance_sampler, settings.importance_sampler_salt) == ("uniform", 9)
    assert Settings.from_env({}).importance_sampler == "fisher-mix"
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"IMPORTANCE_SAMPLER": "best", "IMPORTANCE_SAMPLER_SALT": "-1"})
    assert len(info.value.problems) == 2
    text = str(info.value)
    assert "IMPORTANCE_SAMPLER='best': unknown sampler 'best'; choose one of" in text
    assert all(name in text for name in SAMPLERS)
    assert "IMPORTANCE_SAMPLER_SALT='-1'" in text


def test_secret_values_never_appear_in_errors():
    secret = "hunter2-Secret"
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"KAFKA_SASL_PASSWORD": secret})  # with PLAINTEXT: refused
    assert secret not in str(info.value) and secret not in repr(info.value)
    with pytest.raises(ValueError) as direct:
        Settings(sasl_password=secret, security_protocol="TLS")
    assert secret not in str(direct.value)
    settings = Settings(api_token=secret)
    assert secret not in repr(settings) and secret not in str(settings)


def test_good_values_are_parsed_as_before():
    settings = Settings.from_env(
        {
            "IMPORTANCE_PARTITIONS": "2",
            "IMPORTANCE_TARGET_KEEP_RATE": "1",
            "IMPORTANCE_ROLLING": "off",
            "IMPORTANCE_SCORE_IN_PLACE": "0",
            "IMPORTANCE_PROCESSING_GUARANTEE": "EXACTLY_ONCE",
            "KAFKA_SECURITY_PROTOCOL": "plaintext",
            "IMPORTANCE_WEB_PORT": "",  # empty: the default
            "IMPORTANCE_ROLLING_WINDOWS": "2m, 1h",
            "KAFKA_BOOTSTRAP_SERVERS": "b1:9092,b2:9093",
            "UNRELATED": "x",
        }
    )
    assert settings.partitions == 2 and settings.target_keep_rate == 1.0
    assert settings.rolling_enabled is False and settings.score_in_place is False
    assert settings.exactly_once and settings.security_protocol == "PLAINTEXT"
    assert settings.web_port == 6066 and settings.bootstrap_servers == "b1:9092,b2:9093"


def test_constructor_takes_field_names_and_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("IMPORTANCE_PARTITIONS", "9")
    assert Settings().partitions == 4
    assert Settings(partitions=3).partitions == 3
    assert Settings.from_env().partitions == 9
    with pytest.raises(ValueError):
        Settings(partitions=0)


def test_every_field_names_its_variable_and_describes_itself():
    for name, field in Settings.model_fields.items():
        env = env_name(name)
        assert env.startswith(("IMPORTANCE_", "KAFKA_")), name
        assert field.description, name
    assert env_name("rolling_enabled") == "IMPORTANCE_ROLLING"
    assert env_name("max_consecutive_failures") == "IMPORTANCE_MAX_CONSECUTIVE_FAILURES"


def _documented_variables() -> dict[str, str]:
    """The variables of docs/configuration.md's table, each with its default's cell."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    rows: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\| (`[A-Z_]+`(?: / `[A-Z_]+`)*) \| (.*?) \| ", line)
        if match:
            names = re.findall(r"`([A-Z_]+)`", match.group(1))
            cells = match.group(2).split(" / ")
            for i, name in enumerate(names):
                rows[name] = cells[i] if len(cells) == len(names) else match.group(2)
    return rows


def test_the_configuration_doc_lists_every_variable_with_its_default():
    from stream_app.config import OTHER_VARIABLES

    rows = _documented_variables()
    envs = {env_name(name) for name in Settings.model_fields}
    assert sorted((envs | OTHER_VARIABLES) - rows.keys()) == []  # documented
    assert sorted(rows.keys() - envs - OTHER_VARIABLES) == []  # and read by something
    for name, field in Settings.model_fields.items():
        default = field.default
        if field.default_factory is not None or default is None:
            continue  # computed or unset: the doc says what it means in words
        if isinstance(default, bool):
            shown = "true" if default else "false"
        elif isinstance(default, float) and default.is_integer():
            shown = str(int(default))
        else:
            shown = str(default)
        assert f"`{shown}`" in rows[env_name(name)], (env_name(name), shown)


def test_unknown_importance_variables_are_reported():
    from stream_app.config import unknown_variables

    env = {
        "IMPORTANCE_TARGET_KEEPRATE": "0.5",  # a typo
        "IMPORTANCE_PARTITIONS": "4",
        "IMPORTANCE_BROKER_PORT": "9092",  # read by the local broker
        "PATH": "/bin",
    }
    assert unknown_variables(env) == ["IMPORTANCE_TARGET_KEEPRATE"]


def test_sampler_features_are_checked_against_the_sampler():
    ok = Settings.from_env(
        {"IMPORTANCE_SAMPLER": "fisher", "IMPORTANCE_SAMPLER_FEATURES": "item:15, hour"}
    )
    assert ok.importance_sampler_features == "item:15, hour"
    assert (
        Settings.from_env({"IMPORTANCE_SAMPLER_FEATURES": ""}).importance_sampler_features is None
    )
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"IMPORTANCE_SAMPLER": "fisher", "IMPORTANCE_SAMPLER_FEATURES": "colour"})
    assert "IMPORTANCE_SAMPLER_FEATURES='colour'" in str(info.value)
    assert "unknown feature group 'colour'" in str(info.value)
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"IMPORTANCE_SAMPLER": "negative", "IMPORTANCE_SAMPLER_FEATURES": "item"})
    assert "IMPORTANCE_SAMPLER='negative' has no design" in str(info.value)
