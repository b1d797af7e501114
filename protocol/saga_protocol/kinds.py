"""The two enumerations of the wire format. A new value in either is a new protocol version."""

from enum import StrEnum


class CommandKind(StrEnum):
    ACTION = "action"
    COMPENSATION = "compensation"


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    # A business failure: the participant applied nothing and will refuse again; never retried.
    FAILED = "failed"
    # A transient failure (an exception, a dependency down): the operator retries per the step's policy.
    ERROR = "error"
