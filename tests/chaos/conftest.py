"""Fixtures for the chaos tests: a stack of their own, and an isolated saga world per test.

These tests crash and freeze the stack's servers (the Kafka broker, the API server), so they do not use
the session's shared `stack`: another test's operator would watch their namespaces, and the other tests'
worlds would live through their outages. One private stack for the whole directory costs ~15 s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from saga_harness.chaos.world import ChaosWorld
from saga_harness.faults import StackFaults, resume_service
from saga_testenv import StackEndpoints
from saga_testenv.stack import Stack

FOREIGN = StackEndpoints.from_environment() is not None


@pytest.fixture(scope="session")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if FOREIGN:
        pytest.skip("KUBECONFIG and KAFKA_BOOTSTRAP_SERVERS name a foreign stack: its servers cannot be crashed here")
    stack = Stack(tmp_path_factory.mktemp("chaos-stack"), detached=False, log=lambda m: print(f"[chaos-stack] {m}"))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def faults(chaos_stack: Stack) -> Iterator[StackFaults]:
    faults = StackFaults(chaos_stack)
    try:
        yield faults
    finally:
        # Whatever the test did, the next one finds the servers up.
        faults.resume_apiserver()
        if not faults.kafka_running():
            faults.start_kafka(wait=True)


@pytest.fixture
def make_world(chaos_stack: Stack, tmp_path: Path) -> Iterator[Callable[..., ChaosWorld]]:
    """`make_world(operator=True, **operator_env)`: a started ChaosWorld, stopped after the test."""
    worlds: list[ChaosWorld] = []

    def make(operator: bool = True, **operator_env: str) -> ChaosWorld:
        world = ChaosWorld(chaos_stack, tmp_path / f"world-{len(worlds)}", operator_env=operator_env)
        worlds.append(world)
        return world.start(operator=operator)

    try:
        yield make
    finally:
        for world in worlds:
            for service in world.services:
                with contextlib.suppress(Exception):
                    resume_service(service)
            world.stop()
