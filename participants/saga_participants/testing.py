"""Test a participant's handlers without Kafka: build commands, run them, look at the replies.

    from saga_participants.testing import compensation_of, make_command, run_command

    async def test_a_debit_and_its_refund(tmp_path):
        p = users.participant(tmp_path / "users.db")
        debit = make_command(action="debit", step="debit-buyer", payload={"buyer": "alice", "price": 1500})
        async with p:                                   # opens the store once for several commands
            reply = await run_command(p, debit)
            assert reply.outcome is Outcome.SUCCEEDED
            again = await run_command(p, debit)         # a redelivery: replayed, not applied twice
            assert again.duplicate
            undo = await run_command(p, compensation_of(debit, "refund"))

`run_command` runs everything the participant does with a command but the transport: the checks it
answers at once (an unknown action, a foreign idempotency key, a namespace it does not admit), its
interceptors, the store's inbox in one transaction with the handler, the in-process retries. It returns the
Reply the participant would produce. A command made without `reply_topic=` (or `participant=`) is
addressed to whichever participant runs it, as the operator would address it; one naming another reply
topic than the participant trusts is dead-lettered unanswered: `run_command` raises `Unanswered`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

from saga_participants._faults import FaultInjection
from saga_participants._participant import Participant
from saga_protocol import Command, CommandKind, Reply
from saga_protocol import idempotency_key as key_of
from saga_protocol import reply_topic as reply_topic_of

__all__ = ["UNADDRESSED", "FaultInjection", "Unanswered", "compensation_of", "make_command", "run_command"]

#: The replyTopic of a command made without `reply_topic=` or `participant=`: `run_command` addresses it
#: to the participant that runs it (its trusted reply topic). No participant's own (names have no dots).
UNADDRESSED: Final = "saga.replies.unaddressed.command"


class Unanswered(Exception):
    """The participant would dead-letter the command without replying (it names an untrusted replyTopic)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def make_command(
    *,
    action: str,
    step: str = "step",
    kind: CommandKind = CommandKind.ACTION,
    payload: dict[str, Any] | None = None,
    saga_uid: str | None = None,
    attempt: int = 1,
    namespace: str = "default",
    saga_name: str | None = None,
    participant: str | None = None,
    reply_topic: str | None = None,
    idempotency_key: str | None = None,
) -> Command:
    """A command as the operator sends it: a fresh saga uid unless given, the idempotency key
    `<sagaUid>/<step>` unless given (a wrong one is refused: IdempotencyKeyMismatch), the reply topic
    `reply_topic`, else `saga.replies.<participant>`, else UNADDRESSED (run_command's participant's own)."""
    uid = saga_uid or str(uuid.uuid4())
    if reply_topic is None:
        reply_topic = reply_topic_of(participant) if participant is not None else UNADDRESSED
    return Command(
        message_id=str(uuid.uuid4()),
        saga_uid=uid,
        saga_namespace=namespace,
        saga_name=saga_name or f"saga-{uid[:8]}",
        step=step,
        kind=kind,
        action=action,
        attempt=attempt,
        idempotency_key=idempotency_key if idempotency_key is not None else key_of(uid, step),
        payload=payload if payload is not None else {},
        reply_topic=reply_topic,
        sent_at=datetime.now(UTC),
    )


def compensation_of(command: Command, action: str, *, attempt: int = 1) -> Command:
    """The compensation of `command`'s step (the same idempotency key), running handler `action`."""
    return command.model_copy(
        update={
            "message_id": str(uuid.uuid4()),
            "kind": CommandKind.COMPENSATION,
            "action": action,
            "attempt": attempt,
            "sent_at": datetime.now(UTC),
        }
    )


async def run_command(participant: Participant, command: Command, *, key: bytes | None = None) -> Reply:
    """The reply `participant` gives `command` (`key`: the Kafka message key, default the saga uid).

    Uses the participant's store if it is open (`async with participant:`), else opens it for this call.
    A command refused before the inbox (no such handler, wrong key) gets the refusal the participant would
    send. Raises Unanswered for a command the participant would only dead-letter (UntrustedReplyTopic).
    """
    pipeline = participant._pipeline
    if command.reply_topic == UNADDRESSED:
        command = command.model_copy(update={"reply_topic": participant.reply_topic})
    refusal = pipeline.refusal(command, key if key is not None else command.saga_uid.encode())
    if refusal is not None:
        reply = pipeline.refusal_reply(command, refusal)
        if reply is None:
            raise Unanswered(refusal.reason, refusal.detail)
        return reply
    if participant._store_open:
        return await pipeline.process(command)
    async with participant:
        return await pipeline.process(command)
