"""Prometheus metrics of the operator. One registry per process, served on /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PhaseCounts = Callable[[], Mapping[str, int]]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter(
            "saga_operator_commands_sent_total", "Commands produced to Kafka.", ["kind"], registry=r
        )
        self.command_errors = Counter(
            "saga_operator_command_send_errors_total",
            "Commands that could not be produced (the step's timeout sends them again).",
            registry=r,
        )
        self.step_outcomes = Counter(
            "saga_operator_step_outcomes_total",
            "Replies applied, by kind and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "saga_operator_retries_total", "Commands sent again after a timeout or an error.", ["kind"], registry=r
        )
        self.compensations = Counter(
            "saga_operator_compensations_started_total", "Compensations started (first attempts).", registry=r
        )
        self.replies_ignored = Counter(
            "saga_operator_replies_ignored_total", "Replies that changed nothing, by reason.", ["reason"], registry=r
        )
        self.malformed = Counter(
            "saga_operator_malformed_messages_total",
            "Messages set aside to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.status_writes = Counter(
            "saga_operator_status_writes_total", "Status writes, by result.", ["result"], registry=r
        )
        self.status_writes_by_cause = Counter(
            "saga_operator_status_writes_by_cause_total",
            "Status writes done, by why they were written then: strict (SAGA_STATUS_WRITES=strict), or, writing "
            "behind, pivot, undo, retry, end (written ahead of their commands), coalesced (the window's write), "
            "verdict (the operator's own verdict on a log).",
            ["cause"],
            registry=r,
        )
        self.status_refused = Counter(
            "saga_operator_status_refused_total",
            "Stored statuses the operator did not adopt, by reason (StatusTampered: not written by it; "
            "CorruptStatus: unreadable).",
            ["reason"],
            registry=r,
        )
        self.sagas_unresumable = Counter(
            "saga_operator_resume_errors_total",
            "Sagas that could not be resumed at start-up (the others are); see the log.",
            registry=r,
        )
        self.deleted_by_ttl = Counter(
            "saga_operator_sagas_deleted_by_ttl_total",
            "Finished sagas the operator deleted because their ttlSecondsAfterFinished (or the operator's default, "
            "SAGA_TTL_SECONDS_AFTER_FINISHED) had passed, by the phase they finished in.",
            ["phase"],
            registry=r,
        )
        self.events_dropped = Counter(
            "saga_operator_events_dropped_total",
            "Kubernetes Events not posted (queue full or API error).",
            registry=r,
        )
        self.step_latency = Histogram(
            "saga_operator_step_latency_seconds",
            "From sending a command to applying its reply.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.overhead = Histogram(
            "saga_operator_step_overhead_seconds",
            "From taking a reply off Kafka to producing the next command (status write included).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        # Read at each scrape (set_function, by the app): the reply pump's backlog.
        self.reply_lag = Gauge(
            "saga_operator_reply_lag_seconds",
            "How long the oldest reply read and not yet applied (nor dead-lettered, nor ignored) has waited; "
            "0 when there is none.",
            registry=r,
        )
        self.replies_pending = Gauge(
            "saga_operator_replies_pending",
            "Replies read and not yet applied, dead-lettered or ignored.",
            registry=r,
        )
        # Both read at each scrape: `ready` through set_function, `saga_operator_sagas` through count_sagas.
        self.ready = Gauge("saga_operator_ready", "1 when the operator can do its work.", registry=r)
        self.shards_owned = Gauge(
            "saga_operator_shards_owned",
            "Shards (reply partitions) whose sagas this replica drives; 0 while it owns none.",
            registry=r,
        )

    def list_shards(self, shards: Callable[[], Iterable[int]]) -> None:
        """saga_operator_shard_owned{shard}: 1 for each shard this replica owns, at each scrape."""
        self.registry.register(_ShardsOwned(shards))

    def count_sagas(self, counts: PhaseCounts) -> None:
        """saga_operator_sagas{phase}: `counts()` at each scrape."""
        self.registry.register(_SagasByPhase(counts))


class _ShardsOwned(Collector):
    def __init__(self, shards: Callable[[], Iterable[int]]) -> None:
        self._shards = shards

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "saga_operator_shard_owned", "1 for each shard (reply partition) this replica drives.", labels=["shard"]
        )
        for shard in sorted(self._shards()):
            family.add_metric([str(shard)], 1.0)
        yield family


class _SagasByPhase(Collector):
    def __init__(self, counts: PhaseCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("saga_operator_sagas", "Sagas known to the operator, by phase.", labels=["phase"])
        for phase, count in self._counts().items():
            family.add_metric([phase], count)
        yield family
