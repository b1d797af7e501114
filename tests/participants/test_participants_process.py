"""What a participant answers, without Kafka (saga_participants.testing.run_command): in-process retries,
replies, the opt-in fault injection (the `simulate` knob), command checks, registration."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from participants_support import compensation_of, make_command, unique

from saga_participants import BusinessError, Participant, ParticipantSettings, RetryPolicy
from saga_participants.testing import FaultInjection, Unanswered, run_command
from saga_protocol import Command, CommandKind, Outcome, Reply, decode_reply, encode_reply

FAST = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02)
SCHEMA = "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, note TEXT);"


class Flaky:
    """An action that raises for its first `failures` runs, then records an effect."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0

    def __call__(self, tx: sqlite3.Connection, command: Command) -> dict[str, Any]:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"boom #{self.runs}")
        tx.execute("INSERT INTO effects VALUES (?, ?)", (command.idempotency_key, "done"))
        return {"runs": self.runs}


def participant(tmp_path: Path, flaky: Flaky | None = None, **options: Any) -> Participant:
    p = Participant(unique("things"), database=tmp_path / "things.db", schema=SCHEMA, retry=FAST, **options)
    p.action("do")(flaky or Flaky(0))

    @p.compensation("undo")
    def undo(tx: sqlite3.Connection, command: Command, done: dict[str, Any]) -> None:
        tx.execute("DELETE FROM effects WHERE key = ?", (command.idempotency_key,))

    @p.action("refuse")
    def refuse(tx: sqlite3.Connection, command: Command) -> None:
        raise BusinessError("NotToday", "refused on purpose")

    return p


def effects(tmp_path: Path) -> int:
    conn = sqlite3.connect(tmp_path / "things.db")
    try:
        value: int = conn.execute("SELECT count(*) FROM effects").fetchone()[0]
        return value
    finally:
        conn.close()


def roundtrip(reply: Reply) -> Reply:
    """What the operator would decode: proves the reply is valid on the wire."""
    _, value, headers = encode_reply(reply)
    return decode_reply(value, headers)


async def test_an_unexpected_exception_is_retried_in_process_then_replied_error(tmp_path: Path) -> None:
    flaky = Flaky(failures=10)
    p = participant(tmp_path, flaky)
    command = make_command(action="do", step="one")
    async with p:
        reply = roundtrip(await run_command(p, command))

    assert flaky.runs == FAST.attempts
    assert reply.outcome is Outcome.ERROR and not reply.duplicate
    assert reply.error is not None and reply.error.reason == "RuntimeError" and "boom #3" in reply.error.message
    assert effects(tmp_path) == 0
    assert p.metrics.value("saga_participant_handler_retries_total", kind="action") == FAST.attempts - 1
    assert p.metrics.value("saga_participant_commands_total", kind="action", outcome="error") == 1


async def test_an_error_stores_nothing_so_the_operators_retry_runs_the_handler_again(tmp_path: Path) -> None:
    flaky = Flaky(failures=FAST.attempts)  # fails every in-process run of the first delivery only
    p = participant(tmp_path, flaky)
    command = make_command(action="do", step="one")
    async with p:
        first = await run_command(p, command)
        second = await run_command(p, command.model_copy(update={"attempt": 2, "message_id": "retry"}))

    assert first.outcome is Outcome.ERROR
    assert second.outcome is Outcome.SUCCEEDED and not second.duplicate
    assert second.result == {"runs": FAST.attempts + 1}
    assert effects(tmp_path) == 1


async def test_a_transient_failure_that_heals_in_process_succeeds(tmp_path: Path) -> None:
    flaky = Flaky(failures=1)
    p = participant(tmp_path, flaky)
    async with p:
        reply = await run_command(p, make_command(action="do", step="one"))

    assert reply.outcome is Outcome.SUCCEEDED and reply.result == {"runs": 2}
    assert flaky.runs == 2


async def test_a_replay_echoes_the_redelivered_attempt_with_a_fresh_message_id(tmp_path: Path) -> None:
    p = participant(tmp_path)
    command = make_command(action="do", step="one")
    async with p:
        first = await run_command(p, command)
        replay = roundtrip(await run_command(p, command.model_copy(update={"attempt": 3, "message_id": "again"})))

    assert (first.duplicate, replay.duplicate) == (False, True)
    assert replay.attempt == 3
    assert replay.message_id != first.message_id
    assert (replay.outcome, replay.result, replay.idempotency_key) == (
        first.outcome,
        first.result,
        first.idempotency_key,
    )
    assert replay.participant == p.name
    assert p.metrics.value("saga_participant_duplicates_total", kind="action") == 1


