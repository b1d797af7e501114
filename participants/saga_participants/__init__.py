"""saga_participants: write a saga participant in Python.

Register an action and its compensation on a `Participant`, give it a store for its inbox (`SqliteStore`,
the default, or `PostgresStore`), and `run()` it: the SDK consumes the commands, applies each exactly once
in the same transaction as your handler's effect, and replies. `saga_participants.testing` runs handlers
without Kafka. See docs/participants.md.
"""

from saga_participants._handlers import ActionHandler, BusinessError, CompensationHandler
from saga_participants._inbox import Decision, Disposition, InboxStore
from saga_participants._participant import Participant
from saga_participants._pipeline import Interceptor
from saga_participants._postgres import PostgresStore
from saga_participants._settings import ParticipantSettings, RetryPolicy
from saga_participants._sqlite import SqliteStore
from saga_plumbing import KafkaSettings
from saga_plumbing.tracing import TracingSettingsError

__all__ = [
    "ActionHandler",
    "BusinessError",
    "CompensationHandler",
    "Decision",
    "Disposition",
    "InboxStore",
    "Interceptor",
    "KafkaSettings",
    "Participant",
    "ParticipantSettings",
    "PostgresStore",
    "RetryPolicy",
    "SqliteStore",
    "TracingSettingsError",
]
