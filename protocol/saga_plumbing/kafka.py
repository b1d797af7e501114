"""Kafka client settings (security included), topic creation and the errors worth retrying, for the
operator and the SDK alike.

`KafkaSettings` is read from the environment (`KAFKA_*`, see docs/operations.md) or built in code, and
turns into the keyword arguments every aiokafka client takes (`client_options()`), so the operator's
producer and consumer, a participant's, and the admin client that creates topics connect the same way.
`check_authentication` tells a refused login from a broker that is down, which aiokafka's clients do
not; `TRANSIENT_KAFKA_ERRORS` is what `retry_transient` may retry (never a refused login).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka import errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


class KafkaSettings(BaseSettings):
    """How to reach and authenticate to the brokers. Environment: `KAFKA_<FIELD>` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True, extra="ignore")

    bootstrap_servers: str = Field(default="127.0.0.1:9092", description="host:port[,host:port...]")
    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="SASL_SSL in production: authenticated and encrypted."
    )
    sasl_mechanism: SaslMechanism = Field(default="SCRAM-SHA-512", description="With SASL_*.")
    sasl_username: str | None = Field(default=None, description="The principal's name, with SASL_*.")
    sasl_password: SecretStr | None = Field(default=None, description="Its password (or sasl_password_file).")
    sasl_password_file: Path | None = Field(
        default=None, description="A file holding the password (a mounted Secret); read at start-up."
    )
    ssl_ca_file: Path | None = Field(default=None, description="CA bundle that signed the brokers' certificates.")
    ssl_cert_file: Path | None = Field(default=None, description="Client certificate (mTLS), PEM.")
    ssl_key_file: Path | None = Field(default=None, description="Its private key, PEM.")
    client_id: str | None = Field(default=None, description="Shown in the brokers' logs and quotas.")

    @model_validator(mode="after")
    def _complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            if not self.sasl_username:
                raise ValueError(
                    f"KAFKA_SASL_USERNAME is required with KAFKA_SECURITY_PROTOCOL={self.security_protocol}"
                )
            if self.sasl_password is None and self.sasl_password_file is None:
                raise ValueError("KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE is required with SASL")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together")
        return self

    @property
    def principal(self) -> str:
        """Who these settings authenticate as, for messages: `User:<name>`, or `ANONYMOUS`."""
        return f"User:{self.sasl_username}" if self.sasl_username else "ANONYMOUS"

    def password(self) -> str | None:
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            return self.sasl_password_file.read_text().strip()
        return None

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(self.ssl_ca_file) if self.ssl_ca_file else None,
            certfile=str(self.ssl_cert_file) if self.ssl_cert_file else None,
            keyfile=str(self.ssl_key_file) if self.ssl_key_file else None,
        )
        return context

    def client_options(self, client_id: str | None = None) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if client_id or self.client_id:
            options["client_id"] = client_id or self.client_id
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.security_protocol.startswith("SASL_"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.password()
        return options


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)


async def ensure_topics(kafka: KafkaSettings, topics: Iterable[TopicSpec], *, client_id: str | None = None) -> None:
    """Create the topics that are missing. One that exists already is fine, whatever its layout (another
    replica, the operator or an admin created it first); any other refusal raises with the broker's code."""
    wanted = list({t.name: t for t in topics}.values())
    if not wanted:
        return
    admin = AIOKafkaAdminClient(**kafka.client_options(client_id))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=dict(t.configs))
            for t in wanted
            if t.name not in existing
        ]
        if not missing:
            return
        try:
            response = await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            return
        for entry in getattr(response, "topic_errors", []):
            topic, code = entry[0], entry[1]
            if code not in (0, TopicAlreadyExistsError.errno):
                raise TopicCreationError(topic, code, entry[2] if len(entry) > 2 else None)
    finally:
        await admin.close()


class TopicCreationError(RuntimeError):
    def __init__(self, topic: str, code: int, message: str | None) -> None:
        super().__init__(f"creating topic {topic} failed with Kafka error code {code}: {message or ''}".rstrip(": "))
        self.topic = topic
        self.code = code


