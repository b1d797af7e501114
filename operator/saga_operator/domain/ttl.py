"""When a finished saga is deleted: `spec.ttlSecondsAfterFinished`, like a Job's field of the same name.

Only a saga that ended well, Succeeded or Compensated (nothing left to do, nothing left to undo), is ever
deleted for its age. A Failed saga waits for a person (its effects may still be outstanding) and a Rejected
one stays for its author to read why: neither expires, whatever the TTL says. The saga's own TTL wins over
the operator's default (SAGA_TTL_SECONDS_AFTER_FINISHED); neither set: it is kept until someone deletes it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from saga_operator.domain.model import Phase, SagaSpec, SagaStatus

#: The phases a TTL deletes.
EXPIRING_PHASES: Final = frozenset({Phase.SUCCEEDED, Phase.COMPENSATED})


def ttl_seconds(spec: SagaSpec, default: int | None) -> int | None:
    """The TTL in force: the saga's own, else the operator's default (None: no TTL)."""
    return spec.ttl_seconds_after_finished if spec.ttl_seconds_after_finished is not None else default


def expires_at(spec: SagaSpec, status: SagaStatus, default: int | None) -> datetime | None:
    """When the saga is to be deleted (None: never, as things stand)."""
    seconds = ttl_seconds(spec, default)
    if seconds is None or status.phase not in EXPIRING_PHASES or status.finished_at is None:
        return None
    return status.finished_at + timedelta(seconds=seconds)


def expired(spec: SagaSpec, status: SagaStatus, default: int | None, now: datetime) -> bool:
    """Whether the saga is to be deleted now."""
    when = expires_at(spec, status, default)
    return when is not None and when <= now
