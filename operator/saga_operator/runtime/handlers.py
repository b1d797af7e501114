"""The Kopf entry points, kept thin: they hand everything to `OperatorApp` and its coordinator.

Only `on.event` is used, for Sagas and SagaTemplates: it costs no writes of Kopf's own (no progress or last-handled
annotations), so one saga transition is one status PATCH. Kopf gives us the watch streams, their
reconnection, and start-up/clean-up ordering.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from saga_operator import config
from saga_operator.domain.model import GROUP, PLURAL, VERSION
from saga_operator.domain.template import TEMPLATE_PLURAL
from saga_operator.runtime.app import OperatorApp


@kopf.on.startup()
async def start_operator(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Kopf would post an Event for every handler run; the coordinator posts the ones that matter.
    settings.posting.level = logging.ERROR
    # The Saga CRD is installed before the operator starts, and the role grants no access to CRDs or
    # Namespaces: without this, Kopf's dynamic scanning retries its forbidden lists for a minute.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    # Fix (benchmark, docs/performance.md): memory with many Sagas. Kopf lists every Saga again when its
    # watch starts (after our own resume), by default in one response, and keeps a per-object worker,
    # holding the last raw body, for 5 s after each event. With 5,000 Sagas: peak RSS 310 -> 241 MiB,
    # throughput unchanged. (Our handler is stateless, so a worker exiting early costs nothing.)
    settings.watching.chunk_size = 500
    settings.queueing.idle_timeout = 0.5
    try:
        # The settings come from __main__ (read and checked before Kopf starts); from the environment otherwise.
        app = memo["app"] = OperatorApp(memo.get("settings") or config.load(), memo.get("tracer_provider"))
        await app.start()
    except Exception as exc:
        # Kopf's default would run the start-up again every 60 s, the process alive and serving nothing. Start
        # waits out transient outages itself, so what gets here needs a person (a port in use, a refused Kafka
        # login, a topic the broker will not create, bad settings): fail for good; __main__ exits 1.
        raise kopf.PermanentError(f"{type(exc).__name__}: {exc}") from exc


@kopf.on.cleanup()
async def stop_operator(memo: kopf.Memo, **_: Any) -> None:
    app: OperatorApp | None = memo.get("app")
    if app is not None:
        await app.stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def saga_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    app: OperatorApp = memo["app"]
    assert app.coordinator is not None, "start-up handlers finish before watching starts"
    body = dict(event["object"])
    app.saw_sagas([body], event.get("type"))  # first: the count does not depend on the saga's own handling
    await app.coordinator.observe(body, event.get("type"))


@kopf.on.event(GROUP, VERSION, TEMPLATE_PLURAL)
async def template_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """SagaTemplates are only watched for their usage status (runtime.template_usage): a saga of one reads it
    fresh when it starts."""
    app: OperatorApp = memo["app"]
    assert app.usage is not None, "start-up handlers finish before watching starts"
    app.usage.saw_template(dict(event["object"]), event.get("type"))