async def test_business_failure_is_replied_failed_without_retries(tmp_path: Path) -> None:
    p = participant(tmp_path)
    async with p:
        reply = roundtrip(await run_command(p, make_command(action="refuse", step="one")))

    assert reply.outcome is Outcome.FAILED and reply.result is None
    assert reply.error is not None and (reply.error.reason, reply.error.message) == ("NotToday", "refused on purpose")
    assert p.metrics.value("saga_participant_handler_retries_total", kind="action") == 0


async def test_tombstone_and_refusal_are_counted(tmp_path: Path) -> None:
    p = participant(tmp_path)
    action = make_command(action="do", step="one")
    async with p:
        undo = await run_command(p, compensation_of(action, "undo"))
        late = await run_command(p, action)

    assert undo.outcome is Outcome.SUCCEEDED and undo.kind is CommandKind.COMPENSATION
    assert late.outcome is Outcome.FAILED and late.error is not None and late.error.reason == "AlreadyCompensated"
    assert effects(tmp_path) == 0
    assert p.metrics.value("saga_participant_tombstones_total") == 1
    assert p.metrics.value("saga_participant_refused_late_actions_total") == 1


def faulty(tmp_path: Path, flaky: Flaky | None = None) -> Participant:
    """A participant started with fault injection switched on, as the harness and the tests start theirs."""
    return participant(tmp_path, flaky, interceptors=[FaultInjection(max_delay=60.0)])


async def test_without_fault_injection_a_payloads_simulate_block_does_nothing(tmp_path: Path) -> None:
    """The default: a saga author cannot make a shared participant stall or fail for every tenant."""
    flaky = Flaky(failures=0)
    p = participant(tmp_path, flaky)
    knob = {"simulate": {p.name: {"delaySeconds": 30, "errorAttempts": 5}}}
    async with p:
        async with asyncio.timeout(5):  # a delay obeyed would take 30 s
            reply = await run_command(p, make_command(action="do", step="one", payload=knob))

    assert reply.outcome is Outcome.SUCCEEDED and reply.result == {"runs": 1}
    assert flaky.runs == 1


async def test_fault_injection_is_switched_on_by_the_settings(tmp_path: Path) -> None:
    p = participant(tmp_path, settings=ParticipantSettings(allow_fault_injection=True, max_fault_delay=0.0))
    knob = {"simulate": {p.name: {"delaySeconds": 30, "errorAttempts": 1}}}
    async with p:
        async with asyncio.timeout(5):  # max_fault_delay=0 caps the delay
            reply = await run_command(p, make_command(action="do", step="one", payload=knob))

    assert reply.outcome is Outcome.ERROR and reply.error is not None and reply.error.reason == "SimulatedFault"


async def test_simulated_errors_fail_the_first_attempts_only(tmp_path: Path) -> None:
    flaky = Flaky(failures=0)
    p = faulty(tmp_path, flaky)
    knob = {"simulate": {p.name: {"errorAttempts": 1}}}
    command = make_command(action="do", step="one", payload=knob)
    async with p:
        first = await run_command(p, command)
        second = await run_command(p, command.model_copy(update={"attempt": 2}))

    assert first.outcome is Outcome.ERROR and first.error is not None and first.error.reason == "SimulatedFault"
    assert second.outcome is Outcome.SUCCEEDED
    assert flaky.runs == 1  # the fault stands in for the handler: the real one ran once


async def test_a_simulated_delay_happens_before_anything_is_applied(tmp_path: Path) -> None:
    p = faulty(tmp_path)
    command = make_command(action="do", step="one", payload={"simulate": {p.name: {"delaySeconds": 30}}})
    async with p:
        task = asyncio.create_task(run_command(p, command))
        await asyncio.sleep(0.2)
        task.cancel()  # what stopping the participant does to the command in hand
        with pytest.raises(asyncio.CancelledError):
            await task

    assert effects(tmp_path) == 0


async def test_a_simulated_delay_is_capped(tmp_path: Path) -> None:
    p = participant(tmp_path, interceptors=[FaultInjection(max_delay=0.1)])
    command = make_command(action="do", step="one", payload={"simulate": {p.name: {"delaySeconds": 30}}})
    async with p:
        async with asyncio.timeout(5):
            reply = await run_command(p, command)

    assert reply.outcome is Outcome.SUCCEEDED


