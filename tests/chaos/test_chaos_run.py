"""The short form of `make chaos` (40 sagas) inside `make test`: every fault once, then the audit.

`make chaos` runs the long form (300 sagas, a random seed); docs/chaos.md explains both. The seed here is
fixed (override with CHAOS_SEED) so that a failure can be replayed with the same mix of sagas and faults;
the timing of the faults still varies from run to run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from saga_harness.chaos import ChaosConfig, format_report, run_chaos
from saga_testenv.stack import Stack

pytestmark = pytest.mark.stack


def test_chaos_short_form_loses_nothing(chaos_stack: Stack, tmp_path: Path) -> None:
    config = ChaosConfig(seed=int(os.environ.get("CHAOS_SEED", "20261125"))).short()
    report = run_chaos(config, chaos_stack, tmp_path / "chaos")
    text = format_report(report)
    print(text)
    assert report.ok, text
    f = report.figures
    assert sum(report.phases.values()) == config.sagas
    assert f["operatorKills"] >= 1
    assert f["participantKills"] == {"videos": 1, "users": 1, "agents": 1}
    assert f["kafkaRestarts"] == 1 and f["apiserverPauses"] == 1
    assert sum(f["duplicatesInjected"].values()) > 0
    assert f["malformedRepliesInjected"] == f["malformedRepliesDeadLettered"] > 0
    assert f["malformedCommandsInjected"] == f["malformedCommandsDeadLettered"] > 0
