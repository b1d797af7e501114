"""From a decoded command to the reply, without Kafka: checks, interceptors, the store, in-process retries.

    refusal(command, key)   why the command cannot be processed here (dead-letter reason), or None
    refusal_reply(...)      the immediate answer to a refused command, so that its step does not time out
    process(command)        interceptors -> store.apply with retries -> metrics -> the Reply

The Kafka loop calls these for every record; `saga_participants.testing.run_command` calls them directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from saga_participants._handlers import MESSAGE_LENGTH, Handler, ResultTooLarge, truncate
from saga_participants._inbox import Decision, Disposition, InboxStore
from saga_participants._metrics import ParticipantMetrics
from saga_participants._settings import RetryPolicy
from saga_protocol import (
    ANSWERED_REFUSALS,
    Command,
    CommandKind,
    ErrorInfo,
    Reply,
    answer,
    command_problem,
    refusal_outcome,
)

log = logging.getLogger(__name__)

#: Refusal reasons (docs/protocol.md, "Checks, in this order"), besides those of `DecodeError`.
UNTRUSTED_REPLY_TOPIC: Final = "UntrustedReplyTopic"
UNKNOWN_ACTION: Final = "UnknownAction"
IDEMPOTENCY_KEY_MISMATCH: Final = "IdempotencyKeyMismatch"
KEY_MISMATCH: Final = "KeyMismatch"
NAMESPACE_NOT_ALLOWED: Final = "NamespaceNotAllowed"

#: What an interceptor calls to go on: the store (with the in-process retries) and the given handler.
Proceed = Callable[[Handler], Awaitable[Decision]]


class Interceptor(Protocol):
    """Runs around the inbox for every command that reached a registered handler (`FaultInjection` is one).

    It may wait, replace the handler, or look at the decision; it must call `proceed` for the command to be
    applied. The first interceptor of `Participant(interceptors=[...])` is the outermost.
    """

    async def __call__(self, participant: str, command: Command, handler: Handler, proceed: Proceed) -> Decision: ...


@dataclass(frozen=True)
class Refusal:
    reason: str
    detail: str


class Pipeline:
    def __init__(
        self,
        participant: str,
        handlers: Callable[[CommandKind, str], Handler | None],
        known: Callable[[CommandKind], Sequence[str]],
        store: InboxStore,
        retry: RetryPolicy,
        interceptors: Sequence[Interceptor],
        metrics: ParticipantMetrics,
        *,
        trusted_reply_topic: str,
        allowed_namespaces: Collection[str] | None = None,
    ) -> None:
        self.participant = participant
        self.trusted_reply_topic = trusted_reply_topic
        self.allowed_namespaces = allowed_namespaces
        self._handlers = handlers
        self._known = known
        self.store = store
        self.retry = retry
        self.interceptors = tuple(interceptors)
        self.metrics = metrics

    def refusal(self, command: Command, key: bytes | None) -> Refusal | None:
        """Why a decoded command that came with record key `key` cannot be processed here, or None: the
        protocol's checks in its order (`saga_protocol.command_problem`)."""
        problem = command_problem(
            command,
            key=key,
            trusted_reply_topic=self.trusted_reply_topic,
            allowed_namespaces=self.allowed_namespaces,
            handlers=self._known(command.kind),
        )
        return Refusal(*problem) if problem is not None else None

    def refusal_reply(self, command: Command, refusal: Refusal) -> Reply | None:
        """Tell the operator at once, rather than letting the step time out and retry in vain.

        An action is answered `failed` (it will never apply: the message is wrong, not the moment); a
        compensation `error`, because compensations cannot fail: the operator retries it and, past its
        cap, parks the saga as Failed for a person to look at. Nothing is stored: it never ran. A command
        naming an untrusted reply topic is answered on no topic at all (None).
        """
        if refusal.reason not in ANSWERED_REFUSALS:
            return None
        outcome = refusal_outcome(command.kind)
        self.metrics.commands.labels(self.participant, command.kind.value, outcome.value).inc()
        return answer(
            command,
            self.participant,
            outcome,
            error=ErrorInfo(reason=refusal.reason, message=truncate(refusal.detail, MESSAGE_LENGTH)),
        )

    async def process(self, command: Command) -> Reply:
        """Interceptors, the store with in-process retries, metrics: the reply to send. Needs the store
        open. Raises LookupError for a command naming no registered handler (see `refusal`)."""
        handler = self._handlers(command.kind, command.action)
        if handler is None:
            raise LookupError(f"no {command.kind.value} handler named {command.action!r}")
        decision = await self._intercepted(0, command, handler)
        self._count(command, decision)
        return answer(
            command,
            self.participant,
            decision.outcome,
            result=decision.result,
            error=decision.error,
            duplicate=decision.duplicate,
        )

    async def _intercepted(self, index: int, command: Command, handler: Handler) -> Decision:
        if index == len(self.interceptors):
            return await self._apply_with_retries(command, handler)

        async def proceed(next_handler: Handler) -> Decision:
            return await self._intercepted(index + 1, command, next_handler)

        return await self.interceptors[index](self.participant, command, handler, proceed)

    async def _apply_with_retries(self, command: Command, handler: Handler) -> Decision:
        for run in range(1, self.retry.attempts + 1):
            try:
                decision = await self.store.apply(command, handler)
            except Exception as exc:
                # The database itself failed (locked past its timeout, disk full, connection lost): as
                # transient as a handler exception, and as safe to retry because the transaction rolled back.
                decision = Decision.transient(exc)
            if decision.handler_seconds is not None:
                self.metrics.handler_latency.labels(self.participant, command.kind.value, command.action).observe(
                    decision.handler_seconds
                )
            if decision.disposition is not Disposition.TRANSIENT or isinstance(decision.exception, ResultTooLarge):
                return decision  # (a result too large would be as large again: not worth a retry)
            last = run == self.retry.attempts
            log.warning(
                "%s %s of %s (attempt %d) raised on run %d/%d%s",
                command.kind.value,
                command.action,
                command.idempotency_key,
                command.attempt,
                run,
                self.retry.attempts,
                ": giving up, replying error" if last else ", retrying",
                exc_info=decision.exception,
            )
            if last:
                return decision
            self.metrics.handler_retries.labels(self.participant, command.kind.value).inc()
            await asyncio.sleep(self.retry.backoff(run))
        raise AssertionError("unreachable: the retry loop returns")

    def _count(self, command: Command, decision: Decision) -> None:
        m, name, kind = self.metrics, self.participant, command.kind.value
        m.commands.labels(name, kind, decision.outcome.value).inc()
        if decision.disposition is Disposition.REPLAYED:
            m.duplicates.labels(name, kind).inc()
        elif decision.disposition is Disposition.TOMBSTONE:
            m.tombstones.labels(name).inc()
        elif decision.disposition is Disposition.REFUSED:
            m.refused_late_actions.labels(name).inc()
        elif decision.disposition is Disposition.NOOP:
            m.noop_compensations.labels(name).inc()
        log.info(
            "%s %s of %s attempt %d: %s (%s)%s",
            kind,
            command.action,
            command.idempotency_key,
            command.attempt,
            decision.outcome.value,
            decision.disposition.value,
            f" {decision.error.reason}: {decision.error.message}" if decision.error else "",
        )
