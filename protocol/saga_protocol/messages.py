"""Commands (operator -> participant) and replies (participant -> operator).

The body of every Kafka message is one JSON object, self-contained, validated by these models. The
headers follow the CloudEvents Kafka protocol binding in binary mode (`ce_specversion`, `ce_id`,
`ce_source`, `ce_type`, `ce_time`, `content-type`) so that generic tooling can route and trace the
messages; a decoder never needs them to make sense of a body.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SPEC_VERSION: Final = "1.0"
COMMAND_TYPE: Final = "dev.saga.command.v1"
REPLY_TYPE: Final = "dev.saga.reply.v1"
# Larger messages are refused on both sides: a saga payload is a few fields, never a document store.
MAX_MESSAGE_BYTES: Final = 256 * 1024
# Bodies nested deeper than this are refused too (SchemaViolation). Fix (chaos run, docs/chaos.md): the
# decoders must raise nothing but DecodeError, yet json.loads raises RecursionError near 1000 levels,
# and a reply whose result nests past ~250 levels decoded fine but could not be written into the
# Saga's status (pydantic's serialisation depth limit), so the operator retried that write forever.
MAX_JSON_DEPTH: Final = 64

_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class CommandKind(StrEnum):
    ACTION = "action"
    COMPENSATION = "compensation"


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    # A business failure: the participant applied nothing and will refuse again; never retried.
    FAILED = "failed"
    # A transient failure (an exception, a dependency down): the operator retries per the step's policy.
    ERROR = "error"


class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)


class ErrorInfo(_Wire):
    reason: str = Field(max_length=128, description="A CamelCase machine-readable reason, e.g. InsufficientFunds.")
    message: str = Field(default="", max_length=4096, description="A sentence for a person.")


def idempotency_key(saga_uid: str, step: str) -> str:
    """One key per (saga, step): the action and its compensation share it, so a participant can pair
    them (a compensation that overtakes its action leaves a tombstone under this key)."""
    return f"{saga_uid}/{step}"


class Command(_Wire):
    """What the operator asks a participant to do for one step of one saga."""

    message_id: str = Field(alias="messageId", min_length=1, max_length=64, description="Unique per send.")
    saga_uid: str = Field(alias="sagaUid", min_length=1, max_length=64, description="metadata.uid of the Saga.")
    saga_namespace: str = Field(alias="sagaNamespace", min_length=1, max_length=63)
    saga_name: str = Field(alias="sagaName", min_length=1, max_length=253)
    step: str = Field(pattern=_NAME, description="The step's name in the Saga spec.")
    kind: CommandKind
    action: str = Field(
        min_length=1, max_length=128, description="The participant's handler: the step's action or compensation."
    )
    attempt: int = Field(ge=1, description="Counts sends of this kind for this step; the reply echoes it.")
    idempotency_key: str = Field(alias="idempotencyKey", min_length=1, max_length=320)
    payload: dict[str, Any] = Field(default_factory=dict, description="The saga's spec.payload, unchanged.")
    reply_topic: str = Field(alias="replyTopic", min_length=1, max_length=249)
    sent_at: datetime = Field(alias="sentAt")


class Reply(_Wire):
    """What a participant answers to a command. On redelivery the stored outcome is replayed with
    `duplicate` set and the redelivered command's `attempt` and a fresh `messageId`."""

    message_id: str = Field(alias="messageId", min_length=1, max_length=64)
    saga_uid: str = Field(alias="sagaUid", min_length=1, max_length=64)
    step: str = Field(pattern=_NAME)
    kind: CommandKind
    attempt: int = Field(ge=1, description="The attempt of the command this answers.")
    idempotency_key: str = Field(alias="idempotencyKey", min_length=1, max_length=320)
    participant: str = Field(pattern=_NAME)
    outcome: Outcome
    result: dict[str, Any] | None = Field(default=None, description="What the action produced, on success.")
    error: ErrorInfo | None = None
    duplicate: bool = Field(default=False, description="True when replayed from the stored outcome.")
    sent_at: datetime = Field(alias="sentAt")


