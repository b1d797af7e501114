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
# The only spec fields that may change once a Saga exists: abort (only from false to true) and the TTL (any
# time, also on a finished saga, as a Job's). Every other field of SagaSpec, today's and any added later, is
# immutable: saga_operator.crd generates one CRD transition rule per field from the model, so a new field is
# covered without anyone remembering to.
MUTABLE_SPEC_FIELDS: Final = frozenset({"abort", "ttl_seconds_after_finished"})
#: Of MUTABLE_SPEC_FIELDS, the ones that may only go from false to true.
ONE_WAY_SPEC_FIELDS: Final = frozenset({"abort"})
#: The longest spec.ttlSecondsAfterFinished: a year.
MAX_TTL_SECONDS: Final = 366 * 86400


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class RetryPolicy(_Model):
    """How often a step's command is sent again after a timeout or a transient error."""

    limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Retries after the first attempt, on a timeout or a transient error. When they are used "
        "up the saga compensates.",
    )
    backoff_seconds: int = Field(
        default=1,
        ge=0,
        le=3600,
        description="Wait before the first retry; doubled for each further retry. At most maxBackoffSeconds.",
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
        description="The participant's action that undoes this step, e.g. refund. Only the last step may "
        "leave it out: it is then the pivot, which runs after every other step has succeeded and, once it "
        "succeeds, cannot be undone.",
    )
    depends_on: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]] | None = Field(
        default=None,
        max_length=MAX_DEPENDENCIES,
        description="Steps that must succeed before this one starts; each must be listed earlier, once "
        "(so there are no cycles). Left out, a step depends on the step before it (the steps run in order). "
        "An empty list means it depends on nothing: it starts at once, beside the first step. A pivot (a last "
        "step without compensation) runs after every other step whatever it says here.",
    )
    timeout_seconds: int = Field(
        default=30,
        ge=1,
        le=86400,
        description="How long to wait for the participant's reply to one attempt before retrying, in seconds; "
        "the same for the compensation's attempts.",
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retries on timeouts and transient errors.")
    input: dict[str, Any] | None = Field(
        default=None,
        description="JSON object sent as the command's `input` (the compensation gets the same). A string "
        "value that is wholly `${expression}` is replaced by the value of that CEL expression over `payload`, "
        "`saga` (name, namespace, uid) and `steps.<name>.result` / `steps.<name>.input` of the steps this one "
        "depends on, directly or through others; e.g. `${steps.videos.result.purchaseId}`. Evaluated once, "
        "before the first attempt; an expression that fails fails the step (InputFailed) before anything is sent.",
    )


_STEP_RULES: Final = [
    {
        "rule": "self.all(s, self.exists_one(t, t.name == s.name))",
        # transformList, not filter: a filter over objects is 100 times over the cost budget as a message.
        "messageExpression": "'step ' + self.transformList(i, s, self.exists(j, t, j != i && t.name == s.name), "
        "s.name)[0] + ': another step has the same name (step names must be unique)'",
        "message": "step names must be unique",
    },
    {
        "rule": "self.filter(s, !has(s.compensation)).all(s, s.name == self[size(self) - 1].name)",
        "messageExpression": "'step ' + self.transformList(i, s, !has(s.compensation) && i != size(self) - 1, "
        "s.name)[0] + ': no compensation, but only the last step (the pivot) may have no compensation'",
        "message": "only the last step (the pivot) may have no compensation",
    },
]


class TemplateRef(_Model):
    """Which SagaTemplate to run, with its parameters."""

    name: str = Field(
        pattern=DNS_LABEL, max_length=63, description="The SagaTemplate's name, in the saga's own namespace."
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="A value for each parameter the template declares (those with a default may be left out). "
        "They are checked when the saga starts (missing, of the wrong type, not declared: phase Rejected, reason "
        "InvalidParameters, naming the parameter) and set on the payload, each under its own name.",
    )


class ExpandedTemplate(_Model):
    """What a templated saga runs, copied from its SagaTemplate when it started: editing or deleting the
    template later never changes it."""

    name: str = Field(description="The SagaTemplate's name.")
    uid: str = Field(default="", description="The SagaTemplate's metadata.uid when the saga started.")
    resource_version: str = Field(default="", description="The SagaTemplate's resourceVersion when the saga started.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Every parameter's value, defaults included, as checked."
    )
    steps: list[StepSpec] = Field(max_length=MAX_STEPS, description="The template's steps.")
    payload: dict[str, Any] = Field(
        default_factory=dict, description="The payload the saga runs with: the template's, the saga's, the parameters."
    )


_EARLIER_STEP: Final = "self.steps.exists(j, t, j < i && t.name == d)"
_DEPENDS_ON_EARLIER: Final = (
    f"!has(self.steps) || self.steps.all(i, s, !has(s.dependsOn) || s.dependsOn.all(d, {_EARLIER_STEP}))"
)
# The first entry of step s (at index i) that names no earlier step, and whether it names a step at all.
_BAD_ENTRY: Final = f"s.dependsOn.filter(d, !{_EARLIER_STEP})[0]"
_DEPENDS_ON_MESSAGE: Final = (
    f"self.steps.transformList(i, s, has(s.dependsOn) && !s.dependsOn.all(d, {_EARLIER_STEP}), "
    f"'step ' + s.name + ': dependsOn names ' + {_BAD_ENTRY} + ', which is not a step listed before it "
    "(each dependsOn entry must name another step of this saga, listed before it)')[0]"
)


class SagaSpec(_Model):
    """A saga: steps run one after another; if one fails, the completed ones are compensated in reverse."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.steps) != has(self.templateRef)",
                    "message": "a saga has either steps or a templateRef, not both and not neither",
                },
                {
                    # "Listed before it" makes a cycle impossible. Over the cost budget with one-variable
                    # macros; the index of a two-variable comprehension (Kubernetes 1.33+) brings it within.
                    "rule": _DEPENDS_ON_EARLIER,
                    "messageExpression": _DEPENDS_ON_MESSAGE,
                    "message": "each dependsOn entry must name another step of this saga, listed before it",
                },
            ]
        }
    )

    # minItems only in the schema: the model reads an empty list as "none" (a templated saga's, which a dump of the
    # model writes as []), and `_same_rules_as_the_crd` requires steps or a templateRef.
    steps: list[StepSpec] = Field(
        default_factory=list,
        max_length=MAX_STEPS,
        description="The steps, in order: at least one, at most 32; left out when templateRef names them. The "
        "last one may have no compensation: it is then the pivot, the step after which the saga can no longer be "
        "undone, and it runs after every other step has succeeded.",
        json_schema_extra={"minItems": 1, "x-kubernetes-validations": cast(list[JsonValue], _STEP_RULES)},
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
    template_ref: TemplateRef | None = Field(
        default=None,
        description="Run the steps of a SagaTemplate of this namespace instead of steps of its own: the template "
        "is read once, when the saga starts, and what it said is kept in status.template.",
    )
    abort: bool = Field(
        default=False,
        description="Set to true to stop the saga: running steps are compensated, in reverse order. Once true "
        "it stays true. On a saga that has already finished it changes nothing (an Event AbortIgnored says so). "
        "With ttlSecondsAfterFinished, the only fields of the spec that may change after the saga is created.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TTL_SECONDS,
        description="Delete the saga this many seconds after it finished Succeeded or Compensated (0: at once), as "
        "a Job's field of the same name. Failed and Rejected sagas are never deleted by it. Unset: the operator's "
        "default (SAGA_TTL_SECONDS_AFTER_FINISHED; unset there too: kept until deleted). May be set or changed at "
        "any time, also after the saga finished.",
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
        if bool(self.steps) == (self.template_ref is not None):
            raise ValueError("a saga has either steps or a templateRef, not both and not neither")
        check_steps(self.steps)
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


def check_steps(steps: list[StepSpec]) -> None:
    """The CRD's rules on a list of steps (a saga's or a template's); ValueError naming the first broken one."""
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise ValueError("step names must be unique")
    if any(step.compensation is None for step in steps[:-1]):
        raise ValueError("only the last step (the pivot) may have no compensation")
    for index, step in enumerate(steps):
        for need in step.depends_on or ():
            if need not in names[:index]:
                raise ValueError(f"step {step.name}: dependsOn {need!r} must name a step listed before it")


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
    dispatched_at: datetime | None = Field(default=None, description="When the latest action command was sent.")
    deadline: datetime | None = Field(
        default=None, description="When the operator stops waiting: the reply timeout, or the end of a backoff."
    )
    finished_at: datetime | None = Field(default=None, description="When the action's outcome was recorded.")
    compensation_dispatched_at: datetime | None = Field(
        default=None, description="When the latest compensation command was sent."
    )
    compensated_at: datetime | None = Field(default=None, description="When the compensation was recorded.")
    input: dict[str, Any] | None = Field(
        default=None,
        description="The step's input as evaluated before its first attempt: every command of the step carries it.",
    )
    result: dict[str, Any] | None = Field(default=None, description="What the action returned.")
    error: ErrorRecord | None = Field(default=None, description="The latest failure of this step.")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Model):
    """A Kubernetes API condition (the shape of metav1.Condition), derived from the phase."""

    # The types and how each is derived: saga_operator.domain.conditions (ConditionType).
    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Completed: True once the saga has finished, either way (phase Succeeded, Compensated, Failed "
        "or Rejected), False while it runs or compensates: wait for this one. Succeeded: True when every step "
        "has succeeded; False once the saga finished otherwise; Unknown while it runs or compensates.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase: the phase (Running, Compensating, Succeeded, Compensated), or for a Failed or "
        "Rejected saga its reason (e.g. CompensationStuck, InvalidSpec).",
    )
    message: str = Field(max_length=32768, description="For a person: why the condition is as it is.")
    last_transition_time: datetime = Field(description="When the condition's status last changed.")
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The spec generation (metadata.generation) the condition was computed from.",
    )


