"""How each SagaTemplate is used, written on its status: `kubectl get sagatemplates` shows SAGAS and RUNNING.

Counted from what the operator already watches, with no request of its own: every replica sees every Saga (the
start-up listing, then the watch) and every SagaTemplate (a watch of its own), and keeps of each templated Saga
only which template it names, whether it is finished and when it was created (`domain.template.SagaUse`),
indexed by template. A recount is then a walk over that template's sagas in memory. The status also says
what every saga of the template would be refused for at start (`template_problem`: a step input reading a
step it does not depend on), checked once per version of the template.

Invariants:
- only the replica that owns the template's shard (its uid's, as for a saga: adapters.shards) writes its
  status, so with several replicas each template has one writer; a rebalance recounts every template (the new
  owner's first recount writes what it sees);
- a template is recounted when one of its sagas is created, changes between running and finished, or is
  deleted, when the template itself changes (its spec, or a status someone else wrote), and when shards are
  gained; at most once per `interval` seconds (the first change of a quiet template at once): a burst of a
  thousand sagas costs one PATCH per interval, not a thousand;
- the status is written only when it differs from the stored one (the watch shows it), so the operator's own
  write, coming back through the watch, writes nothing more;
- a status write that fails is tried again later (`retry_seconds`); a template deleted meanwhile is dropped.

The count is as fresh as the watch: a saga created a moment ago, or one whose status is written behind, may be
counted at the next recount. The status is recomputed whole, so the last write always states one replica's
complete view.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from saga_operator.adapters.kube import TRANSIENT_API_ERRORS, Gone
from saga_operator.adapters.shards import Ownership
from saga_operator.domain.template import (
    SagaTemplateStatus,
    SagaUse,
    saga_use,
    template_problem,
    template_status,
)

log = logging.getLogger(__name__)

#: At most one recount (and so one status PATCH) per template per this many seconds.
RECOUNT_SECONDS = 2.0
RETRY_SECONDS = 30.0

Key = tuple[str, str]  # (namespace, template name)


class TemplateStatusStore(Protocol):
    async def write_template_status(self, namespace: str, name: str, status: SagaTemplateStatus) -> None:
        """Replace the template's status; raises Gone when there is no such template."""
        ...


@dataclass
class _Template:
    uid: str
    generation: int | None
    spec: Mapping[str, Any]
    problem: str | None  # template_problem(spec): checked once per version of the template
    #: The status as stored (the watch's latest), or as this replica last wrote it; None: none readable.
    status: SagaTemplateStatus | None
    sagas: set[str] = field(default_factory=set)


def _stored_status(raw: Any) -> SagaTemplateStatus | None:
    if not isinstance(raw, dict) or not raw:
        return None
    try:
        return SagaTemplateStatus.model_validate(raw)
    except ValidationError:
        return None  # not ours to read: the next write replaces it


class TemplateUsage:
    def __init__(
        self,
        store: TemplateStatusStore,
        ownership: Callable[[], Ownership],
        *,
        interval: float = RECOUNT_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ownership = ownership
        self.interval = interval
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._uses: dict[str, SagaUse] = {}  # saga uid -> the template it names
        self._templates: dict[Key, _Template] = {}
        # Sagas naming a template this replica has not seen (yet, or at all): moved over when it appears.
        self._orphans: dict[Key, set[str]] = {}
        self._due: dict[Key, float] = {}  # monotonic time each template is to be recounted
        self._last: dict[Key, float] = {}  # when it was last recounted
        self._wake = asyncio.Event()
        self.writes = 0

    # ---- what the watches show --------------------------------------------------------------

    def saw_saga(self, body: Mapping[str, Any], event_type: str | None) -> None:
        uid = (body.get("metadata") or {}).get("uid")
        if not isinstance(uid, str):
            return
        old = self._uses.get(uid)
        new = None if event_type == "DELETED" else saga_use(body)
        if old == new:
            return  # nothing the count shows changed (most events: a step moved on)
        if old is not None:
            key = (old.namespace, old.template)
            self._sagas_of(key).discard(uid)
            if key in self._orphans and not self._orphans[key]:
                del self._orphans[key]  # no saga names that missing template any more
            self._mark(key)
        if new is None:
            self._uses.pop(uid, None)
            return
        self._uses[uid] = new
        self._sagas_of((new.namespace, new.template)).add(uid)
        self._mark((new.namespace, new.template))

    def saw_template(self, body: Mapping[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if event_type == "DELETED":
            gone = self._templates.pop(key, None)
            self._due.pop(key, None)
            self._last.pop(key, None)
            if gone is not None and gone.sagas:
                self._orphans[key] = gone.sagas  # a template of the same name may come back: they name it too
            return
        known = self._templates.get(key)
        sagas = known.sagas if known is not None else self._orphans.pop(key, set())
        spec = body.get("spec") or {}
        same = known is not None and known.spec == spec
        self._templates[key] = _Template(
            uid=meta.get("uid") or "",
            generation=meta.get("generation"),
            spec=spec,
            problem=known.problem if known is not None and same else template_problem(spec),
            status=_stored_status(body.get("status")),
            sagas=sagas,
        )
        self._mark(key)  # the recount writes only if the stored status is not what it should be

    def recount_all(self) -> None:
        """Shards gained: every template this replica now owns gets its status checked."""
        for key in self._templates:
            self._mark(key)

    def counted(self, namespace: str, name: str) -> int:
        """How many sagas this replica counts for the template (tests, debugging)."""
        key = (namespace, name)
        template = self._templates.get(key)
        return len(template.sagas if template is not None else self._orphans.get(key, ()))

    def _sagas_of(self, key: Key) -> set[str]:
        template = self._templates.get(key)
        return template.sagas if template is not None else self._orphans.setdefault(key, set())

    def _mark(self, key: Key, not_before: float = 0.0) -> None:
        if key not in self._templates:
            return  # counted when the template appears
        when = max(self._clock(), self._last.get(key, float("-inf")) + self.interval, not_before)
        if key not in self._due or when < self._due[key]:
            self._due[key] = when
        self._wake.set()

    # ---- recounting ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Recount the templates as they fall due, until cancelled."""
        while True:
            self._wake.clear()
            await self.recount_due()
            delay = min(self._due.values()) - self._clock() if self._due else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay if delay is None else max(delay, 0.0))
            except TimeoutError:
                pass

    async def recount_due(self) -> None:
        now = self._clock()
        for key in [key for key, when in self._due.items() if when <= now]:
            del self._due[key]
            try:
                await self._recount(key)
            except Exception:
                # A bug here must not stop the task (/readyz would name it): the counts are for people to read.
                log.exception("SagaTemplate %s/%s: recount failed; trying again", *key)
                self._mark(key, not_before=self._clock() + self.retry_seconds)

    async def _recount(self, key: Key) -> None:
        template = self._templates.get(key)
        if template is None or not self._ownership().owns(template.uid):
            return  # another replica's to write
        self._last[key] = self._clock()
        uses = [self._uses[uid] for uid in template.sagas if uid in self._uses]
        status = template_status(template.spec, template.generation, uses, template.status, template.problem)
        if status == template.status:
            return
        namespace, name = key
        try:
            await self._store.write_template_status(namespace, name, status)
        except Gone:
            return  # deleted: the watch says so next
        except TRANSIENT_API_ERRORS as exc:
            log.warning("SagaTemplate %s/%s: its status could not be written (%s); trying again", namespace, name, exc)
            self._mark(key, not_before=self._clock() + self.retry_seconds)
            return
        self.writes += 1
        if self._templates.get(key) is template:
            template.status = status  # until the watch shows it: a recount meanwhile writes nothing again
