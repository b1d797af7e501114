"""Reading the buy-video saga's payload: `{"buyer": "alice", "video": "v-42", "price": 1500, "agent": "bob-agency"}`.

Money is integer cents: floats would make "the money balances" a matter of rounding. A payload that does
not fit is a business failure of the action (InvalidPayload): retrying the same payload cannot help.
"""

from __future__ import annotations

from typing import Any, Final

from saga_participants import BusinessError

INVALID_PAYLOAD: Final = "InvalidPayload"
#: A sanity bound, not a business rule: a typo of three extra zeros should not move a fortune.
MAX_PRICE_CENTS: Final = 100_000_000


def text(payload: dict[str, Any], field: str) -> str:
    value = payload.get(field)
    if not isinstance(value, str) or not value or len(value) > 253:
        raise BusinessError(INVALID_PAYLOAD, f"payload.{field} must be a non-empty string, not {value!r}")
    return value


def cents(payload: dict[str, Any], field: str) -> int:
    value = payload.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_PRICE_CENTS:
        raise BusinessError(
            INVALID_PAYLOAD,
            f"payload.{field} must be a positive integer of cents up to {MAX_PRICE_CENTS}, not {value!r}",
        )
    return value
