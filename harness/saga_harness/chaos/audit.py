"""The audit of the books: pure checks of the sagas as planned, as the API server has them, the
participants' databases before and after, and the dead-letter topics. Each violation names its saga."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from saga_plumbing import DLQ_REASON
from saga_protocol import dead_letter_topic, idempotency_key

from ..topics import header
from ..world import PARTICIPANTS
from .books import Books
from .malformed import MARKER, Injected
from .plan import STEPS, SagaPlan

#: A participant dead-letters a good command whose reply it could not produce in time (the broker was
#: down): its outcome is stored, and the operator's retry gets it replayed (docs/protocol.md).
REPLY_UNDELIVERABLE: Final = "ReplyUndeliverable"


@dataclass
class Violation:
    saga: str | None
    what: str

    def __str__(self) -> str:
        return f"{self.saga}: {self.what}" if self.saga else self.what


def audit(
    plans: Sequence[SagaPlan],
    bodies: Mapping[str, dict[str, Any]],
    before: Books,
    after: Books,
) -> tuple[list[Violation], dict[str, Any]]:
    """The checks. Pure: the sagas as planned, as the API server has them, and the books before/after."""
    violations: list[Violation] = []
    figures: dict[str, Any] = {}
    uid_to_name = {body["metadata"]["uid"]: name for name, body in bodies.items()}
    by_saga: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for service, rows in after.effects.items():
        for row in rows:
            by_saga[row["saga"]][service].append(row)
    inbox: dict[tuple[str, str, str], dict[str, Any]] = {}
    for service, rows in after.inbox.items():
        for row in rows:
            inbox[(service, row["key"], row["kind"])] = row

    causes: Counter[str] = Counter()
    retries = 0
    for p in plans:
        body = bodies.get(p.name)
        if body is None:
            violations.append(Violation(p.name, "the Saga does not exist"))
            continue
        uid = body["metadata"]["uid"]
        label = f"{p.name} ({uid})"
        status = body.get("status") or {}
        phase = status.get("phase", "")
        steps = {s["name"]: s for s in status.get("steps") or []}
        for s in steps.values():
            retries += max(0, s.get("attempt", 0) - 1) + max(0, s.get("compensationAttempt", 0) - 1)
        causes[_cause(phase, status.get("message") or "", steps)] += 1
        held = by_saga.get(uid, {})
        if phase not in ("Succeeded", "Compensated"):
            violations.append(Violation(label, f"not finished: phase {phase or 'none'} ({status.get('message')})"))
            continue
        for service, table_rows in held.items():
            if len(table_rows) > 1:
                violations.append(Violation(label, f"{len(table_rows)} rows at {service}: applied more than once"))
        # The log agrees with itself: a terminal phase only once every step is settled that way.
        settled = {"Succeeded"} if phase == "Succeeded" else {"Compensated", "Refused", "Skipped"}
        unsettled = {name: s.get("state") for name, s in steps.items() if s.get("state") not in settled}
        if unsettled or len(steps) != len(STEPS):
            violations.append(Violation(label, f"phase {phase} but steps {unsettled or 'missing'}"))
        if phase == "Succeeded":
            if p.cannot_succeed:
                violations.append(Violation(label, f"Succeeded although {p.cannot_succeed}"))
            expect = {"videos": p.buyer, "users": p.buyer, "agents": p.agent}
            for service in PARTICIPANTS:
                live = [r for r in held.get(service, []) if r["live"]]
                if len(live) != 1:
                    violations.append(Violation(label, f"Succeeded but {len(live)} live effect(s) at {service}"))
                    continue
                if live[0]["cents"] != p.price or live[0]["who"] != expect[service]:
                    violations.append(
                        Violation(
                            label,
                            f"{service} recorded {live[0]['cents']} for {live[0]['who']}, "
                            f"the saga says {p.price} for {expect[service]}",
                        )
                    )
        else:
            for service in PARTICIPANTS:
                live = [r for r in held.get(service, []) if r["live"]]
                if live:
                    violations.append(Violation(label, f"Compensated but the effect at {service} is still live"))
        # Order, as the participants saw it: each action applied after the one before it, each
        # compensation after the one after it (a step is undone only once its dependents are).
        at = {service: rows_[0] for service, rows_ in held.items() if len(rows_) == 1}
        for (_, first, _, _), (_, second, _, _) in itertools.pairwise(STEPS):
            a, b = at.get(first), at.get(second)
            if a is None or b is None:
                continue
            if _time(a["applied"]) > _time(b["applied"]):
                violations.append(Violation(label, f"{second} applied before {first}: actions out of order"))
            if a["undone"] and b["undone"] and _time(a["undone"]) < _time(b["undone"]):
                violations.append(Violation(label, f"{first} undone before {second}: compensations out of order"))
        for step, service, _, _ in STEPS:
            state = (steps.get(step) or {}).get("state", "")
            key = idempotency_key(uid, step)
            has_rows = bool(held.get(service))
            if state == "Skipped" and (has_rows or (service, key, "action") in inbox):
                violations.append(Violation(label, f"step {step} was never sent, yet {service} has a record of it"))
            if state == "Refused" and has_rows:
                violations.append(Violation(label, f"step {step} failed (nothing applied), yet {service} has a row"))

    # The participants' own bookkeeping: an effect row exactly when the inbox says the action applied,
    # live exactly when no compensation undid it.
    for service, rows in after.effects.items():
        for row in rows:
            who = uid_to_name.get(row["saga"])
            label = f"{who} ({row['saga']})" if who else f"unknown saga {row['saga']}"
            if who is None:
                violations.append(Violation(label, f"{service} holds an effect of a saga that is not in this run"))
            action = inbox.get((service, row["key"], "action"))
            undo = inbox.get((service, row["key"], "compensation"))
            if action is None or action["disposition"] != "applied":
                violations.append(Violation(label, f"{service} has an effect without an applied action in its inbox"))
            undone = undo is not None and undo["disposition"] == "applied"
            if row["live"] == undone:
                violations.append(Violation(label, f"{service}: effect live={row['live']} but compensation {undo}"))
            if undo is not None and undo["disposition"] == "tombstone":
                violations.append(Violation(label, f"{service}: a tombstone and an applied action for one key"))

    # Money: conserved in total, and each account moved by exactly its live debits and credits.
    if after.money != before.money:
        violations.append(Violation(None, f"money not conserved: {before.money} cents before, {after.money} after"))
    debited: Counter[str] = Counter()
    for row in after.effects["users"]:
        if row["live"]:
            debited[row["who"]] += row["cents"]
    credited: Counter[str] = Counter()
    for row in after.effects["agents"]:
        if row["live"]:
            credited[row["who"]] += row["cents"]
    for user, balance in after.users.items():
        expected = before.users.get(user, 0) - debited[user]
        if balance != expected:
            violations.append(Violation(None, f"user {user}: balance {balance}, expected {expected}"))
    for agent, balance in after.agents.items():
        expected = before.agents.get(agent, 0) + credited[agent]
        if balance != expected:
            violations.append(Violation(None, f"agent {agent}: balance {balance}, expected {expected}"))

    figures["outcomes"] = dict(causes)
    figures["retries"] = retries
    figures["duplicatesAbsorbedByParticipants"] = sum(
        max(0, row["deliveries"] - 1) for rows in after.inbox.values() for row in rows
    )
    figures["tombstones"] = sum(1 for rows in after.inbox.values() for row in rows if row["disposition"] == "tombstone")
    figures["lateActionsRefused"] = sum(
        1 for rows in after.inbox.values() for row in rows if row["disposition"] == "refused"
    )
    figures["moneyBefore"] = before.money
    figures["moneyAfter"] = after.money
    return violations, figures


def _time(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def _cause(phase: str, message: str, steps: Mapping[str, Mapping[str, Any]]) -> str:
    """Why a saga ended as it did, from its status (the operator's own words)."""
    if phase != "Compensated":
        return phase or "none"
    if message.startswith("AbortRequested"):
        return "Compensated: aborted"
    if " gave up after " in message:
        return "Compensated: retries used up"
    failed = [s for s in steps.values() if s.get("state") == "Refused" and s.get("error")]
    if failed:
        return f"Compensated: {failed[0]['error']['reason']}"
    return "Compensated"


def audit_dead_letters(
    injected: Sequence[Injected],
    dead: Mapping[str, Sequence[Any]],
    uid_to_name: Mapping[str, str],
    *,
    reply_dead_letter_topic: str | None = None,
) -> tuple[list[Violation], dict[str, Any]]:
    """Every malformed message acknowledged by the broker is in its dead-letter topic with a right reason;
    nothing else is, but for participants' undeliverable replies (a broker outage, not a malformation).
    A command's dead-letter topic is `<topic>.dlq`; every reply topic's is the operator's one
    (`reply_dead_letter_topic`; None: `<topic>.dlq` as well)."""

    def dead_letter_topic_of(topic: str) -> str:
        if reply_dead_letter_topic is not None and topic.startswith("saga.replies."):
            return reply_dead_letter_topic
        return dead_letter_topic(topic)

    violations: list[Violation] = []
    by_id = {i.id: i for i in injected}
    found: dict[str, set[str]] = defaultdict(set)
    undeliverable = 0
    for topic, records in dead.items():
        for record in records:
            marker = header(record, MARKER)
            reason_raw = header(record, DLQ_REASON) or b""
            reason = reason_raw.decode(errors="replace")
            if marker is None:
                if reason == REPLY_UNDELIVERABLE:
                    undeliverable += 1
                    continue
                saga = uid_to_name.get((record.key or b"").decode(errors="replace"))
                violations.append(Violation(saga, f"a real message was dead-lettered to {topic}: {reason}"))
                continue
            item = by_id.get(marker.decode(errors="replace"))
            if item is None:
                violations.append(Violation(None, f"{topic} holds an injected message of another run"))
                continue
            found[item.id].add(reason)
            if dead_letter_topic_of(item.topic) != topic:
                violations.append(Violation(None, f"malformed {item.kind} for {item.topic} ended up in {topic}"))
            if reason not in item.expected:
                violations.append(
                    Violation(
                        uid_to_name.get(item.saga or ""),
                        f"malformed {item.kind} on {item.topic} dead-lettered "
                        f"as {reason}, expected {' or '.join(item.expected)}",
                    )
                )
    for item in injected:
        if item.acked and item.id not in found:
            violations.append(Violation(None, f"malformed {item.kind} on {item.topic} was never dead-lettered"))
    replies = [i for i in injected if i.acked and not i.topic.startswith("saga.commands.")]
    commands = [i for i in injected if i.acked and i.topic.startswith("saga.commands.")]
    figures = {
        "malformedRepliesInjected": len(replies),
        "malformedRepliesDeadLettered": sum(1 for i in replies if i.id in found),
        "malformedCommandsInjected": len(commands),
        "malformedCommandsDeadLettered": sum(1 for i in commands if i.id in found),
        "malformedUnacknowledged": sum(1 for i in injected if not i.acked),
        "repliesUndeliverableDeadLettered": undeliverable,
    }
    return violations, figures
