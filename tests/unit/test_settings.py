"""The operator's settings: one typed class read from the environment, refused with the variable's name,
documented in one table that cannot drift from the fields."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from saga_operator import config
from saga_operator.config import InvalidSettings, Settings, load
from saga_plumbing import KafkaSettings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's shell (a sourced .stack/env) must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith(("SAGA_", "KAFKA_")) or name == "KUBECONFIG":
            monkeypatch.delenv(name)


def test_defaults_without_environment() -> None:
    settings = load()
    assert settings.kube_proxy_from_env is False
    assert settings.namespace == ""
    assert settings.topic_partitions == 6
    assert settings.participants == ()
    assert settings.http_port == 8080
    assert settings.kubeconfig is None
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.security_protocol == "PLAINTEXT"


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("1", True), ("Yes", True), ("false", False), ("0", False)]
)
def test_proxy_from_env_switch(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("SAGA_KUBE_PROXY_FROM_ENV", raw)
    assert load().kube_proxy_from_env is expected


def test_a_misspelt_switch_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_KUBE_PROXY_FROM_ENV", "ture")
    with pytest.raises(InvalidSettings, match="SAGA_KUBE_PROXY_FROM_ENV='ture'"):
        load()


def test_a_port_that_is_not_a_number_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_HTTP_PORT", "abc")
    with pytest.raises(InvalidSettings, match="SAGA_HTTP_PORT='abc': Input should be a valid integer"):
        load()


@pytest.mark.parametrize(
    ("name", "raw"), [("SAGA_HTTP_PORT", "70000"), ("SAGA_TOPIC_PARTITIONS", "0"), ("SAGA_MAX_BACKOFF_SECONDS", "0")]
)
def test_numbers_out_of_range_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(InvalidSettings, match=f"{name}='{raw}'"):
        load()


def test_participants_and_numbers_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_PARTICIPANTS", "videos,users,,agents")
    monkeypatch.setenv("SAGA_TOPIC_PARTITIONS", "12")
    settings = load()
    assert settings.participants == ("videos", "users", "agents")
    assert settings.topic_partitions == 12


def test_a_participant_that_cannot_name_a_topic_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_PARTICIPANTS", "videos,Users")
    with pytest.raises(InvalidSettings, match="SAGA_PARTICIPANTS='videos,Users': participant name 'Users'"):
        load()


def test_an_empty_variable_means_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a ConfigMap writes it (`SAGA_NAMESPACE=`)."""
    monkeypatch.setenv("SAGA_NAMESPACE", "")
    monkeypatch.setenv("SAGA_HTTP_PORT", "")
    monkeypatch.setenv("KUBECONFIG", "")
    settings = load()
    assert (settings.namespace, settings.http_port, settings.kubeconfig) == ("", 8080, None)


def test_kubeconfig_and_kafka_keep_their_own_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/tmp/kubeconfig")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9093,broker-2:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "saga-operator")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    settings = load()
    assert settings.kubeconfig == "/tmp/kubeconfig"
    assert settings.kafka.bootstrap_servers == "broker-1:9093,broker-2:9093"
    assert settings.kafka.principal == "User:saga-operator"
    assert "s3cret" not in repr(settings)


def test_kafka_settings_are_refused_with_their_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL")
    with pytest.raises(InvalidSettings, match="KAFKA_SECURITY_PROTOCOL='SASL'"):
        load()
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(InvalidSettings, match="KAFKA_SASL_USERNAME is required"):
        load()


def test_the_command_line_namespace_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_NAMESPACE", "shop")
    assert load().namespace == "shop"
    assert load(namespace="other").namespace == "other"


def test_every_field_has_a_meaning() -> None:
    for model in (Settings, KafkaSettings):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description for docs/operations.md"


def test_the_operations_guide_lists_exactly_these_settings() -> None:
    path = REPO / "docs/operations.md"
    document = path.read_text()
    assert document == config.spliced(document), (
        "docs/operations.md's configuration table drifted from saga_operator.config: run `make generate` "
        "(python -m saga_operator.config --update docs/operations.md)"
    )
    table = config.settings_table()
    for variable in ("SAGA_HTTP_PORT", "KUBECONFIG", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SASL_PASSWORD_FILE"):
        assert f"| `{variable}` |" in table
