"""The rules, in the order the kit runs them (later ones build on earlier ones' sagas where they can)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from saga_conformance import rules_refusals as refusals
from saga_conformance import rules_replies as replies
from saga_conformance.kit import Kit
from saga_conformance.report import Verdict


@dataclass(frozen=True)
class Rule:
    name: str
    check: Callable[[Kit], Awaitable[Verdict]]
    says: str


RULES: tuple[Rule, ...] = (
    Rule(
        "fresh-reply",
        replies.fresh_reply,
        "a fresh command gets exactly one reply on the trusted reply topic: v2 headers, key = sagaUid, the "
        "murmur2 partition of the key, commandId and the command's fields echoed, outcome succeeded",
    ),
    Rule(
        "duplicate-replay",
        replies.duplicate_replay,
        "a byte-identical re-send is replayed: duplicate true, same result",
    ),
    Rule(
        "redelivery-next-attempt",
        replies.redelivery_next_attempt,
        "attempt 2 of an applied action is replayed, echoing attempt 2 and its commandId",
    ),
    Rule(
        "compensation-succeeds",
        replies.compensation_succeeds,
        "the compensation of an applied action succeeds; re-sent, it is replayed",
    ),
    Rule(
        "tombstone-then-refusal",
        replies.tombstone_then_refusal,
        "a compensation before its action succeeds (tombstone); the late action is refused AlreadyCompensated, "
        "and so is its next attempt (the refusal is stored)",
    ),
    Rule(
        "compensation-after-failed-action",
        replies.compensation_after_failed_action,
        "after an action failed for a business reason, its compensation succeeds (needs --failing-payload)",
    ),
    Rule(
        "trace-context",
        replies.trace_context,
        "commands with the optional traceparent/tracestate headers, valid or malformed, are answered as without "
        "them; a traceparent on the reply is W3C trace context",
    ),
    Rule("unknown-action", refusals.unknown_action, "an unknown handler: dead-lettered UnknownAction, answered"),
    *(
        Rule(name, refusals.malformed(name), f"dead-lettered {reason}, not answered")
        for name, (reason, _) in refusals.MALFORMED.items()
    ),
    Rule("key-mismatch", refusals.key_mismatch, "a record key that is not the sagaUid: KeyMismatch, answered failed"),
    Rule(
        "idempotency-key-mismatch",
        refusals.idempotency_key_mismatch,
        "an idempotencyKey that is not <sagaUid>/<step>: IdempotencyKeyMismatch, answered failed",
    ),
    Rule(
        "untrusted-reply-topic",
        refusals.untrusted_reply_topic,
        "a command naming another reply topic: dead-lettered UntrustedReplyTopic, nothing on any reply topic",
    ),
    Rule(
        "namespace-not-allowed",
        refusals.namespace_not_allowed,
        "a namespace the participant refuses: NamespaceNotAllowed (needs --foreign-namespace)",
    ),
    Rule(
        "dlq-headers",
        refusals.dlq_headers,
        "dead letters carry dlq_reason, dlq_detail, dlq_source, dlq_topic, dlq_partition, dlq_offset, dlq_time, "
        "then the original headers; key and value unchanged",
    ),
    Rule(
        "restart-replay",
        replies.restart_replay,
        "killed right after replying and restarted, the participant replays, never re-applies (needs "
        "--participant-command)",
    ),
    Rule(
        "concurrency",
        replies.concurrency,
        "one saga's slow handler does not hold up another saga (needs --slow-payload or --slow-simulate)",
    ),
)

BY_NAME = {rule.name: rule for rule in RULES}
