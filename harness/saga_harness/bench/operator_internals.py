"""The operator's internals the benchmark uses, in one place.

The floor replays the operator's own status writes (the pure core's statuses on its happy path, the
adapter's patch bodies) and its Kafka producer; the scale phase leaves Sagas as a previous operator
would have (its finalizer); the driver's client addresses Sagas by the CRD's group, version and plural.
None of these is exported by `saga_operator`; when they are, this module is the only one to change.
"""

from __future__ import annotations

from saga_operator.adapters.kafka import new_producer, send_command
from saga_operator.adapters.kube import status_patch
from saga_operator.domain.events import ReplyReceived, Start
from saga_operator.domain.model import FINALIZER, GROUP, PLURAL, VERSION, SagaSpec, SagaStatus
from saga_operator.domain.transition import transition

__all__ = [
    "FINALIZER",
    "GROUP",
    "PLURAL",
    "VERSION",
    "ReplyReceived",
    "SagaSpec",
    "SagaStatus",
    "Start",
    "new_producer",
    "send_command",
    "status_patch",
    "transition",
]
