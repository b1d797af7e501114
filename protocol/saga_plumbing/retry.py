"""One retry helper for transient outages (a broker or API server that is down or restarting).

Built on tenacity. Only *transient* work is retried here: start-up connections, producing a reply or a
dead letter. The saga core's own per-step retries are persisted backoffs in the saga log
(`saga_operator.domain`), not this: they must survive a crash, these need not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, stop_never
from tenacity.wait import wait_exponential_jitter

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: `initial` seconds, doubling, capped at `maximum` (jittered so
    that replicas that failed together do not retry together)."""

    initial: float = 0.5
    maximum: float = 10.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial:
            raise ValueError(f"invalid backoff {self}")


class Stopped(Exception):
    """The stop event was set while waiting to retry."""


async def retry_transient(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    transient: tuple[type[BaseException], ...],
    backoff: Backoff = Backoff(),
    give_up_after: float | None = None,
    stop: asyncio.Event | None = None,
) -> T:
    """Await `attempt()` until it returns, retrying exceptions of the `transient` types with backoff.

    Anything else propagates at once (a wrong password is not transient: it must be seen). Past
    `give_up_after` seconds (None: never) the last transient exception propagates. Setting `stop` ends
    the waiting between attempts with `Stopped`.
    """

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)

    async def sleep(seconds: float) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except TimeoutError:
            return
        raise Stopped(what)

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(transient),
        wait=wait_exponential_jitter(multiplier=backoff.initial, max=backoff.maximum, jitter=backoff.initial),
        stop=stop_never if give_up_after is None else stop_after_delay(give_up_after),
        before_sleep=log_retry,
        sleep=sleep,
        reraise=True,
    )
    async for try_ in retrying:
        with try_:
            return await attempt()
    raise AssertionError("unreachable: tenacity returns or re-raises")
