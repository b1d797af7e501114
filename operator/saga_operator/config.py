"""One settings object, read from the environment once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from saga_protocol import REPLY_TOPIC


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def _bool(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={raw!r}: expected true or false")


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    reply_topic: str = REPLY_TOPIC
    consumer_group: str = "saga-operator"
    # Empty: watch Sagas in every namespace (needs a ClusterRole); otherwise only this one.
    namespace: str = ""
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    topic_partitions: int = 6
    topic_replication_factor: int = 1
    # Kafka's transient unavailability is ridden out with backoff, capped here.
    max_backoff_seconds: int = 30
    event_queue_size: int = 10_000
    kubeconfig: str | None = None
    # Let the Kubernetes client take HTTPS_PROXY/NO_PROXY and ~/.netrc from the environment. Off by
    # default: aiohttp then reads ~/.netrc in a thread before every request (docs/performance.md), and
    # in a cluster the API server is reached directly. A kubeconfig's proxy-url works either way.
    kube_proxy_from_env: bool = False
    participants: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        participants = tuple(p for p in env.get("SAGA_PARTICIPANTS", "").split(",") if p)
        return cls(
            kafka_bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", cls.kafka_bootstrap_servers),
            reply_topic=env.get("SAGA_REPLY_TOPIC", REPLY_TOPIC),
            consumer_group=env.get("SAGA_CONSUMER_GROUP", cls.consumer_group),
            namespace=env.get("SAGA_NAMESPACE", ""),
            http_host=env.get("SAGA_HTTP_HOST", cls.http_host),
            http_port=_int("SAGA_HTTP_PORT", cls.http_port),
            topic_partitions=_int("SAGA_TOPIC_PARTITIONS", cls.topic_partitions),
            topic_replication_factor=_int("SAGA_TOPIC_REPLICATION_FACTOR", cls.topic_replication_factor),
            max_backoff_seconds=_int("SAGA_MAX_BACKOFF_SECONDS", cls.max_backoff_seconds),
            kubeconfig=env.get("KUBECONFIG") or None,
            kube_proxy_from_env=_bool("SAGA_KUBE_PROXY_FROM_ENV"),
            participants=participants,
        )
