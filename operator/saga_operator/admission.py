"""Generate the ValidatingAdmissionPolicies that guard Sagas where the CRD's own rules cannot.

    python -m saga_operator.admission > crds/saga.dev_admission-policies.yaml     (part of `make generate`)

A test fails when the file in `crds/` differs from what this prints (tests/unit/test_generated_files.py).
What is refused where, and why there: docs/architecture.md, "The admission layer". Three policies, each
with its binding:

- `sagas.saga.dev-status-writers`: only the operator (and a break-glass group) writes `sagas/status`,
  the saga log. RBAC cannot say this: who may patch a Saga often may patch its status too (an aggregated
  `edit` role), and a user who can bind roles can grant it. The policy holds for every identity,
  cluster-admins included. The identities are parameters of the generator (`--status-writer`,
  `--status-writer-group`); a ClusterRole and binding give the break-glass group the RBAC to use it.
- `sagas.saga.dev-participants`: a step naming a registered Participant uses an action it declares, with
  the compensation it declares, from a namespace it allows. `paramKind: Participant` with a selector
  matching every Participant, so it runs once per Participant; a participant with no Participant object
  is not checked here (nothing is evaluated for it; the operator refuses it at start).
- `sagas.saga.dev-payload`: `spec.payload` within the wire's limits (size and depth), and not null. A CRD
  rule cannot measure a free-form object within its static cost budget; a policy is limited at run time
  only, by what the object really holds.

All are `failurePolicy: Fail`: a policy that cannot be evaluated refuses, it never waves a saga through.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, Final

import yaml

from saga_operator.domain.model import GROUP, PLURAL, VERSION
from saga_operator.domain.participant import ANY_NAMESPACE, PARTICIPANT_KIND
from saga_protocol import MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH

#: The operator's identity in manifests/base (ServiceAccount saga-operator in namespace saga-system).
OPERATOR_USER: Final = "system:serviceaccount:saga-system:saga-operator"
#: Break-glass: a person who must repair a saga log impersonates this group (docs/operations.md).
STATUS_WRITERS_GROUP: Final = f"{GROUP}:status-writers"
#: The ClusterRole (and its binding) that gives the break-glass group the RBAC to write the status.
STATUS_WRITER_ROLE: Final = "saga-status-writer"

STATUS_WRITERS_POLICY: Final = f"{PLURAL}.{GROUP}-status-writers"
PARTICIPANTS_POLICY: Final = f"{PLURAL}.{GROUP}-participants"
PAYLOAD_POLICY: Final = f"{PLURAL}.{GROUP}-payload"
POLICIES: Final = (STATUS_WRITERS_POLICY, PARTICIPANTS_POLICY, PAYLOAD_POLICY)

_API: Final = "admissionregistration.k8s.io/v1"


def _cel_list(values: Sequence[str]) -> str:
    for value in values:
        if "'" in value or "\\" in value:
            raise ValueError(f"not a user or group name: {value!r}")
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _rule(operations: list[str], resource: str) -> dict[str, Any]:
    return {"apiGroups": [GROUP], "apiVersions": [VERSION], "operations": operations, "resources": [resource]}


def _binding(policy: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": _API,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy},
        "spec": {"policyName": policy, "validationActions": ["Deny"], **spec},
    }


def status_writers_policy(
    users: Sequence[str] = (OPERATOR_USER,), groups: Sequence[str] = (STATUS_WRITERS_GROUP,)
) -> list[dict[str, Any]]:
    """Only `users` and members of `groups` may write a Saga's status (PATCH and PUT are both UPDATE)."""
    allowed = " or ".join([*(f"user {u}" for u in users), *(f"group {g}" for g in groups)])
    policy = {
        "apiVersion": _API,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": STATUS_WRITERS_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [_rule(["UPDATE"], f"{PLURAL}/status")]},
            "validations": [
                {
                    "expression": f"request.userInfo.username in {_cel_list(users)} || "
                    f"request.userInfo.groups.exists(g, g in {_cel_list(groups)})",
                    "messageExpression": "'the status of a Saga is the saga log: only saga-operator writes it ("
                    + allowed
                    + "), not ' + request.userInfo.username + '; break-glass: docs/operations.md'",
                    "reason": "Forbidden",
                }
            ],
        },
    }
    return [policy, _binding(STATUS_WRITERS_POLICY)]


