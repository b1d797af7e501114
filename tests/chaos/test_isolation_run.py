"""The short form of `make isolation` (issue 10's acceptance) inside `make test`: 10 ordinary sagas alone,
then 10 beside every bad case, each case's outcome asserted with the words a user sees, then the books.

This is also where the size-class failures meet the real stack (the unit tests cover their logic): a step
result over the participant's 16 KiB cap (ResultTooLarge), results over the operator's 256 KiB per saga
(ResultsTooLarge), a command the broker refuses for its topic's max.message.bytes (CommandTooLarge), and
1 MiB / 300 KiB / 100-deep payloads refused at `kubectl create`. docs/chaos.md, "Isolation".

No timing is asserted: the run prints the latencies with and without the bad cases.
"""

from __future__ import annotations

import pytest

from saga_harness.isolation import IsolationReport, format_report, run_isolation
from saga_testenv.stack import Stack

pytestmark = pytest.mark.stack

SAGAS = 10


@pytest.fixture(scope="module")
def report(chaos_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> IsolationReport:
    result = run_isolation(chaos_stack, tmp_path_factory.mktemp("isolation"), sagas=SAGAS, max_slowdown=0, interval=1.0)
    print(format_report(result))
    return result


def saw(report: IsolationReport, starts: str) -> str:
    """What the user saw in the one case whose name starts with `starts`, asserting that it matched."""
    cases = [c for c in report.cases if c.name.startswith(starts)]
    assert len(cases) == 1, [c.name for c in report.cases]
    assert cases[0].ok, f"{cases[0].name}: expected {cases[0].expected}; saw {cases[0].saw}"
    return cases[0].saw


def test_every_case_matched_and_the_books_balance(report: IsolationReport) -> None:
    assert [c.name for c in report.cases if not c.ok] == []
    assert report.problems == []
    assert report.money_before == report.money_after
    assert report.baseline.phases == {"Succeeded": SAGAS} and report.loaded.phases == {"Succeeded": SAGAS}
    assert len(report.cases) == 23


def test_edits_of_a_running_saga_are_refused_and_it_runs_on(report: IsolationReport) -> None:
    frozen = "spec.steps: Forbidden: the steps of a saga cannot change once it is created"
    assert frozen in saw(report, "rename a step") and "step debit-buyer was renamed" in saw(report, "rename a step")
    assert "step credit-agent was renamed, edited or removed" in saw(report, "remove a step")
    assert "steps were added" in saw(report, "add a step")
    assert "spec.payload cannot change once the saga is created" in saw(report, "edit spec.payload")
    assert "debited and credited (cents): [10, 10]" in saw(report, "edit-payload")
    for victim in ("edit-steps", "forge-phase", "forge-steps", "forge-jane"):
        assert "phase Succeeded" in saw(report, victim)


def test_forged_statuses_are_not_adopted_or_refused(report: IsolationReport) -> None:
    for what in ("phase Succeeded mid-run", "steps: null"):
        text = saw(report, f"forged status ({what})")
        assert "Warning StatusTampered" in text and "not adopted" in text and "phase Running" in text
    jane = saw(report, "forged status on")
    assert "ValidatingAdmissionPolicy 'sagas.saga.dev-status-writers'" in jane and "not jane" in jane


def test_a_namespace_the_participant_does_not_allow_is_refused_naming_step_and_participant(
    report: IsolationReport,
) -> None:
    text = saw(report, "a saga in namespace")
    assert "ValidatingAdmissionPolicy 'sagas.saga.dev-participants'" in text
    assert "step post-entry: participant narrow-" in text and "does not take commands from namespace" in text


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("a 1 MiB payload", "spec.payload is 1048652 bytes as compact JSON, more than the saga protocol carries"),
        ("a 300 KiB payload", "spec.payload is 307276 bytes as compact JSON, more than the saga protocol carries"),
        ("a 100-deep payload", "spec.payload is nested deeper than the saga protocol allows (32 levels"),
    ],
)
def test_payloads_over_the_wire_limits_are_refused_at_create(report: IsolationReport, case: str, words: str) -> None:
    text = saw(report, case)
    assert "ValidatingAdmissionPolicy 'sagas.saga.dev-payload'" in text and words in text


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("a step result of 17000 bytes", "credit-agent: ResultTooLarge']: result is 170"),
        ("17 parallel steps", "ResultsTooLarge']: the results of this saga would exceed 262144 bytes together"),
        ("a command over its topic", "post-entry: CommandTooLarge']: the producer refused the action command"),
    ],
)
def test_size_class_failures_compensate_the_saga_with_a_named_reason(
    report: IsolationReport, case: str, words: str
) -> None:
    text = saw(report, case)
    assert text.startswith("phase Compensated") and words in text


def test_deletions_a_rejected_saga_goes_at_once_a_failed_one_waits(report: IsolationReport) -> None:
    cycle = saw(report, "a dependsOn cycle")
    assert "each dependsOn entry must name another step of this saga, listed before it" in cycle
    stranger = saw(report, "stranger-")
    assert stranger.startswith("Rejected/UnknownParticipant: step credit-agent: participant 'nobody'")
    failed = saw(report, "failed-")
    assert "Terminating=True; Warning DeletionBlocked: saga is Failed (CompensationStuck)" in failed
    assert "record-purchase may still hold effects" in failed and "gone=True" in failed


def test_an_operator_on_a_busy_port_exits_and_the_running_one_serves_on(report: IsolationReport) -> None:
    text = saw(report, "a second operator")
    assert text.startswith("exit 1") and "PortInUse" in text and "is already in use" in text
    assert "running operator ready: True" in text
