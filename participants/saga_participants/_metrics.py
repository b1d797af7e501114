"""Prometheus metrics of one participant.

Each Participant gets its own registry (served on its /metrics) rather than the process-global one, so
that several participants can live in one process (tests do) without clashing registrations. Every series
carries a `participant` label so that scrapes of many services aggregate cleanly.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Handlers touch one database: most run in milliseconds; the long tail is lock waits and slow dependencies.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ParticipantMetrics:
    def __init__(self, participant: str, registry: CollectorRegistry | None = None) -> None:
        self.participant = participant
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.commands = Counter(
            "saga_participant_commands",
            "Commands answered, by kind (action|compensation) and reply outcome (succeeded|failed|error).",
            ["participant", "kind", "outcome"],
            registry=r,
        )
        self.duplicates = Counter(
            "saga_participant_duplicates",
            "Redelivered commands answered from the stored outcome without running the handler.",
            ["participant", "kind"],
            registry=r,
        )
        self.tombstones = Counter(
            "saga_participant_tombstones",
            "Compensations that arrived before their action and were recorded as tombstones.",
            ["participant"],
            registry=r,
        )
        self.refused_late_actions = Counter(
            "saga_participant_refused_late_actions",
            "Actions refused because their compensation was already recorded.",
            ["participant"],
            registry=r,
        )
        self.noop_compensations = Counter(
            "saga_participant_noop_compensations",
            "Compensations of an action that had failed: nothing to undo.",
            ["participant"],
            registry=r,
        )
        self.handler_retries = Counter(
            "saga_participant_handler_retries",
            "In-process retries after a handler raised an unexpected exception.",
            ["participant", "kind"],
            registry=r,
        )
        self.malformed = Counter(
            "saga_participant_malformed_messages",
            "Messages set aside to the dead-letter topic, by reason.",
            ["participant", "reason"],
            registry=r,
        )
        self.undeliverable_replies = Counter(
            "saga_participant_undeliverable_replies",
            "Replies that could not be produced in time; the command went to the dead-letter topic.",
            ["participant"],
            registry=r,
        )
        self.handler_latency = Histogram(
            "saga_participant_handler_duration_seconds",
            "Wall time of one handler run inside its database transaction.",
            ["participant", "kind", "action"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "saga_participant_in_flight",
            "Commands between fetch and finish: being handled, or waiting behind an earlier command of their saga.",
            ["participant"],
            registry=r,
        )
        self.in_flight.labels(participant).set(0)
        self.ready = Gauge(
            "saga_participant_ready",
            "1 while the participant consumes its command topic.",
            ["participant"],
            registry=r,
        )
        self.ready.labels(participant).set(0)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if absent): for tests and the CLI, not for the hot path."""
        sample = self.registry.get_sample_value(name, {"participant": self.participant, **labels})
        return float(sample) if sample is not None else 0.0
