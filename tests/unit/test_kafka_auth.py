"""A broker that refuses the credentials is a start-up error naming the broker and the principal, never a
transient outage waited out forever. aiokafka's own clients report a refused bootstrap as the same
KafkaConnectionError as a broker that is down, so these tests fake the connection that fails the login
(`saga_plumbing.kafka.create_conn`), the way a secured broker fails it."""

from __future__ import annotations

import asyncio
import inspect
import socket
import ssl
from typing import Any

import pytest
from aiokafka import errors

import saga_plumbing.kafka as plumbing_kafka
from saga_operator.adapters.kube import KubeClient
from saga_operator.config import load
from saga_operator.runtime.app import OperatorApp
from saga_plumbing import (
    AUTHENTICATION_ERRORS,
    TRANSIENT_KAFKA_ERRORS,
    Backoff,
    KafkaAuthenticationError,
    KafkaSettings,
    check_authentication,
    retry_transient,
)

SECURED = KafkaSettings(
    bootstrap_servers="broker-0.kafka:9093,broker-1.kafka:9093",
    security_protocol="SASL_SSL",
    sasl_username="saga-operator",
    sasl_password="wrong",
)


class _Connections:
    """Stands in for aiokafka.conn.create_conn: raises the queued errors in turn, then connects."""

    def __init__(self, *outcomes: BaseException) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, int, dict[str, Any]]] = []

    async def __call__(self, host: str, port: int, **options: Any) -> Any:
        self.calls.append((host, port, options))
        if self.outcomes:
            raise self.outcomes.pop(0)
        return _Connection()


class _Connection:
    closed = False

    def close(self) -> None:
        self.closed = True


def _refused() -> errors.SaslAuthenticationFailed:
    return errors.SaslAuthenticationFailed(
        "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
    )


def test_no_authentication_error_is_transient() -> None:
    for refusal in (*AUTHENTICATION_ERRORS, errors.TopicAuthorizationFailedError, errors.MessageSizeTooLargeError):
        assert not issubclass(refusal, TRANSIENT_KAFKA_ERRORS), refusal
    assert not issubclass(KafkaAuthenticationError, TRANSIENT_KAFKA_ERRORS)


def test_every_error_aiokafka_calls_retriable_is_transient() -> None:
    retriable = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.KafkaError) and getattr(cls, "retriable", False)
    ]
    assert retriable
    for cls in retriable:
        assert issubclass(cls, TRANSIENT_KAFKA_ERRORS), cls


async def test_retry_transient_lets_a_refused_login_through_at_once() -> None:
    attempts = 0

    async def login() -> None:
        nonlocal attempts
        attempts += 1
        raise _refused()

    with pytest.raises(errors.SaslAuthenticationFailed):
        await retry_transient("login", login, transient=TRANSIENT_KAFKA_ERRORS, backoff=Backoff(initial=0.01))
    assert attempts == 1


async def test_a_refused_login_names_the_broker_and_the_principal(monkeypatch: pytest.MonkeyPatch) -> None:
    connections = _Connections(_refused())
    monkeypatch.setattr(plumbing_kafka, "create_conn", connections)
    with pytest.raises(KafkaAuthenticationError) as refused:
        await check_authentication(SECURED)
    message = str(refused.value)
    assert "broker-0.kafka:9093" in message
    assert "User:saga-operator" in message
    assert "SASL_SSL, SCRAM-SHA-512" in message
    assert "SaslAuthenticationFailed" in message
    assert "wrong" not in message  # never the password
    assert refused.value.broker == "broker-0.kafka:9093"
    assert refused.value.principal == "User:saga-operator"
    host, port, options = connections.calls[0]
    assert (host, port) == ("broker-0.kafka", 9093)
    assert options["sasl_plain_username"] == "saga-operator"
    assert options["sasl_plain_password"] == "wrong"
    assert options["ssl_context"] is not None


async def test_an_unverifiable_broker_certificate_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        plumbing_kafka, "create_conn", _Connections(ssl.SSLCertVerificationError(1, "certificate verify failed"))
    )
    with pytest.raises(KafkaAuthenticationError, match=r"broker-0\.kafka:9093 refused to authenticate User:saga"):
        await check_authentication(SECURED)


async def test_a_broker_that_is_down_is_transient_and_the_next_one_is_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    connections = _Connections(ConnectionRefusedError(111, "Connection refused"))
    monkeypatch.setattr(plumbing_kafka, "create_conn", connections)
    await check_authentication(SECURED)
    assert [(host, port) for host, port, _ in connections.calls] == [("broker-0.kafka", 9093), ("broker-1.kafka", 9093)]

    monkeypatch.setattr(plumbing_kafka, "create_conn", _Connections(ConnectionRefusedError(), TimeoutError()))
    with pytest.raises(errors.KafkaConnectionError, match=r"no Kafka broker of broker-0\.kafka:9093,broker-1"):
        await check_authentication(SECURED)


async def test_no_broker_listening_is_a_connection_error_without_a_fake() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = held.getsockname()[1]
        with pytest.raises(errors.KafkaConnectionError) as down:
            await check_authentication(KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"), request_timeout=2)
    assert isinstance(down.value, TRANSIENT_KAFKA_ERRORS)


class _FakeKube:
    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_the_operator_stops_starting_on_a_refused_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outages before it are waited out (not ready, saying why); the refusal ends start-up with the broker
    and the principal named, and everything started so far (probe server, Kubernetes client) is stopped."""
    for name in ("SAGA_HTTP_PORT", "SAGA_HTTP_HOST"):
        monkeypatch.delenv(name, raising=False)
    kube = _FakeKube()

    async def connect(kubeconfig: str | None, proxy_from_env: bool = False) -> _FakeKube:
        return kube

    monkeypatch.setattr(KubeClient, "connect", staticmethod(connect))
    connections = _Connections(
        ConnectionRefusedError(111, "Connection refused"),  # broker-0 still starting
        ConnectionRefusedError(111, "Connection refused"),  # broker-1 too: a transient outage, retried
        _refused(),
    )
    monkeypatch.setattr(plumbing_kafka, "create_conn", connections)
    app = OperatorApp(load(http_host="127.0.0.1", http_port=0, kafka=SECURED, max_backoff_seconds=1))
    app._backoff = Backoff(initial=0.05, maximum=0.1)
    seen: list[str | None] = []

    async def watch() -> None:
        while True:
            seen.append(app.not_ready())
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        with pytest.raises(KafkaAuthenticationError, match=r"broker-0\.kafka:9093 refused to authenticate User:saga"):
            await asyncio.wait_for(app.start(), timeout=10)
    finally:
        watcher.cancel()
    assert len(connections.calls) == 3
    assert "starting: connecting to Kafka at broker-0.kafka:9093,broker-1.kafka:9093 as User:saga-operator" in seen
    assert None not in seen  # never ready
    assert not app.started.is_set()
    assert kube.closed
    assert app._probes._runner is None  # the probe server is stopped too
