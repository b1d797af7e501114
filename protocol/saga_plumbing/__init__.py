"""saga_plumbing: the one implementation of what the operator and the participant SDK both need.

Each piece exists once: the Kafka client settings (security included), topic creation, the dead-letter
writer and its headers, the probe/metrics HTTP server, and the retry helper for transient outages.
Nothing here knows a saga's rules; the wire format itself is `saga_protocol`.
"""

from saga_plumbing.deadletter import (
    DLQ_DETAIL,
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC,
    DLQ_REASON,
    DLQ_SOURCE,
    DLQ_TIME,
    DLQ_TRUNCATED,
    DeadLetterWriter,
    dead_letter_headers,
)
from saga_plumbing.kafka import (
    AUTHENTICATION_ERRORS,
    TRANSIENT_KAFKA_ERRORS,
    KafkaAuthenticationError,
    KafkaSettings,
    TopicCreationError,
    TopicSpec,
    check_authentication,
    ensure_topics,
)
from saga_plumbing.probes import PortInUse, ProbeServer
from saga_plumbing.retry import Backoff, retry_transient

__all__ = [
    "AUTHENTICATION_ERRORS",
    "DLQ_DETAIL",
    "DLQ_ORIGINAL_OFFSET",
    "DLQ_ORIGINAL_PARTITION",
    "DLQ_ORIGINAL_TOPIC",
    "DLQ_REASON",
    "DLQ_SOURCE",
    "DLQ_TIME",
    "DLQ_TRUNCATED",
    "TRANSIENT_KAFKA_ERRORS",
    "Backoff",
    "DeadLetterWriter",
    "KafkaAuthenticationError",
    "KafkaSettings",
    "PortInUse",
    "ProbeServer",
    "TopicCreationError",
    "TopicSpec",
    "check_authentication",
    "dead_letter_headers",
    "ensure_topics",
    "retry_transient",
]
