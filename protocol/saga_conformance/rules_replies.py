"""Rules about answers: one reply of the right shape, replays, tombstones, restarts, concurrency."""

from __future__ import annotations

import asyncio

from saga_conformance.kit import Applied, Kit, Record, Saga, describe
from saga_conformance.report import Verdict, failed, not_tested, passed
from saga_conformance.wire import Seen
from saga_protocol import TRACEPARENT, TRACESTATE, Command, CommandKind, Outcome, encode_command, trace_carrier

ACTION, COMPENSATION = CommandKind.ACTION, CommandKind.COMPENSATION


async def _answer(kit: Kit, saga: Saga, command: Command, record: Record | None = None) -> tuple[list[Seen], Record]:
    """Send (or re-send) a command; the replies for its saga that arrived after it, once they settle."""
    before = len(kit.replies_of(saga.uid))
    if record is None:
        _, record = await kit.send(command)
    else:
        await kit.send_record(record)
    seen = await kit.replies(saga.uid, before + 1)
    return seen[before:], record


def _one(kit: Kit, replies: list[Seen], command: Command) -> tuple[Seen | None, list[str]]:
    if not replies:
        return None, [f"no reply within {kit.cfg.reply_timeout:.0f}s"]
    problems = kit.shape(replies[0], command)
    if len(replies) > 1:
        problems.append(f"{len(replies)} replies to one command: {', '.join(describe(s) for s in replies)}")
    return replies[0], problems


def _expect(seen: Seen, outcome: Outcome, duplicate: bool, reason: str | None = None) -> list[str]:
    reply = seen.reply
    if reply is None:
        return []
    problems = []
    if reply.outcome is not outcome:
        problems.append(f"outcome {reply.outcome.value}, expected {outcome.value} ({describe(seen)})")
    if reply.duplicate is not duplicate:
        problems.append(f"duplicate is {str(reply.duplicate).lower()}, expected {str(duplicate).lower()}")
    if reason is not None and (reply.error is None or reply.error.reason != reason):
        problems.append(f"error reason {reply.error.reason if reply.error else None!r}, expected {reason!r}")
    return problems


def _same_outcome(replay: Seen, first: Seen) -> list[str]:
    if replay.reply is None or first.reply is None:
        return []
    if (replay.reply.result, replay.reply.error) != (first.reply.result, first.reply.error):
        return ["the replay's result or error differs from the first answer's: applied again?"]
    return []


def _verdict(rule: str, problems: list[str], ok: str) -> Verdict:
    return failed(rule, "; ".join(problems)) if problems else passed(rule, ok)


async def applied(kit: Kit) -> tuple[Applied | None, list[str]]:
    """The saga whose action the participant applied (fresh-reply's; made here when that did not run)."""
    if kit.applied is not None:
        return kit.applied, []
    saga = kit.new_saga()
    command = saga.command(ACTION)
    replies, record = await _answer(kit, saga, command)
    seen, problems = _one(kit, replies, command)
    if seen is None:
        return None, problems
    problems += _expect(seen, Outcome.SUCCEEDED, duplicate=False)
    if seen.reply is not None and seen.reply.outcome is Outcome.SUCCEEDED:
        kit.applied = Applied(saga, command, record, seen)
    return kit.applied, problems


async def fresh_reply(kit: Kit) -> Verdict:
    found, problems = await applied(kit)
    ok = f"1 reply, partition {found.first.partition}, commandId echoed" if found else ""
    return _verdict("fresh-reply", problems, ok)


async def duplicate_replay(kit: Kit) -> Verdict:
    rule = "duplicate-replay"
    found, problems = await applied(kit)
    if found is None:
        return failed(rule, "needs an applied action: " + "; ".join(problems))
    replies, _ = await _answer(kit, found.saga, found.command, found.record)
    seen, problems = _one(kit, replies, found.command)
    if seen is not None:
        problems += _expect(seen, Outcome.SUCCEEDED, duplicate=True) + _same_outcome(seen, found.first)
    return _verdict(rule, problems, "byte-identical re-send replayed, duplicate true, same result")


async def redelivery_next_attempt(kit: Kit) -> Verdict:
    rule = "redelivery-next-attempt"
    found, problems = await applied(kit)
    if found is None:
        return failed(rule, "needs an applied action: " + "; ".join(problems))
    command = found.saga.command(ACTION, attempt=2)
    replies, _ = await _answer(kit, found.saga, command)
    seen, problems = _one(kit, replies, command)
    if seen is not None:
        problems += _expect(seen, Outcome.SUCCEEDED, duplicate=True) + _same_outcome(seen, found.first)
    return _verdict(rule, problems, "attempt 2 replayed with attempt 2's commandId")