class SagaStatus(_Model):
    """The saga log. Written by the operator before each command it sends."""

    phase: Phase = Field(default=Phase.PENDING, description="Pending, Running, Succeeded, Compensating, ...")
    seq: int = Field(default=0, ge=0, description="Counts the operator's writes of this status.")
    observed_generation: int | None = Field(default=None, description="The spec generation last acted on.")
    current_step: str | None = Field(default=None, description="The step(s) in flight, for kubectl get.")
    progress: str | None = Field(
        default=None,
        description="For kubectl get: steps done / steps (e.g. 2/3 done); once the saga is being undone, also how "
        "many of them are compensated (2/3 done, 1 undone).",
    )
    started_at: datetime | None = Field(default=None, description="When the saga started (its first step).")
    finished_at: datetime | None = Field(default=None, description="When the saga reached its latest end phase.")
    duration: str | None = Field(
        default=None,
        description="For kubectl get: startedAt to finishedAt, or to the latest status write while the saga runs "
        "(e.g. 1.2s, 2m5s).",
    )
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
    template: ExpandedTemplate | None = Field(
        default=None,
        description="A templated saga: the steps and payload it runs with, as its template said when it started.",
    )
    steps: list[StepStatus] = Field(default_factory=list, description="One record per step, in spec order.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Completed and Succeeded, derived from the phase: kubectl wait --for=condition=Completed "
        "returns when the saga has finished, either way (docs/operations.md).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
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


def effective_spec(spec: SagaSpec, status: SagaStatus) -> SagaSpec:
    """The spec a saga runs: its own, or, for a templated saga that has started, the template's steps and payload
    as recorded in its status (a copy; the stored spec keeps its templateRef and no steps)."""
    if spec.template_ref is None or status.template is None:
        return spec
    return spec.model_copy(update={"steps": status.template.steps, "payload": status.template.payload})
