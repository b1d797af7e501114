"""Replies and dead letters: what the participant produces, and what it does when that does not work.

A reply is produced to the command's `replyTopic`, keyed by the saga uid, with the idempotent producer,
and awaited until the broker acknowledges it. Transient failures are retried for up to `reply_timeout`;
past that (the reply topic does not exist, say) the command is set aside on the dead-letter topic with
`ReplyUndeliverable` rather than holding up its saga forever; its outcome stays stored, so re-sending the
command replays the same reply. Dead letters go through saga_plumbing's DeadLetterWriter: the original
bytes and headers, with the `dlq_*` headers the operator uses too (`dlq_source` is the participant).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from aiokafka.errors import KafkaError

from saga_participants._metrics import ParticipantMetrics
from saga_plumbing import Backoff, DeadLetterWriter, retry_transient
from saga_protocol import Reply, encode_reply

log = logging.getLogger(__name__)

REPLY_UNDELIVERABLE: Final = "ReplyUndeliverable"


class Delivery:
    def __init__(
        self,
        participant: str,
        producer: Any,
        dead_letter_topic: str,
        metrics: ParticipantMetrics,
        *,
        reply_timeout: float,
        stop: asyncio.Event,
    ) -> None:
        self.participant = participant
        self._producer = producer
        self._metrics = metrics
        self._reply_timeout = reply_timeout
        self._stop = stop
        self._dead_letters = DeadLetterWriter(producer, dead_letter_topic, participant, stop=stop)

    async def reply(self, record: Any, reply: Reply, topic: str, trace: Mapping[str, str] | None = None) -> None:
        """Produce `reply` to `topic` and wait for the ack; dead-letter `record` if that cannot be done. `trace`:
        the trace context its headers carry (docs/protocol.md §5.1)."""
        key, value, headers = encode_reply(reply, trace=trace)
        deadline = time.monotonic() + self._reply_timeout

        async def send() -> None:
            # Each try is bounded too: producing to a missing topic waits for its metadata a long time.
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await self._producer.send_and_wait(topic, value, key=key, headers=headers)

        try:
            await retry_transient(
                f"producing the reply to {topic} for {reply.idempotency_key}",
                send,
                transient=(KafkaError, TimeoutError),
                backoff=Backoff(initial=0.1, maximum=2.0),
                give_up_after=self._reply_timeout,
                stop=self._stop,
            )
        except (KafkaError, TimeoutError) as exc:
            log.error(
                "reply to %s for %s undeliverable (%s: %s); dead-lettering the command",
                topic,
                reply.idempotency_key,
                type(exc).__name__,
                exc,
            )
            self._metrics.undeliverable_replies.labels(self.participant).inc()
            await self._dead_letters.write(
                record, REPLY_UNDELIVERABLE, f"reply to {topic}: {type(exc).__name__}: {exc}"
            )

    async def dead_letter(self, record: Any, reason: str, detail: str) -> None:
        """Set a message that cannot be processed aside, with why and where it came from (retried until
        the broker takes it: committing the offset without it would lose the message)."""
        self._metrics.malformed.labels(self.participant, reason).inc()
        log.warning(
            "dead-lettering %s:%d@%d to %s: %s: %s",
            record.topic,
            record.partition,
            record.offset,
            self._dead_letters.topic,
            reason,
            detail,
        )
        await self._dead_letters.write(record, reason, detail)