def status_writers_rbac(group: str = STATUS_WRITERS_GROUP) -> list[dict[str, Any]]:
    """What the break-glass group needs besides the policy: RBAC to read Sagas and write their status.
    Impersonating a group replaces the caller's own groups, so an admin's rights do not come along."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": STATUS_WRITER_ROLE},
        "rules": [
            {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch", "update"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": STATUS_WRITER_ROLE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": STATUS_WRITER_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    }
    return [role, binding]


_STEP_OF_PARAM: Final = "s.participant == params.metadata.name"


def participants_policy() -> list[dict[str, Any]]:
    """Evaluated once per Participant (the param): the steps naming it must fit what it declares."""
    mine = "variables.mine"
    declared = "params.spec.actions.exists(a, a.name == s.action)"
    other_compensation = (
        "has(s.compensation) && params.spec.actions.exists(a, a.name == s.action && has(a.compensation) && "
        "a.compensation != s.compensation)"
    )
    no_compensation = "has(s.compensation) && params.spec.actions.exists(a, a.name == s.action && !has(a.compensation))"
    allowed = f"params.spec.namespaces.exists(n, n == '{ANY_NAMESPACE}' || n == request.namespace)"

    def first(condition: str) -> str:
        return f"{mine}.filter(s, {condition})[0]"

    policy = {
        "apiVersion": _API,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": PARTICIPANTS_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "paramKind": {"apiVersion": f"{GROUP}/{VERSION}", "kind": PARTICIPANT_KIND},
            # CREATE only: the spec cannot change afterwards (the CRD's rules), and a Participant edited
            # later must not block the updates a running saga needs (an abort, the operator's finalizer).
            "matchConstraints": {"resourceRules": [_rule(["CREATE"], PLURAL)]},
            # A templated saga has no steps of its own: its template's are checked by the operator at start.
            "variables": [
                {
                    "name": "mine",
                    "expression": f"has(object.spec.steps) ? object.spec.steps.filter(s, {_STEP_OF_PARAM}) : []",
                }
            ],
            "validations": [
                {
                    "expression": f"size({mine}) == 0 || {allowed}",
                    "messageExpression": f"'step ' + {mine}[0].name + ': participant ' + params.metadata.name + "
                    "' does not take commands from namespace ' + request.namespace + ' (it allows: ' + "
                    "(size(params.spec.namespaces) == 0 ? 'none' : params.spec.namespaces.join(', ')) + ')'",
                    "reason": "Forbidden",
                },
                {
                    "expression": f"{mine}.all(s, {declared})",
                    "messageExpression": f"'step ' + {first('!' + declared)}.name + ': participant ' + "
                    f"params.metadata.name + ' has no action ' + {first('!' + declared)}.action + "
                    "' (it serves: ' + params.spec.actions.map(a, a.name).join(', ') + ')'",
                    "reason": "Invalid",
                },
                {
                    "expression": f"!{mine}.exists(s, {other_compensation})",
                    "messageExpression": f"'step ' + {first(other_compensation)}.name + ': participant ' + "
                    f"params.metadata.name + ' undoes ' + {first(other_compensation)}.action + ' with ' + "
                    f"params.spec.actions.filter(a, a.name == {first(other_compensation)}.action)[0].compensation + "
                    f"', not ' + {first(other_compensation)}.compensation",
                    "reason": "Invalid",
                },
                {
                    # A declared action without a compensation undoes nothing: only the pivot may run it.
                    "expression": f"!{mine}.exists(s, {no_compensation})",
                    "messageExpression": f"'step ' + {first(no_compensation)}.name + ': participant ' + "
                    f"params.metadata.name + ' cannot undo ' + {first(no_compensation)}.action + "
                    "': only the last step (the pivot) may run it, without a compensation'",
                    "reason": "Invalid",
                },
            ],
        },
    }
    # Every Participant is a param. Deny when there is none at all: once the policy is installed the
    # registry is in use, and an empty one is a broken installation, not an open door.
    binding = _binding(PARTICIPANTS_POLICY, paramRef={"selector": {}, "parameterNotFoundAction": "Deny"})
    return [policy, binding]


def _container(v: str) -> str:
    return f"(type({v}) == map || type({v}) == list)"


def _within_depth(v: str, depth: int, max_depth: int) -> str:
    """True when the value `v` at `depth` (the payload is 1) holds no container deeper than `max_depth`.

    CEL has no recursion: one two-variable comprehension per level (over a map it binds key and value,
    over a list index and value), each value visited once. Only `all`/`exists`: a comprehension that
    builds a list (map, transformList) costs time quadratic in its length on the API server.
    """
    child = f"v{depth}"
    if depth == max_depth:
        return f"!{_container(v)} || !{v}.exists(k{depth}, {child}, {_container(child)})"
    return f"!{_container(v)} || {v}.all(k{depth}, {child}, {_within_depth(child, depth + 1, max_depth)})"


#: The payload policy walks a payload value by value (quadratic time) only up to this many values.
MAX_WALKED_VALUES: Final = 4000


def _rounds(text: str, rounds: int) -> str:
    """`text` with its empty pairs "[]" removed `rounds` times: each round removes the innermost level."""
    return text + ".replace('[]', '')" * rounds


def payload_policy(max_bytes: int = MAX_PAYLOAD_BYTES, max_depth: int = MAX_PAYLOAD_DEPTH) -> list[dict[str, Any]]:
    r"""spec.payload: not null, at most `max_bytes` of compact JSON, at most `max_depth` levels of containers.

    Everything here runs in native string functions, in time linear in the payload's size: on the API
    server a CEL comprehension (all, exists, map, ...) takes time quadratic in the length of the list it
    walks (seconds for a list of 30,000 numbers), and a policy must not let a user spend the API server's
    CPU like that.

    Size: CEL cannot serialize to JSON, but its format function prints a value much like compact JSON:
    objects and arrays with ", " between entries where JSON has ",". Less those spaces the text is the JSON
    size for strings (Go's quoting escapes '"', '\', newlines and tabs as JSON does; a few rare control
    characters differ by a few bytes), integers, booleans, null, objects and arrays. A floating-point number
    is printed with six decimals (2.5 as 2.500000), so a payload of many floats near the limit can be
    refused a little early; a ", " inside a string is subtracted too, which errs the other way. The
    operator measures the exact size at start (docs/architecture.md, "The admission layer").

    Depth: the brackets of the printed text, outside strings, `{` and `[` alike, with the empty pairs "[]"
    removed once per allowed level: what is left is the nesting beyond the limit. When a string of the
    payload holds a bracket, text and structure cannot be told apart without a parser, and the policy
    walks the values instead (_within_depth), but only a payload of at most MAX_WALKED_VALUES values
    (a tenth of a second); a larger one is left to the operator's check at start.
    """
    payload = "object.spec.payload"
    present = f"has({payload}) && dyn({payload}) != null"
    walk = _within_depth("variables.payload", 1, max_depth)
    brackets = r"variables.printed.findAll(r'[\[\]{}]').join('').replace('{', '[').replace('}', ']')"
    policy = {
        "apiVersion": _API,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": PAYLOAD_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            # CREATE only: the spec cannot change afterwards (the CRD's rules).
            "matchConstraints": {"resourceRules": [_rule(["CREATE"], PLURAL)]},
            "variables": [
                {"name": "payload", "expression": f"{present} ? dyn({payload}) : {{}}"},
                {"name": "raw", "expression": "'%s'.format([variables.payload])"},
                # Without escaped backslashes and quotes: every '"' left opens or closes a string.
                {"name": "printed", "expression": r"""variables.raw.replace('\\\\', '').replace('\\"', '')"""},
                # Entries of objects and arrays after the first: about as many as the values in the payload.
                {"name": "separators", "expression": "size(variables.raw.split(', ')) - 1"},
                {"name": "bytes", "expression": "size(bytes(variables.raw)) - variables.separators"},
                {
                    "name": "bracketsInStrings",
                    "expression": r"""variables.printed.findAll(r'"[^"]*"').join('').matches(r'[\[\]{}]')""",
                },
                {
                    "name": "withinDepth",
                    "expression": "!variables.bracketsInStrings ? "
                    f"{_rounds(brackets, max_depth)} == '' : "
                    f"variables.separators > {MAX_WALKED_VALUES} || ({walk})",
                },
            ],
            "validations": [
                {
                    "expression": f"!has({payload}) || dyn({payload}) != null",
                    "message": "spec.payload is null: give an object, or leave the field out for an empty one",
                    "reason": "Invalid",
                },
                {
                    "expression": f"variables.bytes <= {max_bytes}",
                    "messageExpression": "'spec.payload is ' + string(variables.bytes) + ' bytes as compact JSON, "
                    f"more than the saga protocol carries ({max_bytes})'",
                    "reason": "RequestEntityTooLarge",
                },
                {
                    "expression": f"variables.bytes > {max_bytes} || variables.withinDepth",
                    "message": f"spec.payload is nested deeper than the saga protocol allows ({max_depth} levels, "
                    "the payload object itself is level 1)",
                    "reason": "Invalid",
                },
            ],
        },
    }
    return [policy, _binding(PAYLOAD_POLICY)]


def admission_objects(
    status_writers: Sequence[str] = (OPERATOR_USER,),
    status_writer_groups: Sequence[str] = (STATUS_WRITERS_GROUP,),
) -> list[dict[str, Any]]:
    return [
        *status_writers_policy(status_writers, status_writer_groups),
        *(status_writers_rbac(status_writer_groups[0]) if status_writer_groups else ()),
        *participants_policy(),
        *payload_policy(),
    ]


_HEADER = "# Generated by `python -m saga_operator.admission{flags}`: edit saga_operator/admission.py, not this.\n"


def render(
    status_writers: Sequence[str] = (OPERATOR_USER,),
    status_writer_groups: Sequence[str] = (STATUS_WRITERS_GROUP,),
) -> str:
    """The YAML of every object, with a header naming the command that prints it."""
    operator, *others = status_writers
    flags = "".join(
        [
            f" --operator {operator}" if operator != OPERATOR_USER else "",
            *(f" --status-writer {u}" for u in others),
            *(f" --status-writer-group {g}" for g in status_writer_groups if g != STATUS_WRITERS_GROUP),
        ]
    )
    docs = admission_objects(status_writers, status_writer_groups)
    return _HEADER.format(flags=flags) + yaml.safe_dump_all(docs, sort_keys=False, width=1000)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m saga_operator.admission", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--operator",
        default=OPERATOR_USER,
        metavar="USER",
        help=f"the operator's identity, default {OPERATOR_USER} (manifests/base)",
    )
    parser.add_argument(
        "--status-writer",
        action="append",
        default=[],
        metavar="USER",
        help="another user who may write Saga status (repeatable)",
    )
    parser.add_argument(
        "--status-writer-group",
        action="append",
        default=[],
        metavar="GROUP",
        help=f"a group whose members may write Saga status, besides {STATUS_WRITERS_GROUP} (repeatable)",
    )
    args = parser.parse_args(argv)
    users = (args.operator, *args.status_writer)
    sys.stdout.write(render(users, (STATUS_WRITERS_GROUP, *args.status_writer_group)))


if __name__ == "__main__":
    main()
