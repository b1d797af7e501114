"""The SagaTemplate resource: a saga defined once (its steps and their inputs) and started many times with
parameters, by Sagas whose spec is only `templateRef: {name, parameters}`.

Namespaced: a team's templates live with its Sagas, and a Saga names a template of its own namespace.
The operator reads the template once, when the saga starts (`expand`): the parameters are checked against
their declarations (missing, wrong type, not declared: phase Rejected, InvalidParameters, naming the
parameter), set on the payload, and the template's steps and that payload are recorded in the saga's
status (`status.template`). From then on the saga runs what its status says: editing or deleting the
template never changes a saga already started. Like the Saga CRD, the CRD is generated from these models
(`saga_operator.crd --templates`). Pure: no I/O.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Final, Self, cast

from pydantic import ConfigDict, Field, JsonValue, model_validator

from saga_operator.domain.model import (
    _DEPENDS_ON_EARLIER,
    _EARLIER_STEP,
    _STEP_RULES,
    MAX_STEPS,
    ExpandedTemplate,
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