@pytest.mark.parametrize(
    "knob",
    [
        "not an object",
        {"PARTICIPANT": "not an object"},
        {"PARTICIPANT": {"delaySeconds": -1}},
        {"PARTICIPANT": {"delaySeconds": 1, "typo": 2}},
        {"PARTICIPANT": {"errorAttempts": 1.5}},
        {"PARTICIPANT": {"errorAttempts": 1, "kinds": ["sometimes"]}},
    ],
)
async def test_a_malformed_simulate_knob_is_ignored(tmp_path: Path, knob: Any) -> None:
    p = faulty(tmp_path)
    if isinstance(knob, dict):
        knob = {p.name if k == "PARTICIPANT" else k: v for k, v in knob.items()}
    async with p:
        reply = await run_command(p, make_command(action="do", step="one", payload={"simulate": knob}))

    assert reply.outcome is Outcome.SUCCEEDED


async def test_the_knob_for_another_participant_is_not_ours(tmp_path: Path) -> None:
    p = faulty(tmp_path)
    async with p:
        reply = await run_command(
            p, make_command(action="do", step="one", payload={"simulate": {"other": {"errorAttempts": 5}}})
        )

    assert reply.outcome is Outcome.SUCCEEDED


async def test_checks_name_what_cannot_be_processed(tmp_path: Path) -> None:
    """Commands the participant refuses before the inbox are answered at once (an action `failed`, a
    compensation `error`) and apply nothing; one naming an untrusted reply topic is not answered at all."""
    p = participant(tmp_path)
    good = make_command(action="do", step="one")

    async def refused(command: Command, key: bytes | None = None) -> tuple[Outcome, str]:
        reply = await run_command(p, command, key=key)
        assert reply.error is not None, reply
        return reply.outcome, reply.error.reason

    async with p:
        assert (await run_command(p, good, key=good.saga_uid.encode())).outcome is Outcome.SUCCEEDED
        assert await refused(make_command(action="fly", step="one")) == (Outcome.FAILED, "UnknownAction")
        # "do" is an action, not a compensation: handlers are per kind; and a compensation cannot fail.
        assert await refused(compensation_of(good, "do")) == (Outcome.ERROR, "UnknownAction")
        wrong_key = make_command(action="do", step="one", key="someone/else")
        assert await refused(wrong_key) == (Outcome.FAILED, "IdempotencyKeyMismatch")
        assert await refused(make_command(action="do", step="two"), b"another-saga") == (Outcome.FAILED, "KeyMismatch")
        for topic in ("saga.replies", "saga.replies.someone-else", "no spaces"):
            with pytest.raises(Unanswered) as unanswered:
                await run_command(p, make_command(action="do", step="three", reply_topic=topic))
            assert unanswered.value.reason == "UntrustedReplyTopic"
        trusted = make_command(action="do", step="four", participant=p.name)
        assert trusted.reply_topic == p.reply_topic == f"saga.replies.{p.name}"
        assert (await run_command(p, trusted)).outcome is Outcome.SUCCEEDED
    assert effects(tmp_path) == 2  # only the good ones


async def test_the_checks_come_in_the_protocols_order(tmp_path: Path) -> None:
    """docs/protocol.md: reply topic, record key, idempotency key, namespace, handler; the first names it."""
    p = participant(tmp_path, allowed_namespaces=["shop"])
    bad = make_command(action="fly", step="one", namespace="elsewhere", key="x/y", reply_topic="saga.replies.other")
    async with p:
        with pytest.raises(Unanswered) as unanswered:
            await run_command(p, bad, key=b"not-the-uid")
        assert unanswered.value.reason == "UntrustedReplyTopic"
        for changes, key, reason in [
            ({}, b"not-the-uid", "KeyMismatch"),
            ({}, None, "IdempotencyKeyMismatch"),
            ({"idempotency_key": f"{bad.saga_uid}/one"}, None, "NamespaceNotAllowed"),
            ({"idempotency_key": f"{bad.saga_uid}/one", "saga_namespace": "shop"}, None, "UnknownAction"),
        ]:
            command = bad.model_copy(update={"reply_topic": p.reply_topic, **changes})
            reply = await run_command(p, command, key=key)
            assert reply.error is not None and reply.error.reason == reason, (changes, reply)
    assert effects(tmp_path) == 0


