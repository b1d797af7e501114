"""The SDK's public face: what a participant author imports. Everything else is a private module."""

from __future__ import annotations

import ast
from pathlib import Path

import saga_buyvideo
import saga_participants
import saga_participants.testing

PUBLIC = [
    "ActionHandler",
    "BusinessError",
    "CompensationHandler",
    "Decision",
    "Disposition",
    "InboxStore",
    "Interceptor",
    "KafkaSettings",
    "Participant",
    "ParticipantSettings",
    "PostgresStore",
    "RetryPolicy",
    "SqliteStore",
    "TracingSettingsError",
]
TESTING = ["UNADDRESSED", "FaultInjection", "Unanswered", "compensation_of", "make_command", "run_command"]


def test_the_top_level_exports_exactly_the_curated_names() -> None:
    assert saga_participants.__all__ == PUBLIC
    assert all(hasattr(saga_participants, name) for name in PUBLIC)


def test_the_testing_module_exports_exactly_its_helpers() -> None:
    assert saga_participants.testing.__all__ == TESTING
    assert all(hasattr(saga_participants.testing, name) for name in TESTING)


def test_every_other_module_of_the_sdk_is_private() -> None:
    package = Path(saga_participants.__file__).parent
    modules = {path.stem for path in package.glob("*.py")} - {"__init__", "testing"}
    assert modules and all(name.startswith("_") for name in modules), sorted(modules)


def test_the_buyvideo_services_import_only_the_public_face() -> None:
    """The buy-video services are what a participant author writes: the SDK's top level and the protocol."""
    for path in Path(saga_buyvideo.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("saga_participants"):
                    assert name == "saga_participants", f"{path.name} imports {name}"
                assert not name.startswith(("saga_plumbing", "saga_operator")), f"{path.name} imports {name}"
