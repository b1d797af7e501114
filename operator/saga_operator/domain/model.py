"""The Saga resource: spec (what the user asks for) and status (the saga log).

These pydantic models are the one source of truth for the resource's shape: the CRD's OpenAPI schema
is generated from them (`saga_operator.crd`), and a test fails when `crds/` drifts. Field descriptions
become `kubectl explain` text, so they are written for the person applying a manifest.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Self, cast

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator
from pydantic.alias_generators import to_camel

from saga_protocol import MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH

GROUP: Final = "saga.dev"
VERSION: Final = "v1alpha1"
KIND: Final = "Saga"
PLURAL: Final = "sagas"
FINALIZER: Final = f"{GROUP}/compensate-before-delete"
# Annotating a Failed saga with a new value here asks the operator to try its stuck step again.
RETRY_ANNOTATION: Final = f"{GROUP}/retry"
# Break-glass: a person who wrote a status on purpose annotates its seq here, and the operator adopts that
# status although its digest does not verify (docs/operations.md, "A status the operator refuses").
ACCEPT_STATUS_ANNOTATION: Final = f"{GROUP}/accept-status"
# "true": a person confirms that a Failed saga with effects still to undo may be deleted without them.
DELETE_WITHOUT_COMPENSATION_ANNOTATION: Final = f"{GROUP}/delete-without-compensation"

MAX_STEPS: Final = 32
# Bounds keep the CRD's CEL rules within the API server's cost budget.
MAX_DEPENDENCIES: Final = 8
DNS_LABEL: Final = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# The wire's limits on spec.payload, which travels unchanged in every command: the protocol's own
# (MAX_PAYLOAD_BYTES of compact UTF-8 JSON, MAX_PAYLOAD_DEPTH levels of containers, the payload is level 1).
# A CRD rule cannot measure a free-form object within its cost budget: the admission policy
# `sagas.saga.dev-payload` does (saga_operator.admission), and the operator checks again at start.
# The only spec field that may change once a Saga exists, and only from false to true. Every other field of
# SagaSpec, today's and any added later, is immutable: saga_operator.crd generates one CRD transition rule
# per field from the model, so a new field is covered without anyone remembering to.
MUTABLE_SPEC_FIELDS: Final = frozenset({"abort"})


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class RetryPolicy(_Model):
    """How often a step's command is sent again after a timeout or a transient error."""

    limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Retries after the first attempt. When they are used up the saga compensates.",
    )
    backoff_seconds: int = Field(
        default=1,
        ge=0,
        le=3600,
        description="Wait before the first retry; doubled for each further retry.",
    )
    max_backoff_seconds: int = Field(
        default=60,
        ge=0,
        le=86400,
        description="The longest wait between two attempts.",
    )

    def backoff(self, attempt: int) -> int:
        """Seconds to wait after `attempt` (1-based) failed, before sending attempt + 1."""
        return min(self.max_backoff_seconds, self.backoff_seconds * (1 << max(0, attempt - 1)))


# Rules on one step, with the step's name in their message. Cheap: a step's own fields only (dependsOn
# has at most MAX_DEPENDENCIES entries, so the duplicate check is 8 x 8 comparisons). Not repeated in
# `_same_rules_as_the_crd`: both are harmless to run (the backoff is capped by maxBackoffSeconds, a
# prerequisite named twice is one prerequisite), and a saga stored before these rules must keep running.
_ONE_STEP_RULES: Final = [
    {
        "rule": "!has(self.retry) || self.retry.backoffSeconds <= self.retry.maxBackoffSeconds",
        # No numbers in the message: string(int) has no size bound for the cost estimator, which then puts
        # this message 100 times over the budget.
        "messageExpression": "'step ' + self.name + ': retry.backoffSeconds must not exceed retry.maxBackoffSeconds'",
        "message": "retry.backoffSeconds must not exceed retry.maxBackoffSeconds",
    },
    {
        "rule": "!has(self.dependsOn) || self.dependsOn.all(d, self.dependsOn.exists_one(e, e == d))",
        "messageExpression": "'step ' + self.name + ': dependsOn names ' + "
        "self.dependsOn.filter(d, !self.dependsOn.exists_one(e, e == d))[0] + ' more than once'",
        "message": "a dependsOn entry is listed more than once",
    },
]


