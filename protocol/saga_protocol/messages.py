"""Commands (operator -> participant) and replies (participant -> operator), protocol v2.

The body of every Kafka message is one JSON object, self-contained, validated by these models. The
headers follow the CloudEvents Kafka protocol binding in binary mode (`ce_specversion`, `ce_id`,
`ce_source`, `ce_type`, `ce_subject`, `ce_time`, `content-type`) so that generic tooling can route and
trace the messages; a decoder needs no header but `ce_type` (refused when present and wrong).

Forward compatibility: readers ignore fields they do not know (a new optional field is not a new
version), but refuse known fields of the wrong JSON type (no coercion: `"1"` is not an attempt).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from saga_protocol.ids import idempotency_key
from saga_protocol.kinds import CommandKind, Outcome
from saga_protocol.limits import (
    MAX_ATTEMPT,
    MAX_JSON_DEPTH,
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_LENGTH,
    MAX_REASON_LENGTH,
    input_problem,
    nested_deeper_than,
    payload_problem,
    result_problem,
)
from saga_protocol.topics import operator_source, participant_source
from saga_protocol.tracecontext import trace_headers

SPEC_VERSION: Final = "1.0"
PROTOCOL_VERSION: Final = 2
COMMAND_TYPE: Final = "dev.saga.command.v2"
REPLY_TYPE: Final = "dev.saga.reply.v2"
CONTENT_TYPE: Final = "application/json"

_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"

__all__ = ["CommandKind", "Outcome", "idempotency_key"]


class _Wire(BaseModel):
    # extra="ignore": unknown fields are dropped, so the generated schema allows additional properties.
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, extra="ignore", frozen=True)


class ErrorInfo(_Wire):
    reason: str = Field(
        min_length=1,
        max_length=MAX_REASON_LENGTH,
        description="A CamelCase machine-readable reason, e.g. InsufficientFunds.",
    )
    message: str = Field(default="", max_length=MAX_MESSAGE_LENGTH, description="A sentence for a person.")


class Command(_Wire):
    """What the operator asks a participant to do for one step of one saga."""

    message_id: str = Field(
        alias="messageId",
        min_length=1,
        max_length=64,
        description="command_id(sagaUid, step, kind, attempt): the same for every send of one attempt.",
    )
    saga_uid: str = Field(alias="sagaUid", min_length=1, max_length=64, description="metadata.uid of the Saga.")
    saga_namespace: str = Field(alias="sagaNamespace", min_length=1, max_length=63)
    saga_name: str = Field(alias="sagaName", min_length=1, max_length=253)
    step: str = Field(pattern=_NAME, description="The step's name in the Saga spec.")
    kind: CommandKind
    action: str = Field(
        min_length=1, max_length=128, description="The participant's handler: the step's action or compensation."
    )
    attempt: int = Field(
        ge=1, le=MAX_ATTEMPT, description="Counts sends of this kind for this step; the reply echoes it."
    )
    idempotency_key: str = Field(alias="idempotencyKey", min_length=1, max_length=320)
    payload: dict[str, Any] = Field(default_factory=dict, description="The saga's spec.payload, unchanged.")
    input: dict[str, Any] | None = Field(
        default=None,
        description="The step's input, evaluated by the operator at the step's first attempt: the same in every "
        "command of the step, its compensation's included. Absent when the step declares none. Optional and "
        "additive in v2: a participant that does not read it keeps working from payload.",
    )
    action_result: dict[str, Any] | None = Field(
        alias="actionResult",
        default=None,
        description="Compensations only: the result of the action being undone, as the operator recorded it. "
        "Absent when the action's outcome is unknown (no reply came) or it returned none.",
    )
    reply_topic: str = Field(
        alias="replyTopic",
        min_length=1,
        max_length=249,
        description="saga.replies.<participant>. A participant replies only to the topic it trusts.",
    )
    sent_at: AwareDatetime = Field(alias="sentAt", description="RFC 3339 with an offset.")


class Reply(_Wire):
    """What a participant answers to a command. On redelivery the stored outcome is replayed with
    `duplicate` set, the redelivered command's `attempt` and `commandId`, and a fresh `messageId`."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"outcome": {"const": "succeeded"}}},
                    "then": {"properties": {"error": {"type": "null"}}},
                    "else": {
                        "required": ["error"],
                        "properties": {"error": {"$ref": "#/$defs/ErrorInfo"}, "result": {"type": "null"}},
                    },
                }
            ]
        }
    )

    message_id: str = Field(alias="messageId", min_length=1, max_length=64, description="Unique per reply.")
    command_id: str = Field(
        alias="commandId", min_length=1, max_length=64, description="The messageId of the command answered."
    )
    saga_uid: str = Field(alias="sagaUid", min_length=1, max_length=64)
    step: str = Field(pattern=_NAME)
    kind: CommandKind
    attempt: int = Field(ge=1, le=MAX_ATTEMPT, description="The attempt of the command this answers.")
    idempotency_key: str = Field(alias="idempotencyKey", min_length=1, max_length=320)
    participant: str = Field(pattern=_NAME)
    outcome: Outcome
    result: dict[str, Any] | None = Field(default=None, description="What the step produced; only with succeeded.")
    error: ErrorInfo | None = Field(default=None, description="Why not; required with failed and error.")
    duplicate: bool = Field(default=False, description="True when replayed from the stored outcome.")
    sent_at: AwareDatetime = Field(alias="sentAt", description="RFC 3339 with an offset.")

    @model_validator(mode="after")
    def _fields_fit_the_outcome(self) -> Reply:
        if self.outcome is Outcome.SUCCEEDED:
            if self.error is not None:
                raise ValueError("error is sent only with outcome failed or error")
            return self
        if self.error is None:
            raise ValueError(f"error is required with outcome {self.outcome.value}")
        if self.result is not None:
            raise ValueError("result is sent only with outcome succeeded")
        return self


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

    It echoes the command's saga, step, kind, attempt, idempotency key and message id (as `commandId`;
    a replay echoes *this* delivery's, not the first one's) and gets a fresh message id. A result is
    sent only with `succeeded`; `error` is required with `failed` and `error`.
    """
    return Reply(
        message_id=str(uuid.uuid4()),
        command_id=command.message_id,
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


def rfc3339(moment: datetime) -> str:
    """`ce_time`: RFC 3339 in UTC with a `Z` (readers accept any offset)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _headers(ce_type: str, message_id: str, source: str, subject: str, sent_at: datetime) -> Headers:
    return [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", message_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", ce_type.encode()),
        ("ce_subject", subject.encode()),
        ("ce_time", rfc3339(sent_at).encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]