async def compensation_succeeds(kit: Kit) -> Verdict:
    rule = "compensation-succeeds"
    found, problems = await applied(kit)
    if found is None:
        return failed(rule, "needs an applied action: " + "; ".join(problems))
    kit.applied = None  # undone from here on: later rules make their own
    command = found.saga.command(COMPENSATION)
    replies, record = await _answer(kit, found.saga, command)
    seen, problems = _one(kit, replies, command)
    if seen is None:
        return failed(rule, "; ".join(problems))
    problems += _expect(seen, Outcome.SUCCEEDED, duplicate=False)
    again, _ = await _answer(kit, found.saga, command, record)
    replay, more = _one(kit, again, command)
    problems += [f"re-sent: {p}" for p in more]
    if replay is not None:
        problems += [f"re-sent: {p}" for p in _expect(replay, Outcome.SUCCEEDED, duplicate=True)]
        problems += _same_outcome(replay, seen)
    return _verdict(rule, problems, "undone, and the re-sent compensation replayed")


async def tombstone_then_refusal(kit: Kit) -> Verdict:
    rule = "tombstone-then-refusal"
    saga = kit.new_saga()
    compensation = saga.command(COMPENSATION)
    replies, _ = await _answer(kit, saga, compensation)
    seen, problems = _one(kit, replies, compensation)
    if seen is None:
        return failed(rule, "compensation before its action: " + "; ".join(problems))
    problems += [f"compensation first: {p}" for p in _expect(seen, Outcome.SUCCEEDED, duplicate=False)]
    for attempt, duplicate in ((1, False), (2, True)):
        action = saga.command(ACTION, attempt=attempt)
        replies, _ = await _answer(kit, saga, action)
        late, more = _one(kit, replies, action)
        problems += [f"late action attempt {attempt}: {p}" for p in more]
        if late is not None:
            expected = _expect(late, Outcome.FAILED, duplicate=duplicate, reason="AlreadyCompensated")
            problems += [f"late action attempt {attempt}: {p}" for p in expected]
    return _verdict(rule, problems, "tombstone; the late action refused AlreadyCompensated, the refusal stored")


async def compensation_after_failed_action(kit: Kit) -> Verdict:
    rule = "compensation-after-failed-action"
    if kit.cfg.failing_payload is None:
        return not_tested(rule, "no --failing-payload given")
    saga = kit.new_saga()
    action = saga.command(ACTION, payload=dict(kit.cfg.failing_payload))
    replies, _ = await _answer(kit, saga, action)
    seen, problems = _one(kit, replies, action)
    if seen is None:
        return failed(rule, "; ".join(problems))
    problems += [f"action: {p}" for p in _expect(seen, Outcome.FAILED, duplicate=False)]
    compensation = saga.command(COMPENSATION, payload=dict(kit.cfg.failing_payload))
    replies, _ = await _answer(kit, saga, compensation)
    undone, more = _one(kit, replies, compensation)
    problems += [f"compensation: {p}" for p in more]
    if undone is not None:
        problems += [f"compensation: {p}" for p in _expect(undone, Outcome.SUCCEEDED, duplicate=False)]
    return _verdict(rule, problems, "failed action; its compensation succeeded as a no-op")


async def restart_replay(kit: Kit) -> Verdict:
    rule = "restart-replay"
    if kit.process is None:
        return not_tested(rule, "no --participant-command: the kit cannot restart the participant")
    saga = kit.new_saga()
    command = saga.command(ACTION)
    _, record = await kit.send(command)
    first = await kit.replies(saga.uid, 1, settle=False)
    kit.process.kill()  # right after the reply: the offset commit may or may not have happened
    if not first:
        kit.process.start()
        await kit.ready()
        return failed(rule, f"no reply within {kit.cfg.reply_timeout:.0f}s before the restart")
    kit.process.start()
    await kit.ready()
    await kit.send_record(record)  # the operator's re-send after its own restart
    replies = await kit.replies(saga.uid, 2)
    problems = kit.shape(first[0], command) + _expect(first[0], Outcome.SUCCEEDED, duplicate=False)
    later = replies[1:]
    if not later:
        problems.append("no reply to the re-send after the restart")
    for seen in later:
        problems += kit.shape(seen, command) + _expect(seen, Outcome.SUCCEEDED, duplicate=True)
        problems += _same_outcome(seen, first[0])
    return _verdict(rule, problems, f"killed with SIGKILL, restarted: {len(later)} replay(s), duplicate true")


