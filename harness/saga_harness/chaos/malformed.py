"""Malformed messages: made-up replies for the operator and commands for the participants, each kind with
the dead-letter reasons that are right for it, and the injector that produces them marked with a header."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaProducer

from saga_protocol import (
    COMMAND_TYPE,
    REPLY_TYPE,
    CommandKind,
    encode_command,
    encode_reply,
)

from ..messages import action_command, succeeded_reply
from ..topics import KafkaClient, options

#: The header that marks a message the injector made up; dead-letter topics keep the original headers.
MARKER: Final = "chaos_injected"
#: The result of every made-up reply.
MADE_UP: Final = {"chaos": True}


@dataclass
class Injected:
    id: str
    topic: str
    kind: str
    #: The dead-letter reasons that are right for this message.
    expected: tuple[str, ...]
    saga: str | None = None
    acked: bool = False


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    for _ in range(depth):
        node = {"n": node}
    return node


Made = tuple[bytes | None, list[tuple[str, bytes | None]], tuple[str, ...]]

#: Malformed commands, each kind also a malformed reply: broken bytes, a wrong body, a wrong header.
COMMAND_KINDS: Final = (
    "not-json",
    "not-an-object",
    "wrong-schema",
    "wrong-type",
    "null-type-header",
    "oversized",
    "empty",
    "nested-too-deep",
)
#: Malformed replies: the same kinds, and replies well-formed but wrong for the saga they name. Those in
#: NEEDS_SAGA need a live saga. The expected dead-letter reasons are in `make_malformed_reply`.
REPLY_KINDS: Final = (
    *COMMAND_KINDS,
    "unknown-saga",
    "unknown-step",
    "future-attempt",
    "future-compensation",
)
NEEDS_SAGA: Final = frozenset({"unknown-step", "future-attempt", "future-compensation"})


def make_malformed_reply(kind: str, saga_uid: str | None, participant: str) -> Made:
    """(value, headers, expected dead-letter reasons) of one malformed reply. `saga_uid` names a saga
    the operator knows (started) for the kinds that need one."""
    uid = saga_uid if saga_uid and kind in NEEDS_SAGA else str(uuid.uuid4())
    real = succeeded_reply(uid, "debit-buyer", participant, result=MADE_UP)
    _, body, headers = encode_reply(real)
    plain: list[tuple[str, bytes | None]] = list(headers)
    if kind == "not-json":
        return b"\xff\xfe{not json", plain, ("NotJson",)
    if kind == "not-an-object":
        return b'["a", "list"]', plain, ("NotAnObject",)
    if kind == "wrong-schema":
        return json.dumps({"hello": "saga", "attempt": "one"}).encode(), plain, ("SchemaViolation",)
    if kind == "wrong-type":
        typed = [(k, COMMAND_TYPE.encode() if k == "ce_type" else v) for k, v in plain]
        return body, typed, ("WrongType",)
    if kind == "null-type-header":
        return body, [(k, None if k == "ce_type" else v) for k, v in plain], ("WrongType",)
    if kind == "oversized":
        return b'{"pad": "' + b"x" * (300 * 1024) + b'"}', plain, ("Oversized",)
    if kind == "empty":
        return None, plain, ("EmptyMessage",)
    if kind == "nested-too-deep":
        deep = json.loads(body)
        deep["result"] = _nested(200)
        return json.dumps(deep).encode(), plain, ("TooDeep",)
    if kind == "unknown-saga":
        return body, plain, ("UnknownSaga",)
    if kind == "unknown-step":
        step = succeeded_reply(uid, "no-such-step", participant, result=MADE_UP)
        return encode_reply(step)[1], plain, ("UnknownStep",)
    if kind == "future-attempt":
        future = succeeded_reply(uid, "debit-buyer", participant, attempt=1_000_000, result=MADE_UP)
        return encode_reply(future)[1], plain, ("FutureAttempt",)
    if kind == "future-compensation":
        future = succeeded_reply(
            uid, "debit-buyer", participant, kind=CommandKind.COMPENSATION, attempt=1_000_000, result=MADE_UP
        )
        return encode_reply(future)[1], plain, ("FutureAttempt", "CompensationNotSent")
    raise ValueError(f"unknown malformed reply kind {kind!r}")


def make_malformed_command(kind: str, participant: str, reply_topic: str) -> Made:
    """(value, headers, expected dead-letter reasons) of one malformed command for `participant`."""
    payload = {"buyer": "nobody", "price": 1}
    command = action_command(
        str(uuid.uuid4()), "debit-buyer", "debit", payload, reply_topic, saga_namespace="chaos", saga_name="made-up"
    )
    _, body, headers = encode_command(command)
    plain: list[tuple[str, bytes | None]] = list(headers)
    if kind == "wrong-type":
        return body, [(k, REPLY_TYPE.encode() if k == "ce_type" else v) for k, v in plain], ("WrongType",)
    if kind == "nested-too-deep":
        deep = command.model_copy(update={"payload": _nested(200)})
        return encode_command(deep)[1], plain, ("TooDeep",)
    if kind in ("not-json", "not-an-object", "wrong-schema", "null-type-header", "oversized", "empty"):
        value, _, expected = make_malformed_reply(kind, None, participant)
        if kind == "null-type-header":
            return body, [(k, None if k == "ce_type" else v) for k, v in plain], expected
        return value, plain, expected
    raise ValueError(f"unknown malformed command kind {kind!r}")


class Injector:
    """Produces malformed messages, each marked with a header so that its dead letter can be found."""

    def __init__(self, kafka: KafkaClient) -> None:
        #: as whom it writes (the admin: ``kafka_access.client_options``)
        self.kafka = kafka
        self.sent: list[Injected] = []
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        # max_request_size: room for the oversized messages (the broker takes up to 1 MiB).
        self._producer = AIOKafkaProducer(
            **options(self.kafka), acks="all", request_timeout_ms=10_000, max_request_size=1_000_000
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()

    async def send(self, topic: str, kind: str, made: Made, saga: str | None = None) -> Injected:
        assert self._producer is not None
        value, headers, expected = made
        item = Injected(uuid.uuid4().hex, topic, kind, expected, saga)
        self.sent.append(item)
        key = (saga or item.id).encode()
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(topic, value, key=key, headers=[*headers, (MARKER, item.id.encode())]),
                timeout=15,
            )
        except Exception:
            return item  # not acknowledged (broker down): it may still arrive; then it is counted too
        item.acked = True
        return item
