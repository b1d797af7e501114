"""Running `saga-conformance` from a test: one place for both participants (Python and Go)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ProtocolKafka:
    """The broker of the kit's runs (conftest.py's ``protocol_kafka``). ``kit_env``: the kit's environment
    (``os.environ`` with the admin's ``KAFKA_*``). ``participant(name)``: the shell prefix
    (``KAFKA_...=... ``) that makes the participant command named ``name`` authenticate as its own
    principal, which it makes and grants its ACLs first."""

    bootstrap: str
    kit_env: dict[str, str]
    participant: Callable[[str], str]


def run_kit(argv: list[str], report: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Run the kit (`argv` ends with `--json report`), print its table, and return its verdicts by rule.
    The exit code must say what the report says: 0 with no failure, 1 with one; anything else is the kit
    failing to run."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=540, env=env)
    print(done.stdout)
    assert done.returncode in (0, 1), f"the kit could not run ({done.returncode}):\n{done.stderr[-4000:]}"
    assert done.returncode == (1 if '"fail"' in report.read_text() else 0)
    return {v["rule"]: v for v in json.loads(report.read_text())}
