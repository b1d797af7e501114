"""Rules about what a participant must refuse: malformed records, foreign reply topics, mismatched keys,
unknown handlers and namespaces, each dead-lettered with its reason (and answered only where it must be)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from saga_conformance.config import FOREIGN_REPLY_TOPIC
from saga_conformance.kit import Kit, Record, Saga, describe
from saga_conformance.report import Verdict, failed, not_tested, passed
from saga_conformance.wire import Sent
from saga_protocol import MAX_MESSAGE_BYTES, MAX_PAYLOAD_DEPTH, CommandKind, refusal_outcome

ACTION, COMPENSATION = CommandKind.ACTION, CommandKind.COMPENSATION
DLQ_HEADERS = ("dlq_reason", "dlq_detail", "dlq_source", "dlq_topic", "dlq_partition", "dlq_offset", "dlq_time")
UNKNOWN_HANDLER = "conformance-no-such-handler"


def _nested(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels - 1):
        node["n"] = {}
        node = node["n"]
    return root


def _body(saga: Saga) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(Kit.record_of(saga.command(ACTION)).value or b"")
    return value


def _with(saga: Saga, value: bytes | None, v1: bool = False) -> Record:
    record = Kit.record_of(saga.command(ACTION))
    headers = [(n, b"dev.saga.command.v1" if v1 and n == "ce_type" else raw) for n, raw in record.headers]
    return Record(record.key, value, headers)


MALFORMED: dict[str, tuple[str, Callable[[Saga], Record]]] = {
    "dlq-empty-null": ("EmptyMessage", lambda s: _with(s, None)),
    "dlq-empty-value": ("EmptyMessage", lambda s: _with(s, b"")),
    "dlq-not-json": ("NotJson", lambda s: _with(s, b"\xff\xfe{not json")),
    "dlq-oversized": (
        "Oversized",
        lambda s: _with(s, json.dumps({**_body(s), "padding": "x" * MAX_MESSAGE_BYTES}).encode()),
    ),
    "dlq-too-deep": (
        "TooDeep",
        lambda s: _with(s, json.dumps({**_body(s), "payload": _nested(MAX_PAYLOAD_DEPTH + 1)}).encode()),
    ),
    "dlq-wrong-type": ("WrongType", lambda s: _with(s, Kit.record_of(s.command(ACTION)).value, v1=True)),
    "dlq-missing-field": (
        "SchemaViolation",
        lambda s: _with(s, json.dumps({k: v for k, v in _body(s).items() if k != "idempotencyKey"}).encode()),
    ),
}


async def _dead_lettered(kit: Kit, record: Record, reason: str, sent: Sent) -> list[str]:
    letters = await kit.dead_letters(record.key)
    if not letters:
        return [f"nothing on {kit.dlq_topic} within {kit.cfg.reply_timeout:.0f}s"]
    kit.dead_letters_sent.append((sent, record, reason))
    got = letters[0].header("dlq_reason")
    return [] if got == reason.encode() else [f"dlq_reason {got!r}, expected {reason!r}"]


def malformed(rule: str) -> Callable[[Kit], Any]:
    reason, build = MALFORMED[rule]

    async def check(kit: Kit) -> Verdict:
        saga = kit.new_saga()
        record = build(saga)
        sent = await kit.send_record(record)
        problems = await _dead_lettered(kit, record, reason, sent)
        replies = await kit.replies(saga.uid, 1, within=kit.cfg.quiet, settle=False)
        problems += [f"answered: {describe(s)}" for s in replies]
        return failed(rule, "; ".join(problems)) if problems else passed(rule, f"dead-lettered {reason}, no reply")

    return check


async def dlq_headers(kit: Kit) -> Verdict:
    """Every dead letter the kit caused so far carries the header set, in order, then the original headers."""
    rule = "dlq-headers"
    if not kit.dead_letters_sent:
        saga = kit.new_saga()
        record = _with(saga, b"\xff\xfe{not json")
        await _dead_lettered(kit, record, "NotJson", await kit.send_record(record))
    if not kit.dead_letters_sent:
        return failed(rule, "no dead letter to look at")
    problems: list[str] = []
    for sent, record, reason in kit.dead_letters_sent:
        letter = kit.wire.matching(kit.dlq_topic, lambda s, key=record.key: s.key == key)[0]  # type: ignore[misc]
        headers = [(n, v) for n, v in letter.headers if n != "dlq_truncated"]
        names = tuple(n for n, _ in headers[: len(DLQ_HEADERS)])
        found: list[str] = []
        if names != DLQ_HEADERS:
            found.append(f"headers begin {list(names)}, expected {list(DLQ_HEADERS)}")
        values = dict(headers[: len(DLQ_HEADERS)])
        expected = {
            "dlq_reason": reason,
            "dlq_source": kit.cfg.participant,
            "dlq_topic": kit.command_topic,
            "dlq_partition": str(sent.partition),
            "dlq_offset": str(sent.offset),
        }
        found += [f"{n} {values.get(n)!r}, expected {v!r}" for n, v in expected.items() if values.get(n) != v.encode()]
        found += _utc_time(values.get("dlq_time"))
        if headers[len(DLQ_HEADERS) :] != record.headers:
            found.append("the original headers do not follow unchanged")
        if letter.value not in (record.value, b"" if record.value is None else record.value):
            found.append("the value is not the original bytes")
        problems += found
    count = len(kit.dead_letters_sent)
    if not problems:
        return passed(rule, f"{count} dead letters checked")
    distinct = {p: problems.count(p) for p in problems}  # the same fault in every letter is said once
    return failed(rule, "; ".join(f"{p} ({n} of {count} dead letters)" for p, n in distinct.items()))


def _utc_time(raw: bytes | None) -> list[str]:
    try:
        moment = datetime.fromisoformat((raw or b"").decode())
    except ValueError:
        return [f"dlq_time {raw!r} is not RFC 3339"]
    offset = moment.utcoffset()
    return [] if offset is not None and not offset else [f"dlq_time {raw!r} is not UTC"]


async def _refused(kit: Kit, record: Record, saga: Saga, kind: CommandKind, reason: str) -> list[str]:
    """Dead-lettered with `reason` and answered with the refusal outcome and reason."""
    sent = await kit.send_record(record)
    problems = await _dead_lettered(kit, record, reason, sent)
    replies = await kit.replies(saga.uid, 1)
    if len(replies) != 1 or replies[0].reply is None:
        return [*problems, f"{len(replies)} decodable replies, expected 1 ({kind.value} refusal)"]
    reply = replies[0].reply
    outcome = refusal_outcome(kind)
    if reply.outcome is not outcome or reply.error is None or reply.error.reason != reason:
        problems.append(f"answered {describe(replies[0])}, expected {outcome.value} {reason}")
    return problems


async def unknown_action(kit: Kit) -> Verdict:
    rule = "unknown-action"
    problems: list[str] = []
    for kind in (ACTION, COMPENSATION):
        saga = kit.new_saga()
        record = Kit.record_of(saga.command(kind, action=UNKNOWN_HANDLER))
        problems += [f"{kind.value}: {p}" for p in await _refused(kit, record, saga, kind, "UnknownAction")]
    return (
        failed(rule, "; ".join(problems))
        if problems
        else passed(rule, "dead-lettered; action failed, compensation error")
    )


async def key_mismatch(kit: Kit) -> Verdict:
    rule = "key-mismatch"
    saga = kit.new_saga()
    record = Kit.record_of(saga.command(ACTION))
    record = Record(f"not-{saga.uid}".encode(), record.value, record.headers)
    problems = await _refused(kit, record, saga, ACTION, "KeyMismatch")
    return failed(rule, "; ".join(problems)) if problems else passed(rule, "dead-lettered and answered failed")


async def idempotency_key_mismatch(kit: Kit) -> Verdict:
    rule = "idempotency-key-mismatch"
    saga = kit.new_saga()
    record = Kit.record_of(saga.command(ACTION, idempotency_key=f"{saga.uid}/another-step"))
    problems = await _refused(kit, record, saga, ACTION, "IdempotencyKeyMismatch")
    return failed(rule, "; ".join(problems)) if problems else passed(rule, "dead-lettered and answered failed")


async def namespace_not_allowed(kit: Kit) -> Verdict:
    rule = "namespace-not-allowed"
    namespace = kit.cfg.foreign_namespace
    if namespace is None:
        return not_tested(rule, "no --foreign-namespace: the participant admits every namespace")
    problems: list[str] = []
    for kind in (ACTION, COMPENSATION):
        saga = kit.new_saga()
        record = Kit.record_of(saga.command(kind, saga_namespace=namespace))
        problems += [f"{kind.value}: {p}" for p in await _refused(kit, record, saga, kind, "NamespaceNotAllowed")]
    return (
        failed(rule, "; ".join(problems))
        if problems
        else passed(rule, "dead-lettered; action failed, compensation error")
    )


async def untrusted_reply_topic(kit: Kit) -> Verdict:
    rule = "untrusted-reply-topic"
    saga = kit.new_saga()
    record = Kit.record_of(saga.command(ACTION, reply_topic=FOREIGN_REPLY_TOPIC))
    sent = await kit.send_record(record)
    problems = await _dead_lettered(kit, record, "UntrustedReplyTopic", sent)
    replies = await kit.replies(saga.uid, 1, within=kit.cfg.quiet, settle=False)
    problems += [f"answered on {kit.reply_topic}: {describe(s)}" for s in replies]
    foreign = kit.foreign_replies(saga.uid)
    if foreign:
        problems.append(f"{len(foreign)} record(s) written to {FOREIGN_REPLY_TOPIC}")
    return failed(rule, "; ".join(problems)) if problems else passed(rule, "dead-lettered, answered on no topic")
