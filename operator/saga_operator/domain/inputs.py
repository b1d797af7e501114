"""Step inputs: a step's `input` is a JSON object whose string values may be CEL expressions, `${...}`.

An expression sees three variables, all JSON:

    payload   the saga's payload (for a templated saga: with the parameters set on it)
    saga      {"name", "namespace", "uid"}: the saga's metadata
    steps     {"<step>": {"input": ..., "result": ...}} for each step this step depends on, directly or
              through other steps (the pivot depends on every other step)

Why CEL (docs/architecture.md, "Data between steps"): the language of the CRD's own validation rules,
side-effect free and deterministic (no clock, no I/O, no randomness), typed, with arithmetic, conditionals
and string functions; its maintained Python implementation (cel-python) parses an expression into a tree
the operator walks at start, so every reference is checked before anything is sent.

The rules, checked at start (`problem`, phase Rejected, reason InvalidInput, naming the step and the
reference) and at run time (`evaluate`, the step fails with reason InputFailed before its command is sent):

- a string whose whole text is `${ expression }` is replaced by the expression's value (any JSON value);
  any other value is sent as written (a literal that looks like an expression: `${'${x}'}`);
- `steps` is used only as `steps.<name>` or `steps['<name>']`, and `<name>` must be a step this step
  depends on (directly or transitively): a result nobody waited for may not exist yet;
- no comprehension macros (`all`, `exists`, `exists_one`, `map`, `filter`): cel-python has no cost budget
  like the API server's, so an input may move and combine data but not loop over it. Without loops an
  expression's cost is linear in its length times the size of what it reads (payload and results are
  bounded by the protocol's limits), and an expression is at most MAX_EXPRESSION_LENGTH characters;
- the evaluated input is at most MAX_INPUT_BYTES as compact JSON (InputTooLarge).

Pure: no I/O. Compiled expressions are cached by their text (compiling is most of the cost).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Final, NamedTuple

import celpy
import lark
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from saga_operator.domain.model import SagaSpec
from saga_protocol.limits import MAX_INPUT_BYTES, MAX_INPUT_DEPTH, value_problem

#: Phase Rejected: an input that can never be evaluated (a syntax error, a step not depended on, a loop).
INVALID_INPUT: Final = "InvalidInput"
#: Step errors: an expression failed on the values it got (no such field, a division by zero, a wrong
#: type), or the input it made is over the limit. The step is not sent; the saga is undone.
INPUT_FAILED: Final = "InputFailed"
INPUT_TOO_LARGE: Final = "InputTooLarge"

MAX_EXPRESSION_LENGTH: Final = 1024
#: JSON values (every object, array and scalar) the expressions of one step may read together. Converting a value
#: to CEL costs ~20-70 us on the operator's event loop, so this bounds one step's evaluation to tens of
#: milliseconds: a saga whose expressions read a 64 KiB payload of numbers does not stall the others.
MAX_VALUES_READ: Final = 2000
_EXPRESSION: Final = re.compile(r"^\$\{(.*)\}$", re.DOTALL)
_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
_VARIABLES: Final = frozenset({"payload", "saga", "steps"})
# Identifiers CEL resolves by itself: its type names (as in `type(x) == string`).
_BUILTIN_NAMES: Final = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)


class InputError(Exception):
    """An input could not be evaluated. `reason` is INPUT_FAILED or INPUT_TOO_LARGE."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def expression(value: Any) -> str | None:
    """The CEL text of `value` when it is an expression string `${...}`, else None."""
    if not isinstance(value, str):
        return None
    found = _EXPRESSION.match(value)
    return found.group(1).strip() if found else None


def expressions(value: Any, path: str = "input") -> Iterator[tuple[str, str]]:
    """(path, CEL text) of every expression in a declared input, in document order."""
    pending: list[tuple[str, Any]] = [(path, value)]
    while pending:
        where, node = pending.pop(0)
        text = expression(node)
        if text is not None:
            yield where, text
        elif isinstance(node, dict):
            pending[0:0] = [(f"{where}.{key}", item) for key, item in node.items()]
        elif isinstance(node, list):
            pending[0:0] = [(f"{where}[{index}]", item) for index, item in enumerate(node)]


_ENVIRONMENT: Final = celpy.Environment()


class _Compiled(NamedTuple):
    program: celpy.Runner | None  # None: refused, `why` says why
    steps: frozenset[str]  # the steps it reads
    #: The payload's top-level keys it reads; None: the payload as a whole (`${payload}`, `size(payload)`).
    payload_keys: frozenset[str] | None
    why: str | None


