"""The record machinery of the golden messages (docs/golden/, made by `python -m saga_protocol.golden`).

A golden file is one JSON document: the record (topic, partition, offset, key, headers, value as exact
UTF-8 text or base64, and the parsed body when it is JSON), what a reader must make of it (`expect`),
and for the refused ones the dead letter (and the refusal reply, if any) it must produce.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from saga_plumbing.deadletter import DLQ_TIME, dead_letter_headers
from saga_protocol.ids import command_id, idempotency_key
from saga_protocol.kinds import CommandKind, Outcome
from saga_protocol.messages import Command, Reply, answer, encode_command, encode_reply
from saga_protocol.partition import partition_for
from saga_protocol.topics import (
    DEFAULT_PARTITIONS,
    REPLY_DEAD_LETTER_TOPIC,
    command_topic,
    dead_letter_topic,
    reply_topic,
)

UID: Final = "0b1d8c9e-7a53-4a53-9d0c-6c3e1f0a2b44"
STEP: Final = "debit-buyer"
PARTICIPANT: Final = "users"
T0: Final = datetime(2026, 1, 1, tzinfo=UTC)
PAYLOAD: Final = {"buyer": "alice", "video": "v-42", "price": 1500, "agent": "bob-agency"}
#: How the participant of the golden records is configured.
PARTICIPANT_CONFIG: Final = {
    "name": PARTICIPANT,
    "trustedReplyTopic": reply_topic(PARTICIPANT),
    "allowedNamespaces": ["shop"],
    "actions": ["debit"],
    "compensations": ["refund"],
}

Headers = list[tuple[str, bytes | None]]


@dataclass
class Record:
    """A Kafka record as the dead-letter writer reads it (saga_plumbing.deadletter.Record)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = field(default_factory=list)
    partition: int = 0
    offset: int = 0


def keyed(topic: str, key: bytes, value: bytes | None, headers: Headers, offset: int) -> Record:
    return Record(topic, key, value, headers, partition_for(key, DEFAULT_PARTITIONS), offset)


def golden_command(kind: CommandKind = CommandKind.ACTION, attempt: int = 1, **changes: Any) -> Command:
    fields: dict[str, Any] = dict(
        message_id=command_id(UID, STEP, kind, attempt),
        saga_uid=UID,
        saga_namespace="shop",
        saga_name="buy-42",
        step=STEP,
        kind=kind,
        action="debit" if kind is CommandKind.ACTION else "refund",
        attempt=attempt,
        idempotency_key=idempotency_key(UID, STEP),
        payload=dict(PAYLOAD),
        reply_topic=reply_topic(PARTICIPANT),
        sent_at=T0 + timedelta(seconds=attempt - 1 + (10 if kind is CommandKind.COMPENSATION else 0)),
    )
    fields.update(changes)
    return Command(**fields)


def golden_reply(command: Command, outcome: Outcome, n: int, **options: Any) -> Reply:
    reply = answer(command, PARTICIPANT, outcome, **options)
    return reply.model_copy(
        update={"message_id": f"9f0c3b52-0000-4000-8000-{n:012d}", "sent_at": command.sent_at + timedelta(seconds=0.25)}
    )


def command_record(command: Command, offset: int = 7, **changes: Any) -> Record:
    key, value, headers = encode_command(command)
    record = keyed(command_topic(PARTICIPANT), key, value, list(headers), offset)
    return Record(**{**record.__dict__, **changes})


def reply_record(reply: Reply, offset: int = 3) -> Record:
    key, value, headers = encode_reply(reply)
    return keyed(reply_topic(reply.participant), key, value, list(headers), offset)


def dead_letter(original: Record, reason: str, detail: str, source: str, topic: str) -> Record:
    headers = dead_letter_headers(original, reason, detail, source)
    # dlq_time is the moment of setting aside; fixed here so that the files do not change.
    headers = [(name, b"2026-01-01T00:00:01.000Z" if name == DLQ_TIME else raw) for name, raw in headers]
    return Record(topic, original.key, original.value or b"", headers, 0, 0)


def _value_json(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return {"utf8": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode()}


def record_json(record: Record) -> dict[str, Any]:
    document: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": None if record.key is None else record.key.decode(),
        "headers": [[name, None if raw is None else raw.decode()] for name, raw in record.headers],
        "value": _value_json(record.value),
    }
    try:
        body = json.loads(record.value or b"")
    except ValueError:
        return document
    if isinstance(body, dict) and len(record.value or b"") <= 16 * 1024:
        document["body"] = body
    return document


def dead_letter_json(original: Record, letter: Record) -> dict[str, Any]:
    """A dead letter's document; a value over 16 KiB (the original's, unchanged) is not written twice."""
    document = record_json(letter)
    if len(letter.value or b"") > 16 * 1024:
        assert letter.value == original.value
        document["value"] = {"sameAs": "record"}
    return document


def record_from_json(document: dict[str, Any], original: Record | None = None) -> Record:
    value = document["value"]
    if value == {"sameAs": "record"}:
        assert original is not None
        value = _value_json(original.value)
    raw = None if value is None else value["utf8"].encode() if "utf8" in value else base64.b64decode(value["base64"])
    headers = [(name, None if v is None else v.encode()) for name, v in document["headers"]]
    key = None if document["key"] is None else document["key"].encode()
    return Record(document["topic"], key, raw, headers, document["partition"], document["offset"])


def decodes_doc(description: str, record: Record, as_: str) -> dict[str, Any]:
    return {"description": description, "record": record_json(record), "expect": {"decodesAs": as_}}


def refused_command_doc(
    description: str, original: Record, reason: str, detail: str, reply: Reply | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "description": description,
        "participant": PARTICIPANT_CONFIG,
        "record": record_json(original),
        "expect": {"refusedBy": "participant", "reason": reason},
        "deadLetter": dead_letter_json(
            original, dead_letter(original, reason, detail, PARTICIPANT, dead_letter_topic(command_topic(PARTICIPANT)))
        ),
        "reply": None if reply is None else record_json(reply_record(reply)),
    }
    return document


def refused_reply_doc(description: str, original: Record, reason: str, detail: str) -> dict[str, Any]:
    return {
        "description": description,
        "operator": {"stepParticipant": PARTICIPANT},
        "record": record_json(original),
        "expect": {"refusedBy": "operator", "reason": reason},
        "deadLetter": dead_letter_json(
            original, dead_letter(original, reason, detail, "saga-operator", REPLY_DEAD_LETTER_TOPIC)
        ),
    }


def nested(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels - 1):
        node["n"] = {}
        node = node["n"]
    return root
