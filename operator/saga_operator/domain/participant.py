"""The Participant resource: a participant service, the actions it serves and who may command it.

Cluster-scoped. A participant is a shared service (one command topic, `saga.commands.<name>`, for the
whole cluster), so its name is unique in the cluster as its topic is, and the list of namespaces allowed
to use it belongs to whoever runs the service and the cluster, not to the namespaces it restricts: a
namespaced object would let every namespace's editors declare a participant for themselves.

The admission policy `sagas.saga.dev-participants` (saga_operator.admission) reads every Participant
when a Saga is created: a step whose `participant` names one must use an action it declares, with the
compensation it declares, from a namespace it allows. Like the Saga CRD, the CRD is generated from
these models (`saga_operator.crd --participants`).
"""

from __future__ import annotations

from typing import Annotated, Final, cast

from pydantic import ConfigDict, Field, JsonValue

from saga_operator.domain.model import DNS_LABEL, _Model

PARTICIPANT_KIND: Final = "Participant"
PARTICIPANT_PLURAL: Final = "participants"
#: In spec.namespaces: every namespace may use the participant.
ANY_NAMESPACE: Final = "*"
MAX_ACTIONS: Final = 64
MAX_NAMESPACES: Final = 256
_NAMESPACE_OR_ANY: Final = rf"^(\*|{DNS_LABEL[1:-1]})$"


class ParticipantAction(_Model):
    """An action the participant serves, with the action that undoes it."""

    name: str = Field(
        min_length=1,
        max_length=128,
        description="The action, as a step names it in `action`, e.g. debit.",
    )
    compensation: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The participant's action that undoes this one, e.g. refund; a step running this action "
        "must name exactly this compensation. Left out: nothing undoes it, so a step may run it only as the "
        "last step of a saga (the pivot), without a compensation.",
    )


class ParticipantSpec(_Model):
    """What the participant serves and which namespaces may send it commands."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"!('{ANY_NAMESPACE}' in self.namespaces) || size(self.namespaces) == 1",
                    "message": f"'{ANY_NAMESPACE}' allows every namespace: list it alone",
                    "fieldPath": ".namespaces",
                }
            ]
        }
    )

    actions: list[ParticipantAction] = Field(
        min_length=1,
        max_length=MAX_ACTIONS,
        description="The actions it serves, each with its compensation. A Saga step naming this participant "
        "must use one of them.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": cast(list[JsonValue], ["name"]),
        },
    )
    namespaces: list[Annotated[str, Field(pattern=_NAMESPACE_OR_ANY, max_length=63)]] = Field(
        max_length=MAX_NAMESPACES,
        description=f"The namespaces whose Sagas may use it, or ['{ANY_NAMESPACE}'] for every namespace. "
        "Empty: none may. Checked when a Saga is created; Sagas already created keep running.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
