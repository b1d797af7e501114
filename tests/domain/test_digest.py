"""The status digest (saga_operator.domain.digest): HMAC-SHA256 under the operator's key over the canonical JSON
of the status without its digest, chained to the digest of the status it succeeds."""

from __future__ import annotations

import json

from domain_support import Saga, saga_spec, step

from saga_operator.domain import digest
from saga_operator.domain.model import Phase, SagaStatus

KEY = b"k" * 32
OTHER = b"o" * 32


def chain() -> list[SagaStatus]:
    """The statuses a saga's run writes, each signed and chained to the one before."""
    saga = Saga(saga_spec(step("a"), step("b")))
    written: list[SagaStatus] = []
    previous: str | None = None
    for act in (saga.start, lambda: saga.succeed("a"), lambda: saga.reply("b", result={"price": 1.0, "n": 2})):
        act()
        signed = digest.sign(saga.status, previous, KEY)
        written.append(signed)
        previous = signed.digest
        saga.status = signed
    return written


def test_each_write_verifies_and_names_the_one_before() -> None:
    written = chain()
    assert all(digest.verify(status, KEY) for status in written)
    assert written[0].previous_digest is None
    assert [s.previous_digest for s in written[1:]] == [s.digest for s in written[:-1]]
    assert written[-1].phase == Phase.SUCCEEDED


def test_a_status_read_back_from_json_still_verifies() -> None:
    """What the API server stores and gives back (1.0 comes back as 1; dates as strings)."""
    last = chain()[-1]
    stored = json.loads(json.dumps(last.to_patch()).replace("1.0", "1"))
    assert digest.verify(SagaStatus.model_validate(stored), KEY)


def test_a_forged_change_does_not_verify() -> None:
    running = chain()[1]
    forged = running.model_copy(update={"phase": Phase.SUCCEEDED, "seq": running.seq + 1})
    assert forged.digest == running.digest and not digest.verify(forged, KEY)


def test_a_status_signed_with_another_key_or_unsigned_does_not_verify() -> None:
    status = chain()[1]
    assert not digest.verify(digest.sign(status, status.previous_digest, OTHER), KEY)
    assert not digest.verify(status.model_copy(update={"digest": None}), KEY)


def test_the_chain_is_part_of_what_is_signed() -> None:
    status = chain()[1]
    rechained = status.model_copy(update={"previous_digest": "v1:" + "0" * 64})
    assert not digest.verify(rechained, KEY)


def test_the_canonical_form_ignores_key_order_and_the_digest() -> None:
    status = chain()[1]
    assert b'"digest"' not in digest.canonical_json(status)
    assert digest.canonical_json(status) == digest.canonical_json(status.model_copy(update={"digest": "v1:x"}))


def test_a_status_nobody_wrote_needs_no_digest() -> None:
    assert digest.is_unwritten(SagaStatus())
    assert not digest.is_unwritten(chain()[0])
