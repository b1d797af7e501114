"""Identifiers derived from the saga log, so that every party computes the same ones.

`idempotency_key(saga, step)` pairs an action with its compensation at the participant.
`command_id(saga, step, kind, attempt)` is a command's `messageId`: deterministic, so a re-send of the
same attempt (after an operator restart) carries the same id, and a reply can be checked against the
attempts the log recorded (`commandId` must equal the id of the reply's own kind and attempt).
"""

from __future__ import annotations

import uuid
from typing import Final

from saga_protocol.kinds import CommandKind

#: The UUIDv5 namespace of command ids (itself uuid5(NAMESPACE_URL, "https://saga.dev/protocol/v2/command-id")).
COMMAND_ID_NAMESPACE: Final = uuid.UUID("51334efa-f75c-50b4-b3ec-f9e3e806841d")


def idempotency_key(saga_uid: str, step: str) -> str:
    """One key per (saga, step): the action and its compensation share it, so a participant can pair
    them (a compensation that overtakes its action leaves a tombstone under this key)."""
    return f"{saga_uid}/{step}"


def command_id(saga_uid: str, step: str, kind: CommandKind | str, attempt: int) -> str:
    """The `messageId` of attempt `attempt` of the `kind` command of `step`:
    UUIDv5(COMMAND_ID_NAMESPACE, "<sagaUid>/<step>/<kind>/<attempt>"), lower-case, hyphenated."""
    if attempt < 1:
        raise ValueError(f"attempts count from 1, not {attempt}")
    name = f"{saga_uid}/{step}/{CommandKind(kind).value}/{attempt}"
    return str(uuid.uuid5(COMMAND_ID_NAMESPACE, name))
