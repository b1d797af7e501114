"""One saga-operator installation (CRD, operator, three participants) for the end-to-end tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from saga_harness.world import SagaWorld
from saga_testenv.stack import StackEndpoints

_names = itertools.count(1)


@pytest.fixture(scope="session")
def world(stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaWorld]:
    run_dir: Path = tmp_path_factory.mktemp("world")
    with SagaWorld(stack, run_dir) as started:
        yield started


@pytest.fixture
def saga_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Unique, readable names: sagas outlive a test in the shared cluster."""

    def make(prefix: str) -> str:
        return f"{prefix}-{next(_names)}-{abs(hash(request.node.nodeid)) % 10_000}"

    return make
