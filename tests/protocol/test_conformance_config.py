"""The kit's command line: rules selection, the slow convention, and Kafka security from the environment."""

from __future__ import annotations

import pytest

from saga_conformance.config import from_args, parse
from saga_conformance.runner import selected
from saga_conformance.wire import KitError

BASE = ["--participant", "users", "--action", "debit", "--compensation", "refund", "--payload", '{"buyer": "alice"}']


def test_the_slow_convention_is_the_sdk_simulate_knob() -> None:
    cfg = from_args(parse([*BASE, "--slow-simulate", "--slow-seconds", "3"]))
    assert cfg.slow_payload == {"simulate": {"users": {"delaySeconds": 3.0, "delayAttempts": 1}}}
    assert cfg.trusted_reply_topic == "saga.replies.users"


def test_kafka_security_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "saga-operator")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "secret")
    cfg = from_args(parse([*BASE, "--bootstrap-servers", "broker:9093"]))
    options = cfg.kafka.client_options("saga-conformance")
    assert options["bootstrap_servers"] == "broker:9093"
    assert (options["security_protocol"], options["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert options["sasl_plain_username"] == "saga-operator" and "ssl_context" in options


def test_rules_are_selected_by_name() -> None:
    cfg = from_args(parse([*BASE, "--only", "fresh-reply,dlq-not-json"]))
    assert [r.name for r in selected(cfg)] == ["fresh-reply", "dlq-not-json"]
    with pytest.raises(KitError, match="no such rule"):
        selected(from_args(parse([*BASE, "--skip", "nonsense"])))


def test_required_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--participant", "users"])
    assert "--action" in capsys.readouterr().err
    assert parse(["--list-rules"]).list_rules