def _dump(model: BaseModel) -> bytes:
    return model.model_dump_json(by_alias=True, exclude_none=True).encode()


def encode_command(
    command: Command, source: str | None = None, *, trace: Mapping[str, str] | None = None
) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers). The key is the saga uid: all messages of one saga keep their order.
    `source` defaults to `/saga-operator/<sagaNamespace>`. `trace`: a W3C trace-context carrier (a propagator's
    `traceparent`/`tracestate`), sent as the optional headers of §5.1 after the seven CloudEvents ones."""
    source = source or operator_source(command.saga_namespace)
    headers = _headers(COMMAND_TYPE, command.message_id, source, command.step, command.sent_at)
    return command.saga_uid.encode(), _dump(command), headers + trace_headers(trace)


def encode_reply(reply: Reply, *, trace: Mapping[str, str] | None = None) -> tuple[bytes, bytes, Headers]:
    """As `encode_command`; `trace` is the participant's span (or the command's trace context, passed through)."""
    source = participant_source(reply.participant)
    headers = _headers(REPLY_TYPE, reply.message_id, source, reply.step, reply.sent_at)
    return reply.saga_uid.encode(), _dump(reply), headers + trace_headers(trace)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key, item in pairs:
        if key in body:
            # Parsers disagree on which of two values wins; a message must mean one thing to every reader.
            raise ValueError(f"the key {key!r} is repeated in an object")
        body[key] = item
    return body


def _finite_number(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        # 1e400 parses as Infinity, which no reader can carry on (and json_size could not measure).
        raise ValueError(f"the number {text[:40]} is beyond a double's range")
    return number


def _unpaired_surrogate(body: Any) -> str | None:
    """A string (or key) of `body` holding an unpaired surrogate escape (`"\\ud800"`): no UTF-8 text can
    carry it. Iterative, as `nested_deeper_than`: it runs before the depth check."""
    pending: list[Any] = [body]
    while pending:
        node = pending.pop()
        texts = [node] if isinstance(node, str) else list(node) if isinstance(node, dict) else []
        for text in texts:
            try:
                text.encode()
            except UnicodeEncodeError:
                return f"the string {text[:40]!r} holds an unpaired surrogate"
        if isinstance(node, dict):
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return None


def header(headers: WireHeaders | None, name: str) -> bytes | None:
    """The first value of header `name` (None when absent or null)."""
    return next((raw for key, raw in headers or () if key == name), None)


def _load(value: bytes | None, headers: WireHeaders | None, expected_type: str) -> dict[str, Any]:
    if not value:
        raise DecodeError("EmptyMessage", "the message has no value" if value is None else "the value is empty")
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
        body = json.loads(
            value.decode("utf-8"),
            parse_constant=_refuse_constant,
            parse_float=_finite_number,
            object_pairs_hook=_refuse_repeated_keys,
        )
    except RecursionError:
        raise DecodeError("TooDeep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DecodeError("NotJson", str(exc)) from None
    surrogate = _unpaired_surrogate(body)
    if surrogate is not None:
        raise DecodeError("NotJson", surrogate)
    if not isinstance(body, dict):
        raise DecodeError("NotAnObject", f"the body is a JSON {type(body).__name__}")
    if nested_deeper_than(body, MAX_JSON_DEPTH):
        raise DecodeError("TooDeep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def _validate(model: type[Command] | type[Reply], value: bytes) -> Any:
    try:
        # strict: no coercion between JSON types; by alias only: `saga_uid` is not `sagaUid` on the wire.
        return model.model_validate_json(value, strict=True, by_alias=True, by_name=False)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise DecodeError("SchemaViolation", f"{where}: {first['msg']} ({exc.error_count()} error(s))") from None


def decode_command(value: bytes | None, headers: WireHeaders | None = None) -> Command:
    body = _load(value, headers, COMMAND_TYPE)
    assert value is not None
    for field, check in (("payload", payload_problem), ("input", input_problem), ("actionResult", result_problem)):
        part = body.get(field)
        problem = check(part) if isinstance(part, dict) else None
        if problem is not None:
            raise DecodeError(*problem)
    command: Command = _validate(Command, value)
    return command


def decode_reply(value: bytes | None, headers: WireHeaders | None = None) -> Reply:
    body = _load(value, headers, REPLY_TYPE)
    assert value is not None
    result = body.get("result")
    problem = result_problem(result) if isinstance(result, dict) else None
    if problem is not None:
        raise DecodeError(*problem)
    reply: Reply = _validate(Reply, value)
    return reply


def now() -> datetime:
    return datetime.now(UTC)
