"""How a participant is configured: in code (`Participant(...)` arguments), or from the environment
(`ParticipantSettings`, `SAGA_*` and `KAFKA_*`), which is how `saga-participant` and a pod configure it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from saga_plumbing import KafkaSettings


@dataclass(frozen=True)
class RetryPolicy:
    """In-process retries of a handler that raised an unexpected exception, before replying `error`.

    Bounded on purpose: past it the operator's per-step retry policy takes over, and it can see the
    failures; retrying here forever would hide them.
    """

    attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError(f"invalid retry policy {self}")
        if self.multiplier < 1:
            raise ValueError(f"invalid retry policy {self}")

    def backoff(self, retry: int) -> float:
        """Seconds before retry number `retry` (1-based). Jittered so that replicas don't retry in step."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class ParticipantSettings(BaseSettings):
    """A participant's settings from the environment: `SAGA_<FIELD>` (upper case), Kafka's from `KAFKA_*`.

    Give it to `Participant(..., settings=ParticipantSettings())`; an argument given to `Participant`
    explicitly wins over the setting of the same name.
    """

    model_config = SettingsConfigDict(env_prefix="SAGA_", frozen=True, extra="ignore")

    reply_topic: str | None = Field(
        default=None,
        description="The only topic replies go to (the one this participant's principal may write); unset: "
        "saga.replies.<name>. A command naming another replyTopic is dead-lettered UntrustedReplyTopic, unanswered.",
    )
    allowed_namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Namespaces whose sagas may command this participant, comma-separated; empty: every "
        "namespace. Others are refused NamespaceNotAllowed (dead-lettered and answered).",
    )
    http_host: str = Field(
        default="127.0.0.1", description="Address of /healthz, /readyz, /metrics (0.0.0.0 in a pod)."
    )
    http_port: int | None = Field(
        default=None, ge=0, le=65535, description="Their port; unset serves nothing, 0 picks a free one."
    )
    max_in_flight: int = Field(
        default=16, ge=1, le=1024, description="Commands handled at once (different sagas; one saga's in order)."
    )
    reply_timeout: float = Field(
        default=30.0, gt=0, description="Seconds to keep producing a reply before dead-lettering the command."
    )
    liveness_timeout: float = Field(
        default=300.0, gt=0, description="/healthz fails when a command has been in hand, or the loop stuck, this long."
    )
    create_topics: bool = Field(default=True, description="Create the command topic and its DLQ at start.")
    topic_partitions: int = Field(default=1, ge=1, description="Partitions of the command topic it creates.")
    topic_replication_factor: int = Field(default=1, ge=1, description="Replication factor of the topics it creates.")
    allow_fault_injection: bool = Field(
        default=False,
        description="Obey a saga payload's `simulate` block (delays, transient faults). Tests, demos, chaos runs "
        "only: with it any saga author can slow this participant down for every tenant.",
    )
    max_fault_delay: float = Field(default=60.0, ge=0, description="Cap on a `simulate` delay, in seconds.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="The brokers, from KAFKA_*.")

    @field_validator("allowed_namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: Any) -> Any:
        return split_namespaces(value) if isinstance(value, str) else value

    @field_validator("allowed_namespaces")
    @classmethod
    def _check_namespaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_namespaces(value)


_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def split_namespaces(text: str) -> tuple[str, ...]:
    """`"a, b,,c"` -> ("a", "b", "c"): the comma-separated form of SAGA_ALLOWED_NAMESPACES and the flag."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def check_namespaces(names: tuple[str, ...]) -> tuple[str, ...]:
    """The names, each a Kubernetes namespace name (a DNS label); ValueError naming the first that is not."""
    for name in names:
        if not _NAMESPACE.match(name):
            raise ValueError(f"{name!r} is not a namespace name (a DNS label)")
    return names