@lru_cache(maxsize=4096)
def _compile(text: str) -> _Compiled:
    if len(text) > MAX_EXPRESSION_LENGTH:
        return _Compiled(None, frozenset(), None, f"longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = _ENVIRONMENT.compile(text)
    except CELParseError as exc:
        column = getattr(exc, "column", None)
        return _Compiled(None, frozenset(), None, "does not parse" + (f" (column {column})" if column else ""))
    referenced, why = _references(tree)
    if why is not None:
        return _Compiled(None, referenced, None, why)
    return _Compiled(_ENVIRONMENT.program(tree), referenced, _payload_keys(tree), None)


def _payload_keys(tree: lark.Tree[Any]) -> frozenset[str] | None:
    """The top-level payload keys an expression reads (payload.<key>, payload['<key>']), None when it reads the
    payload some other way. Only those are converted to CEL values: converting is the cost of an evaluation
    (about 50 us a value here, so a whole 64 KiB payload of small numbers takes a second or more)."""
    keys: set[str] = set()
    used: set[int] = set()
    for node in tree.iter_subtrees():
        if node.data in ("member_dot", "member_index") and isinstance(node.children[0], lark.Tree):
            if _ident(node.children[0]) != "payload":
                continue
            key = str(node.children[1]) if node.data == "member_dot" else _string_literal(node.children[1])
            if key is None:
                return None
            keys.add(key)
            used.add(id(node.children[0]))
    for node in tree.iter_subtrees():
        if _ident(node) == "payload" and id(node) not in used:
            return None
    return frozenset(keys)


def _ident(node: lark.Tree[Any]) -> str | None:
    """The name of a `member` that is a bare identifier (`steps`), else None."""
    if node.data != "member" or len(node.children) != 1:
        return None
    primary = node.children[0]
    if not isinstance(primary, lark.Tree) or primary.data != "primary" or len(primary.children) != 1:
        return None
    ident = primary.children[0]
    if isinstance(ident, lark.Tree) and ident.data == "ident" and ident.children:
        return str(ident.children[0])
    return None


def _string_literal(node: Any) -> str | None:
    """The value of an `expr` that is one quoted string literal, else None."""
    while isinstance(node, lark.Tree) and len(node.children) == 1 and node.data != "literal":
        node = node.children[0]
    if not isinstance(node, lark.Tree) or node.data != "literal" or not node.children:
        return None
    token = str(node.children[0])
    if token[:1] not in ("'", '"'):
        return None
    try:
        value = ast.literal_eval(token)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


def _references(tree: lark.Tree[Any]) -> tuple[frozenset[str], str | None]:
    """The step names an expression reads through `steps`, or why it may not be evaluated at all."""
    names: set[str] = set()
    allowed: set[int] = set()  # ids of the `steps` identifiers used as steps.<name> or steps['<name>']
    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg" and len(node.children) >= 2 and str(node.children[1]) in _MACROS:
            return frozenset(names), f"uses the macro {node.children[1]}(): an input may not loop over values"
        if node.data == "member_dot" and isinstance(node.children[0], lark.Tree):
            if _ident(node.children[0]) == "steps":
                names.add(str(node.children[1]))
                allowed.add(id(node.children[0]))
        elif node.data == "member_index" and isinstance(node.children[0], lark.Tree):
            if _ident(node.children[0]) == "steps":
                name = _string_literal(node.children[1])
                if name is None:
                    return frozenset(names), "indexes steps with something other than a quoted step name"
                names.add(name)
                allowed.add(id(node.children[0]))
    for node in tree.iter_subtrees():
        ident = _ident(node)
        if ident == "steps" and id(node) not in allowed:
            return frozenset(names), "uses steps other than as steps.<name> or steps['<name>']"
        if ident is not None and ident not in _VARIABLES and ident not in _BUILTIN_NAMES:
            return frozenset(names), (
                f"names {ident}, which is none of payload, saga, steps (a step name with '-' is written "
                "steps['the-name'])"
            )
    return frozenset(names), None


def upstream(spec: SagaSpec) -> dict[str, frozenset[str]]:
    """Each step's prerequisites, direct and transitive: the steps whose results it may read. The pivot (a last
    step without compensation) starts after every other step, so it may read them all."""
    dependencies = spec.dependencies()
    last = spec.steps[-1]
    if last.compensation is None:
        dependencies[last.name] = tuple(step.name for step in spec.steps[:-1])
    return ancestors(dependencies)


def ancestors(dependencies: Mapping[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    """Each step's prerequisites, direct and transitive. `dependencies` lists steps before their dependents."""
    closure: dict[str, frozenset[str]] = {}
    for name, needs in dependencies.items():
        found: set[str] = set(needs)
        for need in needs:
            found |= closure.get(need, frozenset())
        closure[name] = frozenset(found)
    return closure


def problem(spec: SagaSpec) -> tuple[str, str] | None:
    """(INVALID_INPUT, message) for the first step input that can never be evaluated, else None."""
    reads = upstream(spec)
    for step in spec.steps:
        name, declared = step.name, step.input
        if declared is None:
            continue
        for where, text in expressions(declared):
            _, referenced, _, why = _compile(text)
            if why is not None:
                return INVALID_INPUT, f"step {name}: {where}: ${{{text}}} {why}"
            for other in sorted(referenced):
                if other in reads[name]:
                    continue
                if other == name:
                    why = f"refers to step {name} itself: a step reads only the steps it depends on"
                elif other not in reads:
                    why = f"refers to step {other}, which is not a step of this saga"
                else:
                    why = f"refers to step {other}, which step {name} does not depend on (directly or through others)"
                return INVALID_INPUT, f"step {name}: {where}: ${{{text}}} {why}"
    return None


def _to_json(value: Any, where: str) -> Any:
    """A CEL value as plain JSON. Bytes, timestamps and durations have no JSON form: InputFailed."""
    if value is None or isinstance(value, celtypes.NullType):
        return None
    if isinstance(value, celtypes.BoolType | bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError(INPUT_FAILED, f"{where}: the value {value} is not a JSON number")
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _to_json(item, where) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_json(item, where) for item in value]
    kind = "bytes" if isinstance(value, bytes) else type(value).__name__
    if isinstance(value, datetime | timedelta):
        kind = "a timestamp or duration"
    raise InputError(INPUT_FAILED, f"{where}: the value is {kind}, which has no JSON form (use string())")


def evaluate(
    name: str, declared: dict[str, Any], *, payload: dict[str, Any], saga: dict[str, str], steps: dict[str, Any]
) -> dict[str, Any]:
    """The input of step `name`: `declared` with every expression replaced by its value. Raises InputError.
    Only what the expressions read is converted to CEL values (the steps named, the payload keys named)."""
    compiled = [_compile(text) for _, text in expressions(declared)]
    keys: set[str] | None = set()
    for each in compiled:
        keys = None if keys is None or each.payload_keys is None else keys | each.payload_keys
    read = payload if keys is None else {key: payload[key] for key in keys if key in payload}
    named = set().union(*(each.steps for each in compiled)) if compiled else set()
    upstream_read = {key: value for key, value in steps.items() if key in named}
    values = _count_values(read, MAX_VALUES_READ) + _count_values(upstream_read, MAX_VALUES_READ)
    if values > MAX_VALUES_READ:
        raise InputError(
            INPUT_TOO_LARGE,
            f"step {name}: its input's expressions read more than {MAX_VALUES_READ} JSON values of the payload "
            "and the results (read a smaller part of them)",
        )
    activation = {
        "payload": json_to_cel(read),
        "saga": json_to_cel(saga),
        "steps": json_to_cel(upstream_read),
    }

    def walk(node: Any, where: str) -> Any:
        text = expression(node)
        if text is not None:
            program, _, _, why = _compile(text)
            if program is None:
                raise InputError(INPUT_FAILED, f"step {name}: {where}: ${{{text}}} {why}")
            try:
                value = program.evaluate(activation)
            except CELEvalError as exc:
                raise InputError(INPUT_FAILED, f"step {name}: {where}: ${{{text}}}: {_eval_message(exc)}") from None
            if isinstance(value, CELEvalError):
                raise InputError(INPUT_FAILED, f"step {name}: {where}: ${{{text}}}: {_eval_message(value)}")
            return _to_json(value, f"step {name}: {where}: ${{{text}}}")
        if isinstance(node, dict):
            return {key: walk(item, f"{where}.{key}") for key, item in node.items()}
        if isinstance(node, list):
            return [walk(item, f"{where}[{index}]") for index, item in enumerate(node)]
        return node

    result: dict[str, Any] = walk(declared, "input")
    limit = value_problem(
        result, what=f"the input of step {name}", max_bytes=MAX_INPUT_BYTES, max_depth=MAX_INPUT_DEPTH
    )
    if limit is not None:
        raise InputError(INPUT_TOO_LARGE, limit[1])
    return result


def _count_values(value: Any, stop: int) -> int:
    """How many JSON values `value` holds (itself included), counting no further than just past `stop`."""
    count, pending = 0, [value]
    while pending and count <= stop:
        item = pending.pop()
        count += 1
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return count


def _eval_message(exc: CELEvalError) -> str:
    args = exc.args
    text = str(args[0]) if args else "evaluation failed"
    return text[:500]


__all__ = [
    "INPUT_FAILED",
    "INPUT_TOO_LARGE",
    "INVALID_INPUT",
    "MAX_EXPRESSION_LENGTH",
    "MAX_VALUES_READ",
    "InputError",
    "ancestors",
    "evaluate",
    "expression",
    "expressions",
    "problem",
    "upstream",
]
