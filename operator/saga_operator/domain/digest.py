"""The status digest: proof that a stored status is one the operator wrote.

`digest` is HMAC-SHA256, under the operator's key, of the canonical JSON of the status without its digest;
that JSON includes `previousDigest`, the digest of the status it succeeds, so each write commits to the chain
before it. Anyone who can write the status subresource can change it, but without the key cannot sign the
change: the operator does not adopt it (docs/architecture.md). Pure: the key is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from saga_operator.domain.model import SagaStatus

_PREFIX = "v1:"


def _canonical(value: Any) -> Any:
    # The API server stores JSON numbers as int64 or float64 and writes 1.0 back as 1: integral floats are
    # written as integers here, so a status reads back to the same bytes.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def canonical_json(status: SagaStatus) -> bytes:
    """The bytes that are signed: the status as JSON without its digest, keys sorted, no whitespace."""
    body = status.to_patch()
    body.pop("digest", None)
    return json.dumps(_canonical(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compute(status: SagaStatus, key: bytes) -> str:
    return _PREFIX + hmac.new(key, canonical_json(status), hashlib.sha256).hexdigest()


def sign(status: SagaStatus, previous: str | None, key: bytes) -> SagaStatus:
    """`status` chained to the digest `previous` (the status it replaces) and signed."""
    chained = status.model_copy(update={"previous_digest": previous, "digest": None})
    chained.digest = compute(chained, key)
    return chained


def verify(status: SagaStatus, key: bytes) -> bool:
    """Whether the status carries the digest the operator's key gives it."""
    return status.digest is not None and hmac.compare_digest(status.digest, compute(status, key))


def is_unwritten(status: SagaStatus) -> bool:
    """A status nobody has written yet (a new saga): there is nothing to verify."""
    return status == SagaStatus()
