"""Saga participants: a small SDK (`saga_participants.sdk`) and the buy-video services built on it.

See docs/participants.md for how to write a participant and the rules the SDK enforces.
"""

from saga_participants.inbox import (
    ALREADY_COMPENSATED,
    ActionHandler,
    BusinessError,
    CompensationHandler,
    Decision,
    Disposition,
    Inbox,
    InboxRecord,
    open_database,
)
from saga_participants.sdk import Participant, RetryPolicy, Stopping

__all__ = [
    "ALREADY_COMPENSATED",
    "ActionHandler",
    "BusinessError",
    "CompensationHandler",
    "Decision",
    "Disposition",
    "Inbox",
    "InboxRecord",
    "Participant",
    "RetryPolicy",
    "Stopping",
    "open_database",
]
