"""Protocol messages the harness makes up: a successful reply, a command for an action. Each gets a fresh
message id and the idempotency key of its saga and step, as the operator and the SDK would give it.

Used by the chaos run (the real-looking messages its malformed ones start from) and by the benchmark
(the happy path fed to the operator's pure core, the floor's Kafka round trips).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from saga_protocol import Command, CommandKind, Outcome, Reply, command_id, idempotency_key


def succeeded_reply(
    saga_uid: str,
    step: str,
    participant: str,
    *,
    kind: CommandKind = CommandKind.ACTION,
    attempt: int = 1,
    result: Mapping[str, Any] | None = None,
    sent_at: datetime | None = None,
) -> Reply:
    """`participant`'s reply that step `step` of saga `saga_uid` succeeded (sent now unless told)."""
    return Reply(
        message_id=str(uuid.uuid4()),
        saga_uid=saga_uid,
        step=step,
        kind=kind,
        attempt=attempt,
        idempotency_key=idempotency_key(saga_uid, step),
        command_id=command_id(saga_uid, step, kind, attempt),
        participant=participant,
        outcome=Outcome.SUCCEEDED,
        result=dict(result or {}),
        sent_at=sent_at or datetime.now(UTC),
    )


def action_command(
    saga_uid: str,
    step: str,
    action: str,
    payload: Mapping[str, Any],
    reply_topic: str,
    *,
    saga_namespace: str,
    saga_name: str,
) -> Command:
    """The first attempt of step `step`'s action, sent now."""
    return Command(
        message_id=str(uuid.uuid4()),
        saga_uid=saga_uid,
        saga_namespace=saga_namespace,
        saga_name=saga_name,
        step=step,
        kind=CommandKind.ACTION,
        action=action,
        attempt=1,
        idempotency_key=idempotency_key(saga_uid, step),
        payload=dict(payload),
        reply_topic=reply_topic,
        sent_at=datetime.now(UTC),
    )
