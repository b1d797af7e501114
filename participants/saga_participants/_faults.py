"""`FaultInjection`: the opt-in interceptor that obeys a saga payload's `simulate` block.

    {"buyer": "alice", ..., "simulate": {"users": {"delaySeconds": 2.5, "delayAttempts": 1}}}

makes the `users` participant wait 2.5 s before handling the first attempt of its action (so the operator's
step timeout fires and it retries), and

    {"simulate": {"agents": {"errorAttempts": 2}}}

makes the `agents` action fail with a transient error on attempts 1 and 2 (reply outcome `error`, so the
operator retries) and succeed on attempt 3, and

    {"simulate": {"users": {"resultBytes": 16000}}}

adds a `simulatedPadding` string of 16000 characters to the `users` action's result (a participant whose
results are too big: over 16 KiB the SDK refuses it, ResultTooLarge). It exists for demos, end-to-end
tests and chaos runs, and is OFF unless a participant is started with it
(`Participant(..., interceptors=[FaultInjection()])`, `SAGA_ALLOW_FAULT_INJECTION=true`,
`saga-participant run --allow-fault-injection`): a shared participant must not let any saga author stall
or fail it for every tenant. A malformed knob is ignored with a warning:
a demo knob must not be able to break a real saga.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from saga_participants._handlers import Handler
from saga_participants._inbox import Decision
from saga_participants._pipeline import Proceed
from saga_protocol import Command, CommandKind

log = logging.getLogger(__name__)

PAYLOAD_KEY: Final = "simulate"
#: The result field `resultBytes` adds.
PADDING_KEY: Final = "simulatedPadding"


class SimulatedFault(RuntimeError):
    """The transient failure `errorAttempts` asks for; handled like any unexpected handler exception."""


@dataclass(frozen=True)
class FaultInjection:
    """Obey the `simulate` block a saga's payload addresses to this participant; delays capped at `max_delay`."""

    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.max_delay < 0:
            raise ValueError(f"max_delay must not be negative, not {self.max_delay}")

    async def __call__(self, participant: str, command: Command, handler: Handler, proceed: Proceed) -> Decision:
        simulation = simulation_for(command, participant)
        if simulation is None:
            return await proceed(handler)
        # The delay comes before the inbox is consulted, so a redelivery is slow too, as a slow real
        # service would be; it holds up this saga's later commands, not other sagas'.
        delay = min(simulation.delay_for(command), self.max_delay)
        if delay > 0:
            log.info(
                "simulate: delaying %s %s of %s by %.1fs",
                command.kind.value,
                command.action,
                command.idempotency_key,
                delay,
            )
            await asyncio.sleep(delay)
        if simulation.fails(command):

            def failing(*_: Any) -> None:
                raise SimulatedFault(f"simulate: transient fault requested for attempt {command.attempt}")

            handler = failing
        elif simulation.pads(command):
            handler = _padded(handler, simulation.result_bytes)
        return await proceed(handler)


def _padded(handler: Handler, size: int) -> Handler:
    """`handler` whose result carries `simulatedPadding`: `size` characters more (the SDK then checks its size)."""

    def padded(*args: Any) -> dict[str, Any]:
        result = handler(*args)
        return {**(result or {}), PADDING_KEY: "x" * size}

    return padded


@dataclass(frozen=True)
class Simulation:
    #: Seconds to wait before handling the command (capped by FaultInjection.max_delay).
    delay_seconds: float = 0.0
    #: Only delay commands whose attempt is at most this (None: every attempt).
    delay_attempts: int | None = None
    #: Fail the handler with a transient error on attempts 1..error_attempts.
    error_attempts: int = 0
    #: Add a string of this many characters to the handler's result (0: none).
    result_bytes: int = 0
    #: Which kinds of command the knob applies to (by default actions only: compensations must succeed).
    kinds: frozenset[CommandKind] = frozenset({CommandKind.ACTION})

    def delay_for(self, command: Command) -> float:
        if command.kind not in self.kinds:
            return 0.0
        if self.delay_attempts is not None and command.attempt > self.delay_attempts:
            return 0.0
        return self.delay_seconds

    def fails(self, command: Command) -> bool:
        return command.kind in self.kinds and command.attempt <= self.error_attempts

    def pads(self, command: Command) -> bool:
        return command.kind in self.kinds and self.result_bytes > 0


def _number(spec: Mapping[str, Any], key: str) -> float | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key} must be a non-negative number, not {value!r}")
    return float(value)


def _count(spec: Mapping[str, Any], key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, not {value!r}")
    return value


def simulation_for(command: Command, participant: str) -> Simulation | None:
    """The knob addressed to `participant` in the command's payload, if any."""
    knobs = command.payload.get(PAYLOAD_KEY)
    if knobs is None:
        return None
    try:
        if not isinstance(knobs, Mapping):
            raise ValueError("simulate must be an object keyed by participant name")
        spec = knobs.get(participant)
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise ValueError(f"simulate.{participant} must be an object")
        unknown = set(spec) - {"delaySeconds", "delayAttempts", "errorAttempts", "resultBytes", "kinds"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        kinds_raw = spec.get("kinds", [CommandKind.ACTION.value])
        if not isinstance(kinds_raw, list) or not kinds_raw:
            raise ValueError("kinds must be a non-empty list of 'action' and/or 'compensation'")
        kinds = frozenset(CommandKind(kind) for kind in kinds_raw)
        return Simulation(
            delay_seconds=_number(spec, "delaySeconds") or 0.0,
            delay_attempts=_count(spec, "delayAttempts"),
            error_attempts=_count(spec, "errorAttempts") or 0,
            result_bytes=_count(spec, "resultBytes") or 0,
            kinds=kinds,
        )
    except ValueError as exc:
        log.warning(
            "ignoring malformed simulate knob in saga %s/%s: %s", command.saga_namespace, command.saga_name, exc
        )
        return None
