"""The shared plumbing's pure parts: settings, dead-letter headers, the retry helper, the probe server."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import ClientSession
from pydantic import ValidationError

from saga_plumbing import (
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_REASON,
    DLQ_SOURCE,
    DLQ_TRUNCATED,
    Backoff,
    DeadLetterWriter,
    KafkaSettings,
    PortInUse,
    ProbeServer,
    dead_letter_headers,
    retry_transient,
)


@dataclass
class _Record:
    topic: str = "saga.commands.users"
    partition: int = 3
    offset: int = 41
    key: bytes | None = b"uid"
    value: bytes | None = b"{}"
    headers: list[tuple[str, bytes | None]] = field(default_factory=lambda: [("ce_type", None)])


def test_sasl_needs_a_username_and_a_password() -> None:
    with pytest.raises(ValidationError, match="KAFKA_SASL_USERNAME"):
        KafkaSettings(security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="KAFKA_SASL_PASSWORD"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_username="saga-operator")


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "saga-operator")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(secret))
    settings = KafkaSettings()
    options = settings.client_options("me")
    assert options["bootstrap_servers"] == "broker:9093"
    assert options["sasl_plain_password"] == "s3cret"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["client_id"] == "me"
    assert settings.principal == "User:saga-operator"
    assert "ssl_context" not in options


def test_plaintext_settings_carry_no_credentials() -> None:
    options = KafkaSettings(bootstrap_servers="b:1").client_options()
    assert options == {"bootstrap_servers": "b:1", "security_protocol": "PLAINTEXT"}


def test_dead_letter_headers_come_first_and_keep_the_original_ones() -> None:
    headers = dead_letter_headers(_Record(), "NotJson", "x" * 10_000, "users")
    names = [name for name, _ in headers]
    assert names[0] == DLQ_REASON
    assert dict(headers)[DLQ_SOURCE] == b"users"
    assert dict(headers)[DLQ_ORIGINAL_PARTITION] == b"3"
    assert dict(headers)[DLQ_ORIGINAL_OFFSET] == b"41"
    assert ("ce_type", None) == headers[-1]
    assert len(dict(headers)["dlq_detail"] or b"") == 4096


class _TooLargeOnce:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, list[tuple[str, bytes | None]] | None]] = []

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> None:
        from aiokafka.errors import MessageSizeTooLargeError

        if not self.sent and value is not None and len(value) > 1024:
            self.sent.append((topic, None, None))
            raise MessageSizeTooLargeError()
        self.sent.append((topic, value, headers))


async def test_an_oversized_dead_letter_is_truncated_and_marked() -> None:
    producer = _TooLargeOnce()
    record = _Record(value=b"x" * (600 * 1024))
    await DeadLetterWriter(producer, "saga.commands.users.dlq", "users").write(record, "Oversized", "too big")
    topic, value, headers = producer.sent[-1]
    assert topic == "saga.commands.users.dlq"
    assert value is not None and len(value) == 512 * 1024
    assert headers is not None and (DLQ_TRUNCATED, b"true") in headers


async def test_retry_transient_retries_only_transient_errors() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("down")
        return "up"

    assert await retry_transient("t", flaky, transient=(ConnectionError,), backoff=Backoff(0.001, 0.002)) == "up"
    assert calls == 3

    async def wrong_password() -> None:
        raise PermissionError("authentication failed")

    with pytest.raises(PermissionError):
        await retry_transient("t", wrong_password, transient=(ConnectionError,), backoff=Backoff(0.001, 0.002))


async def test_retry_transient_gives_up_after_its_bound() -> None:
    async def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await retry_transient("t", down, transient=(ConnectionError,), backoff=Backoff(0.01, 0.02), give_up_after=0.05)


async def test_probe_server_answers_and_a_busy_port_is_an_error() -> None:
    ready: list[str | None] = ["starting"]
    server = ProbeServer("127.0.0.1", 0, liveness=lambda: None, readiness=lambda: ready[0])
    await server.start()
    try:
        assert server.bound_port is not None
        async with ClientSession() as http:
            base = f"http://127.0.0.1:{server.bound_port}"
            async with http.get(f"{base}/readyz") as r:
                assert (r.status, await r.text()) == (503, "starting\n")
            ready[0] = None
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
        clash = ProbeServer("127.0.0.1", server.bound_port, liveness=lambda: None, readiness=lambda: None)
        with pytest.raises(PortInUse, match="already in use"):
            await clash.start()
    finally:
        await server.stop()


def test_port_in_use_is_seen_even_when_another_program_holds_it() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        server = ProbeServer("127.0.0.1", port, liveness=lambda: None, readiness=lambda: None)
        with pytest.raises(PortInUse):
            asyncio.run(server.start())


async def test_a_dead_letter_keeps_a_null_value_null() -> None:
    """The original's bytes unchanged (docs/protocol.md): a message without a value is not given b""."""
    producer = _TooLargeOnce()
    await DeadLetterWriter(producer, "saga.replies.dlq", "saga-operator").write(
        _Record(value=None), "EmptyMessage", "the message has no value"
    )
    (_, value, headers) = producer.sent[-1]
    assert value is None
    assert headers is not None and dict(headers)[DLQ_REASON] == b"EmptyMessage"


async def test_a_dead_letter_without_key_or_value_gets_zero_bytes() -> None:
    """A producer refuses a record with neither key nor value: the dead letter of one has zero bytes."""
    producer = _TooLargeOnce()
    await DeadLetterWriter(producer, "saga.commands.users.dlq", "users").write(
        _Record(key=None, value=None), "EmptyMessage", "the message has no value"
    )
    (_, value, _) = producer.sent[-1]
    assert value == b""