async def concurrency(kit: Kit) -> Verdict:
    rule = "concurrency"
    if kit.cfg.slow_payload is None:
        return not_tested(rule, "no --slow-payload or --slow-simulate: the participant offers no slow action")
    slow_saga = kit.new_saga()
    fast_saga = kit.new_saga(avoid_partition=kit.partition_of(slow_saga.uid))
    slow = slow_saga.command(ACTION, payload={**kit.cfg.payload, **kit.cfg.slow_payload})
    fast = fast_saga.command(ACTION)
    await kit.send(slow)
    await asyncio.sleep(0.3)
    sent, _ = await kit.send(fast)
    fast_replies = await kit.replies(
        fast_saga.uid, 1, within=kit.cfg.slow_seconds + kit.cfg.reply_timeout, settle=False
    )
    slow_replies = await kit.replies(
        slow_saga.uid, 1, within=kit.cfg.slow_seconds + kit.cfg.reply_timeout, settle=False
    )
    if not fast_replies or not slow_replies:
        return failed(rule, f"replies: slow saga {len(slow_replies)}, other saga {len(fast_replies)}")
    waited = fast_replies[0].at - sent.at
    if slow_replies[0].at - sent.at < kit.cfg.slow_seconds * 0.5 and slow_replies[0].at < fast_replies[0].at:
        return not_tested(rule, "the slow payload did not slow the action down (is the participant's switch on?)")
    problems = kit.shape(fast_replies[0], fast) + kit.shape(slow_replies[0], slow)
    if slow_replies[0].at < fast_replies[0].at or waited >= kit.cfg.slow_seconds * 0.8:
        problems.append(f"the other saga waited {waited:.1f}s, behind a handler slowed by {kit.cfg.slow_seconds:.0f}s")
    partitions = f"command partitions {kit.partition_of(slow_saga.uid)} and {kit.partition_of(fast_saga.uid)}"
    return _verdict(rule, problems, f"the other saga answered in {waited:.1f}s ({partitions})")


#: A valid W3C traceparent and tracestate (docs/protocol.md §5.1), and one that is not.
TRACEPARENT_SENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE_SENT = "conformance=kit"
TRACEPARENT_MALFORMED = b"00-NOT-A-TRACE-CONTEXT"


async def trace_context(kit: Kit) -> Verdict:
    """Commands with the optional trace-context headers, valid or malformed, are answered as without them; a
    trace context on the reply is W3C (in the command's trace, or the command's passed through: SHOULD)."""
    rule = "trace-context"
    problems: list[str] = []
    notes: list[str] = []
    for malformed in (False, True):
        # A compensation of an action never sent: the tombstone, which succeeds and has no effect.
        saga = kit.new_saga()
        command = saga.command(COMPENSATION)
        key, value, encoded = encode_command(
            command, trace={TRACEPARENT: TRACEPARENT_SENT, TRACESTATE: TRACESTATE_SENT}
        )
        headers: list[tuple[str, bytes | None]] = list(encoded)
        if malformed:
            headers = [(n, TRACEPARENT_MALFORMED if n == TRACEPARENT else v) for n, v in headers]
        await kit.send_record(Record(key, value, headers))
        replies = await kit.replies(saga.uid, 1)
        seen, found = _one(kit, replies, command)
        which = "malformed" if malformed else "valid"
        problems += [f"with a {which} traceparent: {p}" for p in found]
        if seen is None:
            continue
        problems += [f"with a {which} traceparent: {p}" for p in _expect(seen, Outcome.SUCCEEDED, duplicate=False)]
        answered = seen.header(TRACEPARENT)
        if answered is None:
            if not malformed:
                notes.append("the reply carries no traceparent (SHOULD: the handling span's, or the command's)")
            continue
        text = answered.decode(errors="replace")
        if not trace_carrier([(TRACEPARENT, answered)]):
            problems.append(f"the reply's traceparent {text!r} is not W3C trace context")
        elif not malformed and text.split("-")[1] != TRACEPARENT_SENT.split("-")[1]:
            notes.append(f"the reply's traceparent {text!r} is not in the command's trace (SHOULD be)")
    ok = "; ".join(notes) or "answered with and without a valid trace context; the reply stays in the trace"
    return _verdict(rule, problems, ok)
