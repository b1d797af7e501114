"""Pure checks: the operator's before it applies a reply, a participant's before it applies a command.

A reply is applied only if it came on the reply topic of the step's participant, names that participant,
carries the step's idempotency key, is keyed by its saga uid, and its `commandId` is the command id of
its own (kind, attempt); then the saga log decides whether that attempt was sent (FutureAttempt,
CompensationNotSent) and whether the answer still matters (Duplicate, SagaFinished, Late).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from saga_protocol.ids import command_id, idempotency_key
from saga_protocol.kinds import CommandKind, Outcome
from saga_protocol.messages import Command, Reply
from saga_protocol.topics import reply_topic


def expected_command_id(reply: Reply) -> str:
    """The id of the command this reply claims to answer: that of its saga, step, kind and attempt."""
    return command_id(reply.saga_uid, reply.step, reply.kind, reply.attempt)


def reply_answers(reply: Reply, sent_command_id: str) -> bool:
    """Whether `reply` answers the command whose `messageId` was `sent_command_id`."""
    return reply.command_id == sent_command_id


def reply_problem(reply: Reply, *, topic: str, participant: str, key: bytes | None = None) -> tuple[str, str] | None:
    """(reason, detail) when `reply`, read from `topic` with record key `key`, cannot be the answer of the
    step's `participant` to a command of this protocol; None when it may be (the log decides the rest)."""
    expected_topic = reply_topic(participant)
    if topic != expected_topic:
        return "WrongReplyTopic", f"the reply came on {topic}, {participant}'s replies come on {expected_topic}"
    if reply.participant != participant:
        return "ParticipantMismatch", f"participant is {reply.participant!r}, the step's is {participant!r}"
    expected_key = idempotency_key(reply.saga_uid, reply.step)
    if reply.idempotency_key != expected_key:
        return "IdempotencyKeyMismatch", f"idempotencyKey {reply.idempotency_key!r}, expected {expected_key!r}"
    if key is not None and key != reply.saga_uid.encode():
        return "KeyMismatch", f"record key {key!r} is not the saga uid {reply.saga_uid!r}"
    expected_id = expected_command_id(reply)
    if not reply_answers(reply, expected_id):
        return (
            "CommandIdMismatch",
            f"commandId {reply.command_id!r} is not the id of {reply.kind.value} attempt {reply.attempt} "
            f"({expected_id})",
        )
    return None


#: The refusals a participant answers (besides dead-lettering the command): everything but
#: UntrustedReplyTopic, whose command is not answered on any topic.
ANSWERED_REFUSALS: Final = frozenset({"KeyMismatch", "IdempotencyKeyMismatch", "NamespaceNotAllowed", "UnknownAction"})


def refusal_outcome(kind: CommandKind) -> Outcome:
    """How a participant answers a command it refuses before running it: an action `failed` (it will never
    apply), a compensation `error` (compensations cannot fail: the operator retries, then parks the saga)."""
    return Outcome.FAILED if kind is CommandKind.ACTION else Outcome.ERROR


def command_problem(
    command: Command,
    *,
    key: bytes | None,
    trusted_reply_topic: str,
    allowed_namespaces: Collection[str] | None = None,
    handlers: Collection[str] | None = None,
) -> tuple[str, str] | None:
    """(reason, detail) when a participant must refuse a decoded `command` (docs/protocol.md, "Checks"),
    in the protocol's order; None when it may apply it. `handlers`: the names of this kind it has (None:
    not checked here); `allowed_namespaces`: None when every namespace may command it."""
    if command.reply_topic != trusted_reply_topic:
        return (
            "UntrustedReplyTopic",
            f"replyTopic {command.reply_topic!r}, this participant replies on {trusted_reply_topic}",
        )
    if key != command.saga_uid.encode():
        return "KeyMismatch", f"record key {key!r} is not the saga uid {command.saga_uid!r}"
    expected_key = idempotency_key(command.saga_uid, command.step)
    if command.idempotency_key != expected_key:
        return "IdempotencyKeyMismatch", f"idempotencyKey {command.idempotency_key!r}, expected {expected_key!r}"
    if allowed_namespaces is not None and command.saga_namespace not in allowed_namespaces:
        return "NamespaceNotAllowed", f"namespace {command.saga_namespace!r} may not command this participant"
    if handlers is not None and command.action not in handlers:
        return "UnknownAction", f"no {command.kind.value} named {command.action!r} (there are {sorted(handlers)})"
    return None
