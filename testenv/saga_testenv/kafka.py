"""Small Kafka helpers on aiokafka, for the launcher and for the team's tests.

``ensure_topics`` is the reusable one: the broker runs with ``auto.create.topics.enable=false`` (the
operator creates its topics explicitly), and creating a topic that already exists is not an error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import for_code

T = TypeVar("T")

_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    replication_factor: int = 1
    configs: Mapping[str, str] = field(default_factory=dict)


class KafkaNotReady(RuntimeError):
    pass


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even if this thread has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@contextlib.contextmanager
def _quiet_aiokafka() -> Any:
    """aiokafka logs every refused connection at ERROR while the broker is still starting."""
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


async def describe_cluster(bootstrap: str, *, request_timeout: float = 5.0, **admin_config: Any) -> dict[str, Any]:
    """One real Metadata request: the broker list, cluster id and controller id."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(request_timeout * 1000), **admin_config
    )
    await admin.start()
    try:
        info: dict[str, Any] = await admin.describe_cluster()
        return info
    finally:
        await admin.close()


#: The settings of ``aiokafka.conn.create_conn`` (a client's security settings are among them).
_CONNECTION_SETTINGS = (
    "security_protocol",
    "ssl_context",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "client_id",
)


async def check_connection(bootstrap: str, *, timeout_s: float = 10.0, **config: Any) -> None:
    """Open one connection to the first of ``bootstrap``'s servers with these client settings (TCP, the
    TLS handshake, SASL authentication), then close it. Raises what stopped it, which a client's
    bootstrap reports only as "Unable to bootstrap": ``aiokafka.errors.SaslAuthenticationFailed`` (a
    wrong password, an unknown user), ``ssl.SSLCertVerificationError`` (a CA the broker's certificate is
    not from), ``KafkaConnectionError`` (refused, or closed by the broker: e.g. a client that does not
    authenticate at a SASL listener)."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    settings = {k: v for k, v in config.items() if k in _CONNECTION_SETTINGS}
    conn = await asyncio.wait_for(
        create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000), **settings), timeout_s
    )
    conn.close()


async def wait_for_broker(bootstrap: str, *, timeout_s: float = 60.0, **admin_config: Any) -> dict[str, Any]:
    """Poll with Metadata requests until the broker lists at least one broker; return the metadata."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    with _quiet_aiokafka():
        while time.monotonic() < deadline:
            try:
                info = await describe_cluster(bootstrap, request_timeout=3.0, **admin_config)
                if info.get("brokers"):
                    return info
            except Exception as exc:
                last = exc
            await asyncio.sleep(0.25)
    with _quiet_aiokafka():
        try:  # the reason, where a client only says "Unable to bootstrap"
            await check_connection(bootstrap, timeout_s=5.0, **admin_config)
        except Exception as exc:
            last = exc
    raise KafkaNotReady(f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f}s (last error: {last!r})")


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[str | TopicSpec],
    *,
    timeout_s: float = 30.0,
    **admin_config: Any,
) -> list[str]:
    """Create the topics that do not exist yet and wait until every partition of each has a leader.

    An existing topic is not an error (its partition count and configs are left as they are). Any other
    broker error raises the matching ``aiokafka.errors`` exception. ``admin_config`` goes to
    ``AIOKafkaAdminClient`` (e.g. ``security_protocol``/``sasl_*`` for a real cluster). Returns the names
    of the topics this call created.
    """
    specs = [TopicSpec(t) if isinstance(t, str) else t for t in topics]
    if not specs:
        return []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **admin_config)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.configs)) for s in specs],
            timeout_ms=int(timeout_s * 1000),
        )
        created = []
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else None
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:
                raise for_code(code)(f"creating topic {name!r}: {message}")
        await _wait_for_leaders(admin, [s.name for s in specs], timeout_s)
        return created
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while True:
        for topic in await admin.describe_topics(sorted(pending)):
            partitions = topic.get("partitions") or []
            if topic.get("error_code", 0) == 0 and partitions and all(p.get("leader", -1) >= 0 for p in partitions):
                pending.discard(topic["topic"])
        if not pending:
            return
        if time.monotonic() > deadline:
            raise KafkaNotReady(f"topics without a leader after {timeout_s:.0f}s: {sorted(pending)}")
        await asyncio.sleep(0.1)