def answer(
    command: Command,
    participant: str,
    outcome: Outcome,
    *,
    result: dict[str, Any] | None = None,
    error: ErrorInfo | None = None,
    duplicate: bool = False,
) -> Reply:
    """The reply to `command`: the one place a Reply is built from the command it answers.

    It echoes the command's saga, step, kind, attempt and idempotency key (a replay echoes *this*
    delivery's attempt, not the first one's) and gets a fresh message id. A result is sent only with
    `succeeded`.
    """
    return Reply(
        message_id=str(uuid.uuid4()),
        saga_uid=command.saga_uid,
        step=command.step,
        kind=command.kind,
        attempt=command.attempt,
        idempotency_key=command.idempotency_key,
        participant=participant,
        outcome=outcome,
        result=result if outcome is Outcome.SUCCEEDED else None,
        error=error,
        duplicate=duplicate,
        sent_at=datetime.now(UTC),
    )


class DecodeError(ValueError):
    """A message that cannot be turned into a Command or Reply. `reason` goes into the dead-letter header."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


Headers = list[tuple[str, bytes]]
# What a consumer hands the decoders: Kafka header values may be null on the wire (aiokafka gives None).
WireHeaders = Sequence[tuple[str, bytes | None]]


def _headers(ce_type: str, message_id: str, source: str, subject: str, sent_at: datetime) -> Headers:
    return [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", message_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", ce_type.encode()),
        ("ce_subject", subject.encode()),
        ("ce_time", sent_at.astimezone(UTC).isoformat().encode()),
        ("content-type", b"application/json"),
    ]


def _dump(model: BaseModel) -> bytes:
    return model.model_dump_json(by_alias=True, exclude_none=True).encode()


def encode_command(command: Command, source: str = "/saga-operator") -> tuple[bytes, bytes, Headers]:
    """(key, value, headers). The key is the saga uid: all messages of one saga keep their order."""
    headers = _headers(COMMAND_TYPE, command.message_id, source, command.step, command.sent_at)
    return command.saga_uid.encode(), _dump(command), headers


def encode_reply(reply: Reply) -> tuple[bytes, bytes, Headers]:
    headers = _headers(REPLY_TYPE, reply.message_id, f"/participants/{reply.participant}", reply.step, reply.sent_at)
    return reply.saga_uid.encode(), _dump(reply), headers


def _nested_deeper_than(body: Any, limit: int) -> bool:
    pending: list[tuple[Any, int]] = [(body, 1)]
    while pending:
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                pending.append((child, depth + 1))
    return False


def _load(value: bytes | None, headers: WireHeaders | None, expected_type: str) -> dict[str, Any]:
    if value is None:
        raise DecodeError("EmptyMessage", "the message has no value")
    if len(value) > MAX_MESSAGE_BYTES:
        raise DecodeError("Oversized", f"{len(value)} bytes, the limit is {MAX_MESSAGE_BYTES}")
    for name, raw in headers or ():
        if name != "ce_type":
            continue
        # A null header value is possible on the wire (fix, chaos run: it raised AttributeError here).
        ce_type = None if raw is None else raw.decode(errors="replace")
        if ce_type != expected_type:
            raise DecodeError("WrongType", f"ce_type is {ce_type!r}, expected {expected_type!r}")
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError("NotJson", str(exc)) from None
    except RecursionError:
        raise DecodeError("SchemaViolation", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise DecodeError("NotAnObject", f"the body is a JSON {type(body).__name__}")
    if _nested_deeper_than(body, MAX_JSON_DEPTH):
        raise DecodeError("SchemaViolation", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def _validation_detail(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']} ({exc.error_count()} error(s))"


_Message = TypeVar("_Message", Command, Reply)


def _decode(model: type[_Message], ce_type: str, value: bytes | None, headers: WireHeaders | None) -> _Message:
    body = _load(value, headers, ce_type)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise DecodeError("SchemaViolation", _validation_detail(exc)) from None


def decode_command(value: bytes | None, headers: WireHeaders | None = None) -> Command:
    return _decode(Command, COMMAND_TYPE, value, headers)


def decode_reply(value: bytes | None, headers: WireHeaders | None = None) -> Reply:
    return _decode(Reply, REPLY_TYPE, value, headers)


def now() -> datetime:
    return datetime.now(UTC)
