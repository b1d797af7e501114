"""Kafka client settings (security included) and topic creation, for the operator and the SDK alike.

`KafkaSettings` is read from the environment (`KAFKA_*`, see docs/operations.md) or built in code, and
turns into the keyword arguments every aiokafka client takes (`client_options()`), so the operator's
producer and consumer, a participant's, and the admin client that creates topics connect the same way.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
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
