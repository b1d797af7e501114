"""The benchmark's saga-phase variants: which runs, in which order, and an old commit's operator unpacked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from saga_harness.bench import cli
from saga_harness.bench.shared import Variant
from saga_harness.world import REPO


def test_replicas_and_modes_make_one_variant_each_after_the_baseline(tmp_path: Path) -> None:
    args = cli.parse_args(["--replicas", "1,2,3", "--status-writes", "strict,behind"])
    plan = cli.variants(args, tmp_path, "abc1234def")
    assert plan[0] == Variant(source=tmp_path, commit="abc1234def")
    assert [(v.replicas, v.status_writes) for v in plan[1:]] == [
        (1, "strict"),
        (1, "behind"),
        (2, "strict"),
        (2, "behind"),
        (3, "strict"),
        (3, "behind"),
    ]
    # each phase gets a namespace and consumer group of its own
    assert len({v.phase for v in plan}) == len(plan)
    assert plan[0].label == "abc1234def (old), 1 replica"
    assert plan[-1].label == "this tree, 3 replicas, behind"


def test_the_default_is_one_variant_of_this_tree() -> None:
    assert cli.variants(cli.parse_args([]), None, "") == [Variant()]


@pytest.mark.parametrize(("flag", "value"), [("--replicas", "0"), ("--replicas", "two"), ("--status-writes", "lazy")])
def test_bad_variant_flags_are_refused(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args([flag, value])
    assert value in capsys.readouterr().err


def test_an_old_commit_is_unpacked_with_its_operator(tmp_path: Path) -> None:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    tree, sha = cli.unpack_commit("HEAD", tmp_path)
    assert sha == head.stdout.strip()
    assert (tree / "operator" / "saga_operator" / "__main__.py").is_file()
    assert (tree / "protocol" / "saga_protocol").is_dir()
    assert not (tree / "tests").exists()


def test_an_unknown_commit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        cli.unpack_commit("no-such-revision-anywhere", tmp_path)


def test_variant_rows_compare_against_the_first() -> None:
    def figures(sagas_per_second: float, status: int, cpu: float) -> dict[str, object]:
        return {
            "sagas": 10,
            "sagas_per_second": sagas_per_second,
            "steps_per_second": 3 * sagas_per_second,
            "apiserver_writes": {
                "sagas_patch_status": status,
                "sagas_patch_main": 0,
                "sagas_post": 10,
                "events_writes": 20,
            },
            "latency_seconds": {"end_to_end": {"p50": 1.0, "p95": 2.0, "p99": 3.0}},
            "overhead_seconds": {"reply_to_next_command": {"p50": 0.1, "p99": 0.2}},
            "operator": {
                "cpu_ms_per_step": cpu,
                "peak_rss_mib": 100.0,
                "by_replica": [{"cpu_ms_per_step_applied": cpu, "steps_applied": 30}],
            },
        }

    old = cli.variant_row(Variant(commit="0123456789ab"), figures(10.0, 40, 2.0))
    new = cli.variant_row(Variant(), figures(25.0, 10, 1.0))
    assert old["write_requests_per_saga"] == {
        "status_patch": 4.0,
        "main_patch": 0.0,
        "create": 1.0,
        "event": 2.0,
        "all": 7.0,
    }
    ratios = cli.comparison([old, new])["ratios"]
    assert ratios[1]["sagas_per_second"] == 2.5
    assert ratios[1]["write_requests_per_saga"] == round(4 / 7, 3)
    assert ratios[1]["operator_cpu_ms_per_step"] == 0.5
