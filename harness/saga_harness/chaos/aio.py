"""The run's two asyncio helpers: a sleep that ends early when the faults stop, and blocking calls off
the event loop on threads of their own."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True if `stop` was set meanwhile (the caller should finish)."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


# Blocking calls (kubectl, readiness polls) get threads of their own: the event loop's default executor
# also resolves host names for aiokafka's (re)connections, and kubectl calls hanging on a frozen API
# server would otherwise starve it, stalling every Kafka client of the run.
POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="chaos-blocking")


async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking call that starts no process (kubectl, HTTP polls) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(POOL, functools.partial(fn, *args))
