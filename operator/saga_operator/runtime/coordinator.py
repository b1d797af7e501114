"""The imperative shell around the pure core: for one saga at a time, apply an event with
`transition`, write the new status (compare-and-set), and only then perform the effects.

Every path into a saga (a watch event, a reply from Kafka, a deadline) goes through `_apply` under the
saga's lock, so one saga's log is written by one writer at a time; different sagas run concurrently.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from saga_operator.adapters.kube import TRANSIENT_API_ERRORS, Conflict, Gone, SagaRef, is_too_large
from saga_operator.adapters.shards import EVERYTHING, Ownership
from saga_operator.domain import digest, integrity, ttl
from saga_operator.domain.durability import WriteCause, maybe_dispatched
from saga_operator.domain.events import (
    STALE_VIEW_REASONS,
    AbortRequested,
    CommandRefused,
    Effect,
    EmitEvent,
    Event,
    ReplyIgnored,
    ReplyReceived,
    Resumed,
    RetryRequested,
    SendCommand,
    SpecChanged,
    Start,
    TemplateLookup,
    Tick,
)
from saga_operator.domain.lifecycle import TO_UNDO
from saga_operator.domain.model import (
    ACCEPT_STATUS_ANNOTATION,
    DELETE_WITHOUT_COMPENSATION_ANNOTATION,
    FINALIZER,
    RETRY_ANNOTATION,
    TERMINAL_PHASES,
    Phase,
    SagaSpec,
    SagaStatus,
    StepState,
    effective_spec,
)
from saga_operator.domain.template import TEMPLATE_LABEL, SagaTemplateSpec
from saga_operator.domain.transition import next_deadline, settle, transition
from saga_operator.runtime.metrics import Metrics
from saga_operator.runtime.ports import SagaStore
from saga_operator.runtime.status_writer import StatusWriter
from saga_operator.runtime.tracing import SagaTracing
from saga_plumbing import Backoff, retry_transient
from saga_protocol import Command, CommandKind, Reply, command_topic, idempotency_key, reply_problem, reply_topic

log = logging.getLogger(__name__)

#: (topic, command, trace context for its headers or None): produce one command.
SendFn = Callable[[str, Command, Mapping[str, str] | None], Awaitable[None]]
EnsureTopicsFn = Callable[[list[str]], Awaitable[None]]


def _now() -> datetime:
    return datetime.now(UTC)


class StatusTooLarge(Exception):
    """The API server refused a status write for its size (etcd's request limit): no retry can succeed."""


#: A stored status the operator did not take: (reason, message). Reasons: CorruptStatus, StatusTampered;
#: StatusAccepted when a person's accept-status annotation made it take one it could not verify.
Verdict = tuple[str, str]
STATUS_ACCEPTED = "StatusAccepted"


def _rv_newer(candidate: str, current: str) -> bool:
    """resourceVersions are opaque, but etcd's are integers; where they are not, trust the newcomer."""
    try:
        return int(candidate) > int(current)
    except ValueError:
        return candidate != current


class SagaEntry:
    """What the coordinator knows of one saga: its identity, the metadata it acts on, spec and status.

    A finished saga that nothing is touching *rests*: its spec and status are kept as their JSON, about
    a tenth of the memory of the parsed models, and parsed again the moment anything reads them (a late
    reply, a retry annotation, a deletion). With thousands of finished Sagas this is most of the
    operator's memory (docs/performance.md).
    """

    __slots__ = (
        "_resting",
        "_spec",
        "_status",
        "abort_new",
        "accept_seq",
        "delete_confirmed",
        "deleting",
        "deletion_blocked",
        "finalizers",
        "generation",
        "lock",
        "ref",
        "resource_version",
        "retry_token",
        "sent_at",
        "spec_error",
    )

    def __init__(self, ref: SagaRef) -> None:
        self.ref = ref
        self.spec_error: str | None = None
        # spec.abort turned true since the operator last saw this spec (unknown at first sight: False). Kept until
        # _reconcile answers it, across re-reads.
        self.abort_new = False
        self.resource_version = ""
        self.generation = 1
        self.retry_token: str | None = None
        self.deleting = False
        self.accept_seq: str | None = None
        self.delete_confirmed = False
        self.deletion_blocked = False  # the Event saying so was posted for this deletion
        self.finalizers: list[str] = []
        self.lock = asyncio.Lock()
        # When a command went out, per (step, kind): for the step latency histogram.
        self.sent_at: dict[tuple[str, str], float] = {}
        self._spec: SagaSpec | None = None
        self._status = SagaStatus()
        # (spec JSON or None, status JSON, phase) while resting; None while parsed.
        self._resting: tuple[str | None, str, Phase] | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> SagaEntry:
        meta = body["metadata"]
        entry = cls(SagaRef(meta["namespace"], meta["name"], meta["uid"]))
        entry.adopt(body)
        return entry

    @classmethod
    def first_sight(cls, body: dict[str, Any], key: bytes | None) -> tuple[SagaEntry, Verdict | None]:
        meta = body["metadata"]
        entry = cls(SagaRef(meta["namespace"], meta["name"], meta["uid"]))
        return entry, entry.adopt(body, key)

    @property
    def spec(self) -> SagaSpec | None:
        self._wake()
        return self._spec

    @spec.setter
    def spec(self, spec: SagaSpec | None) -> None:
        self._wake()
        self._spec = spec

    @property
    def status(self) -> SagaStatus:
        self._wake()
        return self._status

    @status.setter
    def status(self, status: SagaStatus) -> None:
        self._wake()  # the spec rests with the status: bring it back before replacing the status
        self._status = status

    @property
    def run_spec(self) -> SagaSpec | None:
        """The spec the saga runs: for a templated saga, the template's steps and payload from its status."""
        spec = self.spec
        return None if spec is None else effective_spec(spec, self.status)

    @property
    def phase(self) -> Phase:
        """The phase, without waking a resting saga."""
        return self._resting[2] if self._resting is not None else self._status.phase

    @property
    def resting(self) -> bool:
        return self._resting is not None

    def rest(self) -> None:
        """Keep a finished, idle saga as JSON. Anything still to do (a deletion to finish, a writer
        holding or waiting for the lock) keeps it parsed."""
        if self._resting is not None or self.lock.locked() or self.deleting:
            return
        if self._status.phase not in TERMINAL_PHASES:
            return
        spec_json = self._spec.model_dump_json(by_alias=True) if self._spec is not None else None
        self._resting = (spec_json, self._status.model_dump_json(by_alias=True), self._status.phase)
        self._spec = None
        self._status = _EMPTY_STATUS
        self.sent_at.clear()  # replies still owed to a finished saga are ignored, never timed

    def _wake(self) -> None:
        if self._resting is None:
            return
        spec_json, status_json, _ = self._resting
        self._resting = None
        self._spec = SagaSpec.model_validate_json(spec_json) if spec_json is not None else None
        self._status = SagaStatus.model_validate_json(status_json)

    @property
    def finalized(self) -> bool:
        return FINALIZER in self.finalizers

    def adopt_metadata(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.resource_version = meta["resourceVersion"]
        self.generation = meta.get("generation", self.generation)
        annotations = meta.get("annotations") or {}
        self.retry_token = annotations.get(RETRY_ANNOTATION)
        self.accept_seq = annotations.get(ACCEPT_STATUS_ANNOTATION)
        self.delete_confirmed = annotations.get(DELETE_WITHOUT_COMPENSATION_ANNOTATION) == "true"
        deleting = meta.get("deletionTimestamp") is not None
        if not deleting:
            self.deletion_blocked = False
        self.deleting = deleting
        self.finalizers = list(meta.get("finalizers") or [])

    def adopt(self, body: dict[str, Any], key: bytes | None = None, stored_wins: bool = False) -> Verdict | None:
        """Take what the API server says. Our own status wins unless the stored one is further on
        (another writer, or our write whose answer we lost), or `stored_wins` (re-read after a conflict).

        With a `key`, a stored status is taken only if its digest verifies (or a person's accept-status
        annotation names its seq); a status that does not parse is never taken. Either way the verdict says
        why (None: nothing to say) and our own status stays."""
        self.adopt_metadata(body)
        previous = self.spec
        try:
            self.spec = SagaSpec.model_validate(body.get("spec") or {})
            self.spec_error = None
            self.abort_new = self.abort_new or (previous is not None and not previous.abort and self.spec.abort)
        except ValidationError as exc:
            self.spec, self.spec_error = None, _first_error(exc)
        raw = body.get("status")
        status, error = integrity.parse_status(raw)
        if status is None:
            return integrity.CORRUPT_STATUS, f"the stored status cannot be read: {error}"
        verdict: Verdict | None = None
        # Checked whatever its seq: a forged status is reported even when it would not win.
        if key is not None and status != self.status and not digest.is_unwritten(status):
            if not digest.verify(status, key):
                if self.accept_seq != str(status.seq):
                    why = (
                        "has no digest" if status.digest is None else "carries a digest the operator's key did not make"
                    )
                    return integrity.STATUS_TAMPERED, (
                        f"the stored status (seq {status.seq}, phase {status.phase.value}) {why}: not written by the "
                        "operator, not adopted"
                    )
                verdict = (
                    STATUS_ACCEPTED,
                    f"status seq {status.seq} adopted unverified: annotation {ACCEPT_STATUS_ANNOTATION}",
                )
        if stored_wins or status.seq >= self.status.seq:
            self.status = status
        elif verdict is not None:
            return None  # an accepted status that an own later write has already replaced
        return verdict


def _reply_refused(
    spec: SagaSpec, status: SagaStatus, reply: Reply, topic: str, key: bytes | None
) -> ReplyIgnored | None:
    """Checks 4 to 10 of docs/protocol.md §12.3 (the saga has started, has the step, and the reply came from the
    step's participant on its topic, for this saga and step, answering a command id of its own kind and attempt).
    The log's checks (11 to 15: sent, still wanted) are the pure core's."""
    if status.phase == Phase.PENDING:
        return ReplyIgnored("SagaNotStarted", invalid=True)
    step = next((s for s in spec.steps if s.name == reply.step), None)
    if step is None or status.step(reply.step) is None:
        return ReplyIgnored("UnknownStep", invalid=True)
    problem = reply_problem(reply, topic=topic, participant=step.participant, key=key)
    if problem is not None:
        return ReplyIgnored(problem[0], invalid=True, detail=problem[1])
    return None


# Stands in for the status of a resting saga; never read (reads wake the saga first).
_EMPTY_STATUS = SagaStatus()


def _stale_view_verdict(effects: list[Effect]) -> bool:
    return any(isinstance(e, ReplyIgnored) and e.invalid and e.reason in STALE_VIEW_REASONS for e in effects)


def _brief(body: Any, limit: int = 300) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    return text if len(text) <= limit else text[:limit] + "..."


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
    return f"spec.{where}: {message}" if where else f"spec: {message}"


class Coordinator:
    def __init__(
        self,
        kube: SagaStore,
        send: SendFn,
        ensure_topics: EnsureTopicsFn,
        metrics: Metrics,
        max_backoff_seconds: float = 30.0,
        *,
        participants: Collection[str] = (),
        status_key: bytes | None = None,
        tracing: SagaTracing | None = None,
        ttl_seconds_after_finished: int | None = None,
        write_behind: bool = False,
        coalesce_seconds: float = 1.0,
    ) -> None:
        self.kube = kube
        self._send = send
        self._ensure_topics = ensure_topics
        self.metrics = metrics
        self.max_backoff = max_backoff_seconds
        self.participants = frozenset(participants)
        # Signs every status written and verifies every status read (domain.digest); None: digests are off.
        self.status_key = status_key
        # Spans of the log's attempts (runtime/tracing.py); off (no provider): nothing is computed.
        self.tracing = tracing if tracing is not None else SagaTracing(None)
        # The TTL of a finished saga whose spec sets none (domain.ttl); None: kept until deleted.
        self.ttl_default = ttl_seconds_after_finished
        self.sagas: dict[str, SagaEntry] = {}
        self._known_topics: set[str] = set()
        self._deadlines: list[tuple[float, str]] = []
        self._scheduled: dict[str, float] = {}
        self._wake = asyncio.Event()
        # Each Event with the time it happened (not when it is posted): kubectl lists them by that time.
        self._events: asyncio.Queue[tuple[SagaRef, EmitEvent, datetime]] = asyncio.Queue(maxsize=10_000)
        self._last_event_at = datetime.min.replace(tzinfo=UTC)
        self._tasks: set[asyncio.Task[None]] = set()
        self.api_healthy = True
        # When statuses are written (SAGA_STATUS_WRITES): ahead of every command, or behind where the rules allow.
        self.status_writer = StatusWriter(
            write_behind, coalesce_seconds, metrics, lambda uid: self._spawn(self._write_behind(uid))
        )
        # Sagas created before this (1 s resolution, so within a second of it too) may have been started by a
        # predecessor that wrote behind and crashed before writing: started as resumed (Start.resumed).
        self._started = time.time()
        # The sagas this replica drives (adapters.shards): it knows every saga the watch shows, and acts (starts,
        # dispatches, fires deadlines, resumes, releases the finalizer) only on those of the shards it owns.
        self.ownership: Ownership = EVERYTHING

    def owns(self, uid: str) -> bool:
        return self.ownership.owns(uid)

    def release(self, ownership: Ownership) -> None:
        """Shards taken away (a rebalance): stop driving their sagas now. Their deadlines are dropped (the new
        owner derives them from the log); a write already under way finishes, and the compare-and-set keeps a
        brief overlap with the new owner safe."""
        self.ownership = ownership
        for uid in [uid for uid in self._scheduled if not ownership.owns(uid)]:
            del self._scheduled[uid]
        # Changes kept in memory that could not be written before the hand-over stay unwritten: the new owner
        # resumes from a log written behind, as after a crash (docs/architecture.md, "Writing behind").
        for uid in [uid for uid in self.status_writer.dirty_uids() if not ownership.owns(uid)]:
            self.status_writer.forget(uid)

    async def acquire(self, ownership: Ownership, bodies: list[dict[str, Any]], gained: Collection[int]) -> None:
        """Shards given to this replica, with a fresh listing of the Sagas: those of the `gained` shards are
        resumed from their status as after a restart (commands in flight sent again, their deadlines
        scheduled); those of shards it kept are reconciled (whatever the watch brought while no shard was
        owned, and their deadlines again)."""
        self.ownership = ownership
        gained = set(gained)

        async def one(body: dict[str, Any]) -> None:
            uid = (body.get("metadata") or {}).get("uid")
            if not uid or not ownership.owns(uid):
                return
            resume = ownership.shard_of(uid) in gained
            if resume:
                # A first sight, as after a restart: what this replica kept of it while another drove it is
                # not its own log (a status it could not verify then, say, must end the saga as at start-up).
                self.sagas.pop(uid, None)
            try:
                await self.observe(body, None, resume=resume)
            except Exception:
                self.metrics.sagas_unresumable.inc()
                log.exception("saga %s could not be resumed", uid)

        await asyncio.gather(*(one(body) for body in bodies))

    # ---- entry points -------------------------------------------------------------------------

    async def observe(self, body: dict[str, Any], event_type: str | None, *, resume: bool = False) -> None:
        """A watch event (or an item of the start-up listing) for one Saga. `resume`: its shard was just given to
        this replica; resume it as after a restart. A saga of a shard owned by another replica is only kept
        up to date."""
        meta = body.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return
        if event_type == "DELETED":
            self.sagas.pop(uid, None)
            self._scheduled.pop(uid, None)
            self.status_writer.forget(uid)
            return
        entry = self.sagas.get(uid)
        first_sight = entry is None
        verdict: Verdict | None = None
        if entry is None:
            entry, verdict = SagaEntry.first_sight(body, self.status_key)
            self.sagas[uid] = entry
        elif _rv_newer(meta["resourceVersion"], entry.resource_version):
            verdict = entry.adopt(body, self.status_key)
        elif entry.resting and not resume:
            return  # nothing new for a finished saga (Kopf's listing after our own, or our own write)
        if not self.owns(uid):
            entry.rest()
            return  # another replica's: it acts; this one keeps the log it saw, for the day the shard moves here
        async with entry.lock:
            if verdict is not None and verdict[0] == STATUS_ACCEPTED:
                self._emit(entry, EmitEvent("Normal", STATUS_ACCEPTED, verdict[1]))
                first_sight = True  # a status a person set: resume it as after a restart
            elif verdict is not None:
                self.metrics.status_refused.labels(verdict[0]).inc()
                if first_sight:
                    # Nothing of ours to keep: the saga stops here, for a person; nothing is sent.
                    await self._distrust(entry, body.get("status"), verdict)
                    return
                self._emit(entry, EmitEvent("Warning", verdict[0], f"{verdict[1]}; the operator keeps its own"))
                await self._restore(entry)
            if resume and entry.spec is not None and entry.status.phase not in (*TERMINAL_PHASES, Phase.PENDING):
                await self._fence(entry)
            # A saga handed over unstarted may have been started by its old owner, writing behind.
            predates = (first_sight and self._predates_me(meta)) or resume
            await self._reconcile(entry, first_sight or resume, predates=predates)
        entry.rest()

    async def _fence(self, entry: SagaEntry) -> None:
        """Before resuming a saga handed over from another replica: one status write with only `seq` moved on,
        compare-and-set on the log as listed (refused: read the stored log, write that). So the commands the
        resume sends again are those of the stored log, not of a listing that raced the old owner's last write
        (an action could otherwise go out after its compensation), and the old owner's next write is refused.
        tests/domain/test_domain_replicas.py found the race and proves the fix."""
        for _ in range(10):
            try:
                await self._write(entry, entry.status.model_copy(update={"seq": entry.status.seq + 1}))
                return
            except Conflict:
                self.metrics.status_writes.labels("conflict").inc()
                await self._reread(entry)

    def _predates_me(self, meta: dict[str, Any]) -> bool:
        created = meta.get("creationTimestamp")
        if not isinstance(created, str):
            return True
        try:
            when = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return True
        return when < self._started + 1

    async def _restore(self, entry: SagaEntry) -> None:
        """Write our own log back over a stored status we did not take, so that what `kubectl get` shows is the
        operator's log again. A conflict means yet another write: its watch event brings it."""
        if entry.status.seq == 0 and entry.status.phase == Phase.PENDING:
            return  # nothing of ours yet: the reconcile that follows writes it
        try:
            await self._write(entry, entry.status.model_copy(update={"seq": entry.status.seq + 1}))
        except Conflict:
            self.metrics.status_writes.labels("conflict").inc()

    async def _distrust(self, entry: SagaEntry, raw: Any, verdict: Verdict) -> None:
        """A saga first seen with a status the operator cannot read or did not write: phase Failed, with the
        reason; nothing is sent. A saga already Failed for that reason is left as it is."""
        reason, message = verdict
        stored, _ = integrity.parse_status(raw)
        status = stored if stored is not None else SagaStatus(seq=integrity.stored_seq(raw))
        if not (status.phase == Phase.FAILED and status.reason == reason):
            await self._write(entry, settle(status, Phase.FAILED, reason, message, _now(), entry.generation))
            self._emit(entry, EmitEvent("Warning", reason, f"{message}; nothing is sent. See docs/operations.md"))
        await self._after(entry)

    async def apply_reply(
        self,
        reply: Reply,
        received: float,
        *,
        topic: str,
        key: bytes | None,
        trace: Mapping[str, str] | None = None,
    ) -> list[ReplyIgnored]:
        """Apply one decoded reply read from `topic` with record key `key`, after the checks of
        docs/protocol.md §12.3 in their order. Returns why it changed nothing (empty: applied): `invalid`
        ones are the caller's to dead-letter, the others to count as ignored. Counting is the caller's,
        once per reply (the reply pump, runtime/replies.py). `trace`: the record's trace context (its
        participant's span), linked from the span of the attempt the reply ends."""
        entry = self.sagas.get(reply.saga_uid)
        if entry is None:
            return [ReplyIgnored("UnknownSaga", invalid=True)]
        try:
            async with entry.lock:
                spec = entry.run_spec
                if spec is None:
                    return [ReplyIgnored("InvalidSaga", invalid=True)]
                refused = _reply_refused(spec, entry.status, reply, topic, key)
                if refused is not None:
                    return [refused]
                started = entry.sent_at.pop((reply.step, reply.kind.value), None)
                with self.tracing.replying(trace):
                    effects = await self._apply(entry, ReplyReceived(reply, _now()), received=received)
                    if _stale_view_verdict(effects) and await self._stored_is_newer(entry):
                        # This replica's log may be behind the stored one (a hand-over, a zombie replica still
                        # reading): what it calls a reply to a command never sent may answer a newer attempt.
                        effects = await self._apply(entry, ReplyReceived(reply, _now()), received=received)
                ignored = [e for e in effects if isinstance(e, ReplyIgnored)]
                if not ignored:
                    self.metrics.step_outcomes.labels(reply.kind.value, reply.outcome.value).inc()
                    if started is not None:
                        self.metrics.step_latency.observe(received - started)
                await self._after(entry)
            return ignored
        finally:
            entry.rest()  # a late reply woke a finished saga: let it rest again

    async def _stored_is_newer(self, entry: SagaEntry) -> bool:
        """Read the saga again; True if the stored log was newer than this replica's and is now its own."""
        seq = entry.status.seq
        try:
            await self._reread(entry)
        except Gone:
            return False
        return entry.status.seq != seq

    async def run_deadlines(self) -> None:
        """The one timer of the process: a heap of (when, saga uid), rebuilt from `.status`."""
        while True:
            delay = self._deadlines[0][0] - time.time() if self._deadlines else 3600.0
            if delay > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=min(delay, 3600.0))
                except TimeoutError:
                    pass
                continue
            when, uid = heapq.heappop(self._deadlines)
            if self._scheduled.get(uid) != when:
                continue  # superseded by a later schedule
            del self._scheduled[uid]
            self._spawn(self._tick(uid))

    async def post_events(self) -> None:
        while True:
            ref, event, at = await self._events.get()
            try:
                await self.kube.post_event(ref, event.type, event.reason, event.message, at)
            except Exception as exc:
                self.metrics.events_dropped.inc()
                log.debug("event %s for %s not posted: %s", event.reason, ref.name, exc)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- internals ----------------------------------------------------------------------------

    async def _tick(self, uid: str) -> None:
        entry = self.sagas.get(uid)
        if entry is None or entry.spec is None or not self.owns(uid):
            return
        try:
            async with entry.lock:
                if entry.status.phase in TERMINAL_PHASES:
                    await self._expire(entry)  # the only deadline of a finished saga is its TTL
                    return
                await self._apply(entry, Tick(_now()))
                await self._after(entry)
            entry.rest()
        except Gone:
            self.sagas.pop(uid, None)
        except Exception:
            # A task's exception would otherwise vanish. The deadline stays in the status: try again later.
            log.exception("deadline of saga %s/%s could not be applied", entry.ref.namespace, entry.ref.name)
            self._schedule(uid, time.time() + self.max_backoff)

    async def _reconcile(self, entry: SagaEntry, first_sight: bool, predates: bool = False) -> None:
        if entry.spec is None:
            await self._refuse(entry)
            return
        status = entry.status
        if not entry.deleting and not entry.finalized and status.phase not in TERMINAL_PHASES:
            await self._set_finalizer(entry, add=True)
        # A saga that predates this process may have been started by a predecessor writing behind, which crashed
        # before its first write: it is started as resumed (its first steps may be out), and undone if deleted.
        # In strict mode too: the predecessor may have written behind (a switch of SAGA_STATUS_WRITES).
        resumed = predates
        if entry.deleting and status.phase == Phase.PENDING and not resumed:
            # Deleted before it started: nothing to undo, nothing to start.
            if entry.finalized:
                await self._set_finalizer(entry, add=False)
            return
        if status.phase == Phase.PENDING:
            template = await self._template(entry.spec, entry.ref)
            start = Start(_now(), self.participants, template, write_behind=self.status_writer.behind, resumed=resumed)
            await self._apply(entry, start)
        elif first_sight:
            await self._apply(entry, Resumed(_now()))
        elif integrity.mismatch(effective_spec(entry.spec, status), status) is not None:
            # The spec changed under a running saga (admission would refuse that): say so now, not at its next reply.
            await self._apply(entry, Tick(_now()))
        if entry.spec.abort and not entry.status.undoing and entry.status.phase not in TERMINAL_PHASES:
            await self._apply(entry, AbortRequested(_now()))
        elif entry.abort_new and entry.spec.abort:
            # An abort that can change nothing (finished, or already being undone): the core says why, once.
            await self._apply(entry, AbortRequested(_now()))
        entry.abort_new = False
        if entry.deleting and not entry.status.undoing and entry.status.phase not in TERMINAL_PHASES:
            await self._apply(entry, AbortRequested(_now(), reason="Deleted"))
        if entry.retry_token and entry.retry_token != entry.status.retry_token:
            await self._apply(entry, RetryRequested(entry.retry_token, _now()))
        if not entry.deleting and entry.status.observed_generation not in (None, entry.generation):
            # A spec change nothing above wrote (a new TTL): record that the operator has seen it.
            await self._apply(entry, SpecChanged(_now()))
        await self._after(entry)

    async def _template(self, spec: SagaSpec, ref: SagaRef) -> TemplateLookup | None:
        """For a templated saga about to start: the SagaTemplate it names, read now, once."""
        if spec.template_ref is None:
            return None
        name = spec.template_ref.name
        body = await retry_transient(
            f"reading SagaTemplate {ref.namespace}/{name}",
            lambda: self.kube.get_template(ref.namespace, name),
            transient=TRANSIENT_API_ERRORS,
            backoff=Backoff(initial=0.2, maximum=self.max_backoff),
        )
        if body is None:
            return TemplateLookup(None)
        meta = body.get("metadata") or {}
        identity = {"uid": meta.get("uid", ""), "resource_version": meta.get("resourceVersion", "")}
        try:
            return TemplateLookup(SagaTemplateSpec.model_validate(body.get("spec") or {}), **identity)
        except ValidationError as exc:
            return TemplateLookup(None, error=_first_error(exc), **identity)

    async def _after(self, entry: SagaEntry) -> None:
        """Book-keeping after any change: the next deadline, and the finalizer once there is nothing
        left to undo."""
        deadline = next_deadline(entry.status)
        if deadline is None and not entry.deleting and entry.spec is not None:
            deadline = ttl.expires_at(entry.spec, entry.status, self.ttl_default)
        if deadline is not None:
            self._schedule(entry.ref.uid, deadline.timestamp())
        if entry.deleting and entry.finalized and entry.status.phase in TERMINAL_PHASES:
            if self._may_release(entry):
                await self._set_finalizer(entry, add=False)

    async def _expire(self, entry: SagaEntry) -> None:
        """Delete a finished saga whose TTL has passed (domain.ttl decides; a Failed or Rejected one never is).
        The deletion then goes the usual way: the watch brings the deletionTimestamp, _after removes the
        finalizer (a Succeeded or Compensated saga has nothing to undo)."""
        spec = entry.spec
        if spec is None or entry.deleting or not ttl.expired(spec, entry.status, self.ttl_default, _now()):
            await self._after(entry)  # not (yet): a TTL changed since this was scheduled
            return
        try:
            await self.kube.delete_saga(entry.ref)
        except Gone:
            self.sagas.pop(entry.ref.uid, None)
            return
        except TRANSIENT_API_ERRORS as exc:
            log.warning(
                "saga %s/%s: deletion after its TTL failed (%s); trying again", entry.ref.namespace, entry.ref.name, exc
            )
            self._schedule(entry.ref.uid, time.time() + self.max_backoff)
            return
        entry.deleting = True  # until the watch says so: nothing more to schedule
        self.metrics.deleted_by_ttl.labels(entry.status.phase.value).inc()
        seconds = ttl.ttl_seconds(spec, self.ttl_default)
        log.info(
            "saga %s/%s: deleted, %ss after it finished %s",
            entry.ref.namespace,
            entry.ref.name,
            seconds,
            entry.status.phase.value,
        )

    def _may_release(self, entry: SagaEntry) -> bool:
        """Whether a deleted saga in a terminal phase may go. A Failed one that may still hold effects (a step
        not known to be undone, or a log the operator could not read) waits for a person's confirmation."""
        status = entry.status
        if status.phase != Phase.FAILED or entry.delete_confirmed:
            return True
        spec = entry.run_spec
        compensable = {step.name for step in spec.steps if step.compensation is not None} if spec else set()
        unrecorded = maybe_dispatched(spec, status) if spec is not None else set()
        outstanding = [
            r.name
            for r in status.steps
            if (r.state in TO_UNDO | {StepState.COMPENSATING, StepState.COMPENSATION_RETRYING} or r.name in unrecorded)
            and (r.name in compensable or spec is None)
        ]
        if not outstanding and status.reason != integrity.CORRUPT_STATUS:
            return True
        if not entry.deletion_blocked:
            entry.deletion_blocked = True
            what = (
                f"step(s) {', '.join(outstanding)} may still hold effects" if outstanding else "its log was unreadable"
            )
            self._emit(
                entry,
                EmitEvent(
                    "Warning",
                    "DeletionBlocked",
                    f"saga is Failed ({status.reason}) and {what}: it is not deleted without compensation until "
                    f'a person annotates {DELETE_WITHOUT_COMPENSATION_ANNOTATION}="true" (docs/operations.md)',
                ),
            )
        return False

    async def _refuse(self, entry: SagaEntry) -> None:
        """A spec the CRD should have refused (an older CRD, or validation off): say so, do nothing. A retry
        annotation is answered (once per value): nothing ran, so there is nothing to retry."""
        message = f"{integrity.INVALID_SPEC}: {entry.spec_error}"
        if not (entry.status.phase == Phase.REJECTED and entry.status.message == message):
            status = settle(
                entry.status, Phase.REJECTED, integrity.INVALID_SPEC, entry.spec_error or "", _now(), entry.generation
            )
            await self._write(entry, status)
            self._emit(
                entry,
                EmitEvent(
                    "Warning",
                    integrity.INVALID_SPEC,
                    f"{entry.spec_error or 'invalid spec'}; nothing was sent. Fix the manifest and create the saga "
                    "again",
                ),
            )
        token = entry.retry_token
        if token and token != entry.status.retry_token and not entry.deleting:
            answered = entry.status.model_copy(update={"retry_token": token, "seq": entry.status.seq + 1})
            await self._write(entry, answered)
            self._emit(
                entry,
                EmitEvent(
                    "Normal",
                    "RetryIgnored",
                    f"retry annotation {token!r} ignored: the saga is Rejected ({integrity.INVALID_SPEC}), nothing "
                    "ran; fix the manifest and create the saga again",
                ),
            )
        if entry.deleting and entry.finalized:
            await self._set_finalizer(entry, add=False)

    async def _apply(self, entry: SagaEntry, event: Event, received: float | None = None) -> list[Effect]:
        assert entry.spec is not None
        for _ in range(10):
            old = entry.status
            new, effects = transition(
                entry.spec,
                old,
                event,
                entry.generation,
                uid=entry.ref.uid,
                name=entry.ref.name,
                namespace=entry.ref.namespace,
            )
            if new.seq == old.seq:
                await self._perform(entry, effects, received)
                return effects
            cause = self.status_writer.cause(entry.spec, old, new, effects)
            if cause is None:
                # Written behind (runtime/status_writer.py): in memory now, in the store within the window.
                entry.status = new
                # Spans follow the log in memory: an attempt that opens and ends inside one window has its span.
                self.tracing.record(entry.ref, entry.run_spec, old, new, event, _now())
                await self._perform(entry, self.status_writer.hold(entry.ref.uid, old, effects), received)
                return effects
            try:
                await self._write(entry, new, cause)
            except Conflict:
                # Someone else wrote (the user's spec change, another replica): read, apply again.
                self.metrics.status_writes.labels("conflict").inc()
                if await self._reread(entry) and self.owns(entry.ref.uid):
                    # Our unwritten changes gave way to another writer's status: resume from it, as after a crash
                    # (only while this replica owns the saga: otherwise the other writer is its new owner).
                    await self._apply(entry, Resumed(_now()))
                if entry.spec is None or not self.owns(entry.ref.uid):
                    return []  # deleted, or handed over meanwhile: its new owner applies what comes
                continue
            except StatusTooLarge as exc:
                await self._status_too_large(entry, new, str(exc))
                return []
            self.tracing.record(entry.ref, entry.run_spec, old, new, event, _now())
            await self._perform(entry, effects, received)
            return effects
        raise RuntimeError(f"saga {entry.ref.name}: status kept changing under the operator")

    async def _status_too_large(self, entry: SagaEntry, wanted: SagaStatus, detail: str) -> None:
        """The API server will never take `wanted`: write a small status instead (no results), phase Failed with
        reason StatusTooLarge, and send nothing of what `wanted` recorded."""
        self.metrics.status_writes.labels("too-large").inc()
        small = wanted.model_copy(deep=True)
        for record in small.steps:
            record.result = None
        message = f"the status write was refused for its size ({detail}); step results dropped"
        try:
            await self._write(
                entry, settle(small, Phase.FAILED, integrity.STATUS_TOO_LARGE, message, _now(), entry.generation)
            )
        except (StatusTooLarge, Conflict) as exc:
            log.error(
                "saga %s/%s: even a small status could not be written: %s", entry.ref.namespace, entry.ref.name, exc
            )
        self._emit(entry, EmitEvent("Warning", integrity.STATUS_TOO_LARGE, f"{message}. See docs/operations.md"))

    async def _write_behind(self, uid: str) -> None:
        """The coalescing window of a saga ended: write the whole status in memory."""
        entry = self.sagas.get(uid)
        if entry is None:
            self.status_writer.forget(uid)
            return
        try:
            async with entry.lock:
                await self._write_unwritten(entry)
            entry.rest()
        except Gone:
            self.sagas.pop(uid, None)
            self.status_writer.forget(uid)
        except Exception:
            # The changes stay in memory (and the saga dirty): the next transition or window writes them.
            log.exception("status of saga %s/%s could not be written", entry.ref.namespace, entry.ref.name)
            self.status_writer.hold(uid, entry.status, [])

    async def _write_unwritten(self, entry: SagaEntry) -> None:
        for _ in range(10):
            if not self.status_writer.dirty(entry.ref.uid) or entry.spec is None:
                return
            try:
                await self._write(entry, entry.status, WriteCause.COALESCED)
                return
            except Conflict:
                self.metrics.status_writes.labels("conflict").inc()
                if await self._reread(entry) and self.owns(entry.ref.uid):
                    await self._apply(entry, Resumed(_now()))
            except StatusTooLarge as exc:
                await self._status_too_large(entry, entry.status, str(exc))
                return

    async def write_all_behind(self) -> None:
        """Write every status still in memory only (a graceful stop)."""
        for uid in self.status_writer.dirty_uids():
            await self._write_behind(uid)

    async def _write(self, entry: SagaEntry, status: SagaStatus, cause: str = "verdict") -> None:
        """One status write, signed; an API server away is waited out. Conflict, Gone and StatusTooLarge are
        the caller's. `status` is the whole status in memory: written, the saga is clean (`status_writer`)."""
        if self.status_key is not None:
            status = digest.sign(status, entry.status.digest, self.status_key)

        async def attempt() -> dict[str, Any]:
            try:
                return await self.kube.write_status(entry.ref, status, entry.resource_version)
            except ApiException as exc:
                if is_too_large(exc):
                    raise StatusTooLarge(
                        " ".join(filter(None, (str(exc.status), exc.reason, _brief(exc.body))))
                    ) from None
                self.api_healthy = False
                self.metrics.status_writes.labels("error").inc()
                raise
            except Gone:
                # Deleted behind our back (its finalizer removed by hand): forget it, as a re-read that finds
                # it gone does, instead of keeping it until a watch event or a deadline says so.
                self.sagas.pop(entry.ref.uid, None)
                raise
            except TRANSIENT_API_ERRORS:
                self.api_healthy = False
                self.metrics.status_writes.labels("error").inc()
                raise

        body = await retry_transient(
            f"status write for {entry.ref.namespace}/{entry.ref.name}",
            attempt,
            transient=TRANSIENT_API_ERRORS,
            backoff=Backoff(initial=0.2, maximum=self.max_backoff),
        )
        self.api_healthy = True
        self.metrics.status_writes.labels("ok").inc()
        entry.status = status
        entry.resource_version = body["metadata"]["resourceVersion"]
        for held in self.status_writer.written(entry.ref.uid, cause, status.phase):
            self._emit(entry, held)

    async def _reread(self, entry: SagaEntry) -> bool:
        """Read the saga again after a conflict. True: changes kept in memory only were dropped for another
        writer's status (the caller resumes from it)."""
        try:
            body = await self.kube.get_saga(entry.ref)
        except Gone:
            self.sagas.pop(entry.ref.uid, None)
            self.status_writer.forget(entry.ref.uid)
            raise
        stored, _ = integrity.parse_status(body.get("status"))
        uid = entry.ref.uid
        # Our last write still stored (only the metadata or the spec moved): what is in memory stays ours.
        ours = self.status_writer.ours(uid, stored, entry.status)
        dropped = not ours and self.status_writer.forget(uid)
        # After a conflict the stored log is the truth, if the operator wrote it; otherwise it keeps its own.
        verdict = entry.adopt(body, self.status_key, stored_wins=not ours)
        if verdict is not None and verdict[0] != STATUS_ACCEPTED:
            self.metrics.status_refused.labels(verdict[0]).inc()
            self._emit(entry, EmitEvent("Warning", verdict[0], f"{verdict[1]}; the operator keeps its own"))
        return dropped

    async def _set_finalizer(self, entry: SagaEntry, add: bool) -> None:
        """Our finalizer keeps a deleted saga around until its effects are compensated. Added to a templated saga,
        it comes with the template's label: where no admission policy set either at create, one PATCH sets both."""
        ref = entry.spec.template_ref if add and entry.spec is not None else None
        labels = {TEMPLATE_LABEL: ref.name} if ref is not None else None
        for _ in range(10):
            wanted = [f for f in entry.finalizers if f != FINALIZER] + ([FINALIZER] if add else [])
            try:
                body = await self.kube.set_finalizers(entry.ref, wanted, entry.resource_version, labels)
            except Conflict:
                await self._reread(entry)
                continue
            except Gone:
                return
            entry.adopt_metadata(body)
            return

    async def _perform(self, entry: SagaEntry, effects: list[Effect], received: float | None) -> None:
        spec = entry.run_spec
        assert spec is not None
        refused: list[CommandRefused] = []
        for effect in effects:
            match effect:
                case SendCommand():
                    if (refusal := await self._send_command(entry, spec, effect, received)) is not None:
                        refused.append(refusal)
                case EmitEvent():
                    self._emit(entry, effect)
                case ReplyIgnored():
                    pass  # returned by apply_reply; the reply pump dead-letters or counts it, once
        for refusal in refused:
            await self._apply(entry, refusal)  # the step fails now: waiting for its timeout would only retry it

    async def _send_command(
        self, entry: SagaEntry, spec: SagaSpec, effect: SendCommand, received: float | None
    ) -> CommandRefused | None:
        """Send one command. A command the producer refuses for its size is returned as a CommandRefused: it can
        never be sent, so the step fails (CommandTooLarge) instead of timing out and retrying."""
        topic = command_topic(effect.participant)
        command = Command(
            message_id=effect.command_id,
            saga_uid=entry.ref.uid,
            saga_namespace=entry.ref.namespace,
            saga_name=entry.ref.name,
            step=effect.step,
            kind=effect.kind,
            action=effect.action,
            attempt=effect.attempt,
            idempotency_key=idempotency_key(entry.ref.uid, effect.step),
            payload=spec.payload,
            input=effect.input,
            action_result=effect.action_result,
            reply_topic=reply_topic(effect.participant),
            sent_at=_now(),
        )
        try:
            # Fix (chaos run, docs/chaos.md): creating the topic used to sit outside this try. With the
            # broker down it raised out of _apply, after the status write: the deadline was never
            # scheduled, and on the reply pump's path the exception ended the pump for good.
            if topic not in self._known_topics:
                await self._ensure_topics([topic])
                self._known_topics.add(topic)
            await self._send(topic, command, self.tracing.command_trace(entry.ref, effect.command_id))
        except MessageSizeTooLargeError as exc:
            self.metrics.command_errors.inc()
            detail = f"the producer refused the {effect.kind.value} command as too large ({exc})"
            return CommandRefused(effect.step, effect.kind, integrity.COMMAND_TOO_LARGE, detail, _now())
        except Exception as exc:
            self.metrics.command_errors.inc()
            log.warning(
                "command %s/%s for %s not sent (%s); its timeout will retry",
                effect.step,
                effect.kind.value,
                entry.ref.name,
                exc,
            )
            return None
        now = time.time()
        entry.sent_at[(effect.step, effect.kind.value)] = now
        self.metrics.commands.labels(effect.kind.value).inc()
        if effect.attempt > 1:
            self.metrics.retries.labels(effect.kind.value).inc()
        elif effect.kind == CommandKind.COMPENSATION:
            self.metrics.compensations.inc()
        if received is not None:
            self.metrics.overhead.observe(now - received)
        return None

    def _emit(self, entry: SagaEntry, event: EmitEvent) -> None:
        level = logging.WARNING if event.type == "Warning" else logging.INFO
        log.log(level, "saga %s/%s: %s: %s", entry.ref.namespace, entry.ref.name, event.reason, event.message)
        # Strictly increasing: two Events of one transition are listed in the order they were emitted.
        at = max(_now(), self._last_event_at + timedelta(microseconds=1))
        self._last_event_at = at
        try:
            self._events.put_nowait((entry.ref, event, at))
        except asyncio.QueueFull:
            self.metrics.events_dropped.inc()

    def _schedule(self, uid: str, when: float) -> None:
        if self._scheduled.get(uid) == when:
            return
        self._scheduled[uid] = when
        heapq.heappush(self._deadlines, (when, uid))
        if self._deadlines[0] == (when, uid):
            self._wake.set()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def phase_counts(self) -> dict[str, int]:
        """The sagas this replica drives, by phase (summed over the replicas, each saga counts once)."""
        counts = {phase.value: 0 for phase in Phase}
        for uid, entry in self.sagas.items():
            if self.owns(uid):
                counts[entry.phase.value] += 1
        return counts
