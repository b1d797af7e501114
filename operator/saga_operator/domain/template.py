"""The SagaTemplate resource: a saga defined once (its steps and their inputs) and started many times with
parameters, by Sagas whose spec is only `templateRef: {name, parameters}`.

Namespaced: a team's templates live with its Sagas, and a Saga names a template of its own namespace.
The operator reads the template once, when the saga starts (`expand`): the parameters are checked against
their declarations (missing, wrong type, not declared: phase Rejected, InvalidParameters, naming the
parameter), set on the payload, and the template's steps and that payload are recorded in the saga's
status (`status.template`). From then on the saga runs what its status says: editing or deleting the
template never changes a saga already started. Like the Saga CRD, the CRD is generated from these models
(`saga_operator.crd --templates`).

A template's status says how it is used (`template_status`): the Sagas of its namespace that name it, how many
of them are not finished, when the newest was created, and its parameters' names for `kubectl get`. The
operator counts them from the Sagas it watches (runtime.template_usage). Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Self, cast

from pydantic import ConfigDict, Field, JsonValue, ValidationError, model_validator

from saga_operator.domain import inputs
from saga_operator.domain.model import (
    _DEPENDS_ON_EARLIER,
    _EARLIER_STEP,
    _STEP_RULES,
    MAX_STEPS,
    TERMINAL_PHASES,
    ExpandedTemplate,
    Phase,
    SagaSpec,
    StepSpec,
    TemplateRef,
    _Model,
    check_steps,
)

TEMPLATE_KIND: Final = "SagaTemplate"
TEMPLATE_PLURAL: Final = "sagatemplates"
MAX_PARAMETERS: Final = 32
#: A parameter is read in an input as payload.<name>: a CEL identifier.
PARAMETER_NAME: Final = r"^[a-zA-Z_][a-zA-Z0-9_]{0,62}$"

# Phase Rejected reasons (nothing was sent: fix the manifest and create the saga again).
TEMPLATE_NOT_FOUND: Final = "TemplateNotFound"
INVALID_TEMPLATE: Final = "InvalidTemplate"
INVALID_PARAMETERS: Final = "InvalidParameters"
#: Every Saga with spec.templateRef carries this label, its value the template's name (a DNS label, so a valid
#: label value): set when it is created, by the admission policy (saga_operator.crd.template_label_policy) or,
#: without one, by the operator with its finalizer. `kubectl get sagas -l saga.dev/template=buy-video`.
TEMPLATE_LABEL: Final = "saga.dev/template"


class ParameterType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    OBJECT = "object"
    ARRAY = "array"


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int():
            return "integer"
        case float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return type(value).__name__


def fits(kind: ParameterType, value: Any) -> bool:
    """Whether `value` (parsed JSON) is of the declared type. A boolean is not an integer; an integer is a number."""
    found = _json_type(value)
    return found == kind.value or (kind == ParameterType.NUMBER and found == "integer")


class TemplateParameter(_Model):
    """A parameter a Saga passes in templateRef.parameters; it reaches the steps as payload.<name>."""

    name: str = Field(
        pattern=PARAMETER_NAME,
        max_length=63,
        description="Letters, digits and '_', not starting with a digit: the step inputs read it as payload.<name>.",
    )
    type: ParameterType = Field(description="string, integer, number, boolean, object or array.")
    description: str = Field(default="", max_length=1024, description="What the parameter means, for a person.")
    default: Any = Field(
        default=None,
        description="The value when a Saga leaves the parameter out; without a default the parameter is required.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @model_validator(mode="after")
    def _default_fits(self) -> Self:
        if self.default is not None and not fits(self.type, self.default):
            raise ValueError(f"parameter {self.name}: the default is not {_a(self.type.value)}")
        return self


_PARAMETER_RULES: Final = [
    {"rule": "self.all(p, self.exists_one(q, q.name == p.name))", "message": "parameter names must be unique"},
]


class SagaTemplateSpec(_Model):
    """A saga's steps, defined once; a Saga runs it with `spec.templateRef: {name, parameters}`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": _DEPENDS_ON_EARLIER,
                    "messageExpression": "'step ' + self.steps.transformList(i, s, has(s.dependsOn) && "
                    f"!s.dependsOn.all(d, {_EARLIER_STEP}), s.name)[0] + ': each dependsOn entry must name "
                    "another step of this template, listed before it'",
                    "message": "each dependsOn entry must name another step of this template, listed before it",
                }
            ]
        }
    )

    description: str = Field(default="", max_length=1024, description="What the template does, for a person.")
    parameters: list[TemplateParameter] = Field(
        default_factory=list,
        max_length=MAX_PARAMETERS,
        description=f"The parameters a Saga passes, at most {MAX_PARAMETERS}; each is set on the payload under its "
        "name, so a step input reads it as payload.<name>.",
        json_schema_extra={"x-kubernetes-validations": cast(list[JsonValue], _PARAMETER_RULES)},
    )
    steps: list[StepSpec] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description="The steps, as in a Saga: in order, at least one, at most 32; their inputs may read "
        "payload.<parameter>.",
        json_schema_extra={"x-kubernetes-validations": cast(list[JsonValue], _STEP_RULES)},
    )
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="A base payload: the Saga's own payload and then the parameters are set on it.",
    )

    @model_validator(mode="after")
    def _same_rules_as_the_crd(self) -> Self:
        check_steps(self.steps)
        names = [parameter.name for parameter in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError("parameter names must be unique")
        return self


def expand(
    ref: TemplateRef,
    template: SagaTemplateSpec | None,
    saga_payload: dict[str, Any],
    *,
    uid: str = "",
    resource_version: str = "",
    error: str | None = None,
) -> ExpandedTemplate | tuple[str, str]:
    """What the saga runs, or (reason, message) why it cannot start. `template` None: not found, or (with
    `error`) a template whose spec does not parse."""
    if template is None:
        if error is not None:
            return INVALID_TEMPLATE, f"SagaTemplate {ref.name} cannot be read: {error}"
        return TEMPLATE_NOT_FOUND, f"there is no SagaTemplate {ref.name} in the saga's namespace"
    declared = {parameter.name: parameter for parameter in template.parameters}
    listing = ", ".join(declared) or "none"
    for name in ref.parameters:
        if name not in declared:
            return INVALID_PARAMETERS, (
                f"parameter {name} is not declared by SagaTemplate {ref.name} (it declares: {listing})"
            )
    values: dict[str, Any] = {}
    for name, parameter in declared.items():
        if name not in ref.parameters:
            if parameter.default is None:
                return INVALID_PARAMETERS, (
                    f"parameter {name} is required by SagaTemplate {ref.name} (it has no default): "
                    f"{parameter.description or parameter.type.value}"
                )
            values[name] = parameter.default
            continue
        value = ref.parameters[name]
        if not fits(parameter.type, value):
            wanted, found = _a(parameter.type.value), _a(_json_type(value))
            return INVALID_PARAMETERS, f"parameter {name} must be {wanted}, not {found}: {json.dumps(value)[:100]}"
        values[name] = value
    return ExpandedTemplate(
        name=ref.name,
        uid=uid,
        resource_version=resource_version,
        parameters=values,
        steps=[step.model_copy(deep=True) for step in template.steps],
        payload={**template.payload, **saga_payload, **values},
    )


class SagaTemplateStatus(_Model):
    """How the template is used, written by the operator (runtime.template_usage) for `kubectl get sagatemplates`."""

    parameters: str = Field(
        default="",
        description="The parameters' names in their order, comma-separated, those with a default in brackets: "
        "what the PARAMETERS column shows.",
    )
    sagas: int = Field(
        default=0, ge=0, description="The Sagas of this namespace whose spec.templateRef names this template."
    )
    running: int = Field(
        default=0, ge=0, description="Of those, the ones not finished (Pending, Running, Compensating)."
    )
    last_used_at: datetime | None = Field(
        default=None, description="When the newest Saga of this template that the operator saw was created."
    )
    problem: str | None = Field(
        default=None,
        description="Why every Saga of this template would be refused when it starts, as that refusal says it "
        "(reason: message; e.g. a step input reading a step it does not depend on: InvalidInput); absent: none.",
    )
    observed_generation: int | None = Field(
        default=None, description="The template's metadata.generation that `parameters` and `problem` were read from."
    )


@dataclass(frozen=True)
class SagaUse:
    """What the usage count needs of one Saga naming a template."""

    namespace: str
    template: str
    running: bool
    created: datetime | None


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def saga_use(body: Mapping[str, Any]) -> SagaUse | None:
    """The template a Saga body names in spec.templateRef (None: a Saga of its own steps, or unreadable), read
    from the raw body: a count must not depend on the rest of the spec parsing. Running: not in an end phase
    (a saga without a status yet is Pending)."""
    meta = body.get("metadata") or {}
    ref = (body.get("spec") or {}).get("templateRef")
    name = ref.get("name") if isinstance(ref, dict) else None
    namespace = meta.get("namespace")
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        return None
    phase = (body.get("status") or {}).get("phase") or Phase.PENDING.value
    finished = phase in {p.value for p in TERMINAL_PHASES}
    return SagaUse(namespace, name, not finished, _timestamp(meta.get("creationTimestamp")))


def parameter_summary(spec: Mapping[str, Any]) -> str:
    """`buyer,video,price,agent,[simulate]`: the declared parameters' names, those with a default (a Saga may
    leave them out) in brackets. From the raw spec, as the API server stored it (its schema checked it)."""
    names = []
    for parameter in spec.get("parameters") or []:
        if isinstance(parameter, dict) and isinstance(parameter.get("name"), str):
            optional = parameter.get("default") is not None
            names.append(f"[{parameter['name']}]" if optional else parameter["name"])
    return ",".join(names)


def template_problem(spec: Mapping[str, Any]) -> str | None:
    """What a Saga of this template would be refused for at start whatever its parameters, with the reason and
    message of that refusal (`expand` then `integrity.start_problem`'s input check, the same code), or None. The
    API server's schema checked the rest at apply; a step input's references it cannot check (they are CEL)."""
    try:
        template = SagaTemplateSpec.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        return f"{INVALID_TEMPLATE}: spec{'.' + where if where else ''}: {message}"
    found = inputs.problem(SagaSpec(steps=template.steps))
    return None if found is None else f"{found[0]}: {found[1]}"


def template_status(
    spec: Mapping[str, Any],
    generation: int | None,
    uses: Iterable[SagaUse],
    previous: SagaTemplateStatus | None = None,
    problem: str | None = None,
) -> SagaTemplateStatus:
    """The template's status from its spec and the uses of it. `last_used_at` never goes back: a saga deleted
    (by its TTL, say) leaves the time it was created as the latest use."""
    counted = list(uses)
    created = [use.created for use in counted if use.created is not None]
    if previous is not None and previous.last_used_at is not None:
        created.append(previous.last_used_at)
    return SagaTemplateStatus(
        parameters=parameter_summary(spec),
        sagas=len(counted),
        running=sum(1 for use in counted if use.running),
        last_used_at=max(created, default=None),
        problem=problem,
        observed_generation=generation,
    )


def template_status_patch(status: SagaTemplateStatus) -> dict[str, Any]:
    """A JSON merge patch that sets the whole status: fields that became unset are sent as null (deleted)."""
    body = status.model_dump(by_alias=True, mode="json")
    return {"status": body}