class StepSpec(_Model):
    """One step: an action sent to a participant and the compensation that undoes it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": cast(list[JsonValue], _ONE_STEP_RULES)})

    name: str = Field(
        pattern=DNS_LABEL,
        max_length=63,
        description="Unique within the saga; a DNS label (lower case letters, digits and '-').",
    )
    participant: str = Field(
        pattern=DNS_LABEL,
        max_length=63,
        description="The participant service that owns this step; its commands go to topic "
        "saga.commands.<participant>.",
    )
    action: str = Field(min_length=1, max_length=128, description="The participant's action to run, e.g. debit.")
    compensation: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The participant's action that undoes this step, e.g. refund. Only the last step "
        "(the pivot: once it succeeds the saga cannot be undone) may leave it out.",
    )
    depends_on: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]] | None = Field(
        default=None,
        max_length=MAX_DEPENDENCIES,
        description="Steps that must succeed before this one starts; each must be listed earlier, once. "
        "Left out, a step depends on the step before it (the steps run in order). An empty list means it "
        "depends on nothing: it starts at once, beside the first step.",
    )
    timeout_seconds: int = Field(
        default=30,
        ge=1,
        le=86400,
        description="How long to wait for the participant's reply before retrying.",
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retries on timeouts and transient errors.")


_STEP_RULES: Final = [
    {
        "rule": "self.all(s, self.exists_one(t, t.name == s.name))",
        "message": "step names must be unique",
    },
    {
        "rule": "self.filter(s, !has(s.compensation)).all(s, s.name == self[size(self) - 1].name)",
        "message": "only the last step (the pivot) may have no compensation",
    },
]


_EARLIER_STEP: Final = "self.steps.exists(j, t, j < i && t.name == d)"
_DEPENDS_ON_EARLIER: Final = f"self.steps.all(i, s, !has(s.dependsOn) || s.dependsOn.all(d, {_EARLIER_STEP}))"


class SagaSpec(_Model):
    """A saga: steps run one after another; if one fails, the completed ones are compensated in reverse."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # "Listed before it" makes a cycle impossible. Over the cost budget with one-variable
                    # macros; the index of a two-variable comprehension (Kubernetes 1.33+) brings it within.
                    "rule": _DEPENDS_ON_EARLIER,
                    "messageExpression": "'step ' + self.steps.transformList(i, s, has(s.dependsOn) && "
                    f"!s.dependsOn.all(d, {_EARLIER_STEP}), s.name)[0] + ': each dependsOn entry must name "
                    "another step of this saga, listed before it'",
                    "message": "each dependsOn entry must name another step of this saga, listed before it",
                },
            ]
        }
    )

    steps: list[StepSpec] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description="The steps, in order. At least one, at most 32.",
        json_schema_extra={"x-kubernetes-validations": cast(list[JsonValue], _STEP_RULES)},
    )
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description=f"JSON object sent unchanged with every command of this saga; at most "
        f"{MAX_PAYLOAD_BYTES // 1024} KiB as compact JSON, nested at most {MAX_PAYLOAD_DEPTH} levels deep "
        "(the object itself is level 1). Null is refused.",
        # Nullable only so that an explicit null reaches admission, where the policy sagas.saga.dev-payload
        # refuses it: otherwise the API server drops it and the saga runs with an empty payload, which for
        # a templated manifest is a bug that moves money with nothing in it. (A CRD rule cannot tell null
        # from absent: has() is false for both.) Without the policy the operator refuses it (InvalidSpec).
        json_schema_extra={"nullable": True},
    )
    abort: bool = Field(
        default=False,
        description="Set to true to stop the saga: running steps are compensated, in reverse order. Once true "
        "it stays true. The only field of the spec that may change after the saga is created.",
    )
    compensation_attempt_limit: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="Attempts per compensation before the saga is marked Failed for a person to look at "
        "(compensations are retried, not given up; see docs/operations.md).",
    )

    @model_validator(mode="after")
    def _same_rules_as_the_crd(self) -> Self:
        """The CRD's CEL rules again, for specs that reach the operator some other way (an older CRD)."""
        names = [step.name for step in self.steps]
        if len(set(names)) != len(names):
            raise ValueError("step names must be unique")

        if any(step.compensation is None for step in self.steps[:-1]):
            raise ValueError("only the last step (the pivot) may have no compensation")
        for index, step in enumerate(self.steps):
            for need in step.depends_on or ():
                if need not in names[:index]:
                    raise ValueError(f"step {step.name}: dependsOn {need!r} must name a step listed before it")
        return self

    def dependencies(self) -> dict[str, tuple[str, ...]]:
        """Each step's prerequisites, with the default (the previous step) filled in."""
        deps: dict[str, tuple[str, ...]] = {}
        for index, step in enumerate(self.steps):
            if step.depends_on is not None:
                deps[step.name] = tuple(step.depends_on)
            else:
                deps[step.name] = (self.steps[index - 1].name,) if index else ()
        return deps


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    COMPENSATING = "Compensating"
    COMPENSATED = "Compensated"
    # A compensation could not complete within its attempt limit (or the pivot's outcome is unknown):
    # a person decides; see docs/operations.md.
    FAILED = "Failed"
    # Refused before anything was sent (a payload over the protocol's limits, an unknown participant, a
    # spec the CRD should have refused): nothing ran, nothing to undo; fix the manifest, create it again.
    REJECTED = "Rejected"


TERMINAL_PHASES: Final = frozenset({Phase.SUCCEEDED, Phase.COMPENSATED, Phase.FAILED, Phase.REJECTED})