#: The broker is away, restarting, moving a leader or a group coordinator, or rebalancing: waiting and trying
#: again helps. Every aiokafka error that marks itself `retriable`, and the outage errors it does not mark.
#: Refusals that need a person are not here, so `retry_transient` lets them through at once: a wrong password
#: or mechanism (AUTHENTICATION_ERRORS), a missing ACL (`*AuthorizationFailedError`), a record too large,
#: an invalid topic layout.
TRANSIENT_KAFKA_ERRORS: tuple[type[BaseException], ...] = (
    errors.KafkaConnectionError,
    errors.NodeNotReadyError,
    errors.NoBrokersAvailable,
    errors.MetadataEmptyBrokerList,
    errors.StaleMetadata,
    errors.TooManyInFlightRequests,
    errors.KafkaProtocolError,  # a connection cut mid-response (CorrelationIdError is one)
    errors.Cancelled,
    errors.KafkaTimeoutError,
    errors.RequestTimedOutError,
    errors.KafkaUnavailableError,
    errors.BrokerNotAvailableError,
    errors.LeaderNotAvailableError,
    errors.NotLeaderForPartitionError,
    errors.NotEnoughReplicasError,
    errors.NotEnoughReplicasAfterAppendError,
    errors.KafkaStorageError,
    errors.NotControllerError,
    errors.UnknownTopicOrPartitionError,  # a topic just created, its metadata not everywhere yet
    errors.CoordinatorNotAvailableError,
    errors.CoordinatorLoadInProgressError,
    errors.NotCoordinatorError,
    errors.RebalanceInProgressError,
    errors.CommitFailedError,  # the group rebalanced under a commit: the next one carries the new assignment
    TimeoutError,
    ConnectionError,
)

#: A broker refusing who the settings say we are. Never transient. aiokafka's clients raise these only from
#: their own connections and report a refused bootstrap as KafkaConnectionError, the same as a broker that
#: is down: `check_authentication` opens a connection itself to tell the two apart.
AUTHENTICATION_ERRORS: tuple[type[BaseException], ...] = (
    errors.SaslAuthenticationFailed,
    errors.AuthenticationFailedError,
    errors.AuthenticationMethodNotSupported,
    errors.UnsupportedSaslMechanismError,
    errors.IllegalSaslStateError,  # SASL spoken to a listener that does not expect it
)


class KafkaAuthenticationError(RuntimeError):
    """A broker refused these settings: wrong password, mechanism, certificate or security protocol.
    Not a KafkaError, and in no transient tuple: a person must change the settings."""

    def __init__(self, broker: str, kafka: KafkaSettings, cause: BaseException) -> None:
        super().__init__(
            f"Kafka broker {broker} refused to authenticate {_identity(kafka)}: {type(cause).__name__}: {cause}"
        )
        self.broker = broker
        self.principal = kafka.principal


def _identity(kafka: KafkaSettings) -> str:
    if kafka.security_protocol.startswith("SASL_"):
        return f"{kafka.principal} ({kafka.security_protocol}, {kafka.sasl_mechanism})"
    if kafka.ssl_cert_file is not None:
        return f"the client certificate {kafka.ssl_cert_file} ({kafka.security_protocol})"
    return f"{kafka.principal} ({kafka.security_protocol})"


def _refused_tls(exc: BaseException) -> bool:
    """A TLS handshake that failed for a reason a retry does not change (an unverifiable certificate, ours
    refused, TLS spoken to a plaintext listener); a handshake cut short by a restarting broker is transient."""
    return isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)


async def check_authentication(kafka: KafkaSettings, *, request_timeout: float = 10.0) -> None:
    """Open one connection to a bootstrap broker with these settings, as every client will, and close it.

    Raises KafkaAuthenticationError, naming the broker and the principal, when a broker refuses the
    credentials or the TLS handshake; KafkaConnectionError (transient) when no broker answered at all.
    """
    options = kafka.client_options()
    options.pop("bootstrap_servers")
    last: BaseException | None = None
    for host, port, _ in collect_hosts(kafka.bootstrap_servers, randomize=False):
        try:
            conn = await create_conn(host, port, request_timeout_ms=int(request_timeout * 1000), **options)
        except AUTHENTICATION_ERRORS as exc:
            raise KafkaAuthenticationError(f"{host}:{port}", kafka, exc) from exc
        except (TimeoutError, OSError, errors.KafkaError) as exc:
            if _refused_tls(exc):
                raise KafkaAuthenticationError(f"{host}:{port}", kafka, exc) from exc
            last = exc
            continue
        conn.close()
        return
    raise errors.KafkaConnectionError(
        f"no Kafka broker of {kafka.bootstrap_servers} answered ({type(last).__name__}: {last})"
    )