async def test_a_namespace_allow_list_refuses_other_namespaces(tmp_path: Path) -> None:
    p = participant(tmp_path, allowed_namespaces=["shop", "billing"])
    assert p.allowed_namespaces == frozenset({"shop", "billing"})
    async with p:
        action = make_command(action="do", step="one", namespace="intruder")
        refused = await run_command(p, action)
        assert refused.outcome is Outcome.FAILED and refused.error is not None
        assert refused.error.reason == "NamespaceNotAllowed" and "intruder" in refused.error.message
        undo = await run_command(p, compensation_of(action, "undo"))
        assert undo.outcome is Outcome.ERROR and undo.error is not None
        assert undo.error.reason == "NamespaceNotAllowed"
        for namespace in ("shop", "billing"):
            admitted = await run_command(p, make_command(action="do", step="one", namespace=namespace))
            assert admitted.outcome is Outcome.SUCCEEDED
    assert effects(tmp_path) == 2
    # Nothing was stored for the refused ones: admitted later (the list changed), the action applies.
    everyone = participant(tmp_path, allowed_namespaces=[])
    assert everyone.allowed_namespaces is None
    async with everyone:
        assert (await run_command(everyone, action)).outcome is Outcome.SUCCEEDED


def test_the_reply_topic_and_the_allow_list_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGA_REPLY_TOPIC", "replies.of.things")
    monkeypatch.setenv("SAGA_ALLOWED_NAMESPACES", "shop, billing,")
    p = participant(tmp_path, settings=ParticipantSettings())
    assert (p.reply_topic, p.allowed_namespaces) == ("replies.of.things", frozenset({"shop", "billing"}))
    assert participant(tmp_path, settings=ParticipantSettings(), reply_topic="mine").reply_topic == "mine"
    monkeypatch.setenv("SAGA_ALLOWED_NAMESPACES", "Not A Namespace")
    with pytest.raises(ValueError, match="namespace"):
        ParticipantSettings()
    with pytest.raises(ValueError, match="namespace"):
        participant(tmp_path, allowed_namespaces=["UPPER"])


async def test_a_result_too_large_is_answered_once_and_not_retried(tmp_path: Path) -> None:
    p = participant(tmp_path)
    runs: list[int] = []

    @p.action("big")
    def big(tx: sqlite3.Connection, command: Command) -> dict[str, Any]:
        runs.append(1)
        tx.execute("INSERT INTO effects VALUES (?, ?)", (command.idempotency_key, "big"))
        return {"blob": "x" * 20_000}

    async with p:
        command = make_command(action="big", step="one")
        reply = roundtrip(await run_command(p, command))
        again = await run_command(p, command)
    assert reply.outcome is Outcome.FAILED and reply.error is not None and reply.error.reason == "ResultTooLarge"
    assert again.duplicate and again.outcome is Outcome.FAILED
    assert runs == [1] and effects(tmp_path) == 0


def test_registration_rejects_duplicates_and_bad_names(tmp_path: Path) -> None:
    p = participant(tmp_path)
    with pytest.raises(ValueError):
        p.action("do")(Flaky(0))
    with pytest.raises(ValueError):
        p.compensation("")(lambda tx, command, result: None)
    with pytest.raises(ValueError):
        Participant("Not_A_DNS_Label", database=tmp_path / "x.db")


def test_backoff_grows_and_is_bounded() -> None:
    policy = RetryPolicy(attempts=10, initial_backoff=1.0, max_backoff=8.0, multiplier=2.0)
    for retry, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        assert ceiling / 2 <= policy.backoff(retry) <= ceiling


async def test_simulated_result_bytes_pad_the_result_and_too_many_are_refused(tmp_path: Path) -> None:
    flaky = Flaky(failures=0)
    p = faulty(tmp_path, flaky)
    fits = make_command(action="do", step="one", payload={"simulate": {p.name: {"resultBytes": 100}}})
    over = make_command(action="do", step="two", payload={"simulate": {p.name: {"resultBytes": 17_000}}})
    async with p:
        padded = await run_command(p, fits)
        refused = await run_command(p, over)

    assert padded.outcome is Outcome.SUCCEEDED and padded.result == {"runs": 1, "simulatedPadding": "x" * 100}
    assert refused.outcome is Outcome.FAILED and refused.error is not None
    assert refused.error.reason == "ResultTooLarge"
    assert effects(tmp_path) == 1  # the refused action's effect was rolled back