class StepState(StrEnum):
    PENDING = "Pending"
    DISPATCHED = "Dispatched"  # the action is in flight: applied or not, nobody knows yet
    RETRYING = "Retrying"  # waiting for the backoff before sending the action again
    SUCCEEDED = "Succeeded"
    REFUSED = "Refused"  # the participant refused for a business reason: nothing was applied
    COMPENSATING = "Compensating"  # the compensation is in flight
    COMPENSATION_RETRYING = "CompensationRetrying"
    COMPENSATED = "Compensated"
    SKIPPED = "Skipped"  # never started: the saga ended before it
    # The operator stopped retrying the action; whether it was applied is unknown, so it is compensated
    # (safe: compensations are idempotent and a late action is refused after one).
    ABANDONED = "Abandoned"


class ErrorRecord(_Model):
    reason: str = Field(description="CamelCase reason, e.g. InsufficientFunds or Timeout.")
    message: str = Field(default="", description="What happened, for a person.")


class StepStatus(_Model):
    """The log of one step."""

    name: str = Field(description="The step's name.")
    state: StepState = Field(default=StepState.PENDING, description="Where the step is.")
    attempt: int = Field(default=0, ge=0, description="Action commands sent so far.")
    compensation_attempt: int = Field(default=0, ge=0, description="Compensation commands sent so far.")
    command_id: str | None = Field(
        default=None,
        description="The messageId of the latest command sent for this step (the same for every send of one "
        "attempt): a reply answers it, or an earlier attempt of the same kind.",
    )
    dispatched_at: datetime | None = Field(default=None, description="When the latest command was sent.")
    deadline: datetime | None = Field(
        default=None, description="When the operator stops waiting: the reply timeout, or the end of a backoff."
    )
    finished_at: datetime | None = Field(default=None, description="When the action's outcome was recorded.")
    compensated_at: datetime | None = Field(default=None, description="When the compensation was recorded.")
    result: dict[str, Any] | None = Field(default=None, description="What the action returned.")
    error: ErrorRecord | None = Field(default=None, description="The latest failure of this step.")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Model):
    """A Kubernetes API condition, derived from the phase."""

    # The types and how each is derived: saga_operator.domain.conditions (ConditionType).
    type: str = Field(
        description="Completed: True once the saga has ended (phase Succeeded, Compensated or Failed), False "
        "while it runs. Succeeded: True when every step has succeeded; False while the saga is being undone "
        "or once it ended otherwise; Unknown while it still may succeed."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="The phase the condition was derived from, e.g. Compensating.")
    message: str = Field(default="", description="Why the saga is where it is: the status's message.")
    last_transition_time: datetime = Field(description="When the condition's status last changed.")
    observed_generation: int | None = Field(
        default=None, description="The spec generation (metadata.generation) the condition was computed from."
    )


class SagaStatus(_Model):
    """The saga log. Written by the operator before each command it sends."""

    phase: Phase = Field(default=Phase.PENDING, description="Pending, Running, Succeeded, Compensating, ...")
    seq: int = Field(default=0, ge=0, description="Counts the operator's writes of this status.")
    observed_generation: int | None = Field(default=None, description="The spec generation last acted on.")
    current_step: str | None = Field(default=None, description="The step(s) in flight, for kubectl get.")
    progress: str | None = Field(default=None, description="Steps succeeded / steps, for kubectl get.")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    undoing: bool = Field(
        default=False,
        description="The saga is being undone: an abort, a deletion, or a step that failed (refused, or its "
        "retries used up). Once true it stays true.",
    )
    written_behind: bool | None = Field(
        default=None,
        description="True: the operator writes this log behind some of its commands (SAGA_STATUS_WRITES=behind), "
        'so after a restart the log may not show every command sent (docs/architecture.md, "Writing the log '
        'behind").',
    )
    resumed_behind: bool | None = Field(
        default=None,
        description="True: the saga was resumed from a log written behind its commands. When it is undone, a "
        "Pending step that may have been sent unrecorded is compensated (a no-op if its action never arrived), "
        "not skipped.",
    )
    retries_granted: int = Field(
        default=0, ge=0, description="How often a person asked, by annotation, to retry a Failed saga."
    )
    retry_token: str | None = Field(default=None, description="The last retry annotation value acted on.")
    reason: str | None = Field(
        default=None,
        description="CamelCase reason of a Failed or Rejected saga, e.g. CompensationStuck, SpecStatusMismatch, "
        "PayloadTooLarge (docs/operations.md lists them).",
    )
    message: str | None = Field(default=None, description="Why the saga is where it is.")
    steps: list[StepStatus] = Field(default_factory=list, description="One record per step, in spec order.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Completed and Succeeded, derived from the phase, e.g. for kubectl wait --for=condition=Completed.",
    )
    previous_digest: str | None = Field(
        default=None, description="The digest of the status this one succeeds (the chain of the operator's writes)."
    )
    digest: str | None = Field(
        default=None,
        description="HMAC-SHA256 of this status (without the digest), by the operator's key: a status it did not "
        'write is not adopted (docs/architecture.md, "What the operator defends against").',
    )

    def step(self, name: str) -> StepStatus | None:
        for step in self.steps:
            if step.name == name:
                return step
        return None

    def to_patch(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
