"""The participant SDK's names that are not (yet) part of its public face, in one place.

The audit reads the dead-letter topics the way the SDK writes them. `saga_participants` does not export
these two names; when it does, this module is the only one to change.
"""

from __future__ import annotations

from typing import Final

from saga_participants.sdk import DLQ_REASON, REPLY_UNDELIVERABLE

#: The dead-letter reason header, the same on both sides (saga_operator.adapters.kafka, saga_participants.sdk).
#: A participant also dead-letters a good command whose reply it could not produce in time, REPLY_UNDELIVERABLE
#: (the broker was down): its outcome is stored, and the operator's retry gets it replayed.
DLQ_REASON_HEADER: Final = DLQ_REASON

__all__ = ["DLQ_REASON_HEADER", "REPLY_UNDELIVERABLE"]
