"""`make bench` end to end with tiny numbers. It asserts only that the result has every field, never a
timing: the figures themselves are for docs/performance.md, taken on a quiet machine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from saga_harness.bench import cli
from saga_testenv import Stack, StackEndpoints

pytestmark = pytest.mark.stack

SUMMARY = {"count", "mean", "p50", "p95", "p99", "max"}


def test_bench_writes_every_figure(stack: StackEndpoints, tmp_path: Path) -> None:
    args = cli.parse_args(
        [
            "--sagas",
            "6",
            "--concurrency",
            "3",
            "--scale-sagas",
            "8",
            "--floor-sagas",
            "4",
            "--floor-round-trips",
            "12",
            "--replicas",
            "1,2",
            "--out",
            str(tmp_path),
        ]
    )
    local = stack if isinstance(stack, Stack) else None
    result = asyncio.run(cli.run(args, stack, local, owned=False))
    path = cli.write(result, tmp_path)
    written = json.loads(path.read_text())

    assert {"machine", "stack", "parameters", "floor", "sagas", "ratio", "scale", "targets"} <= written.keys()
    assert {"cores", "memory_mib", "python", "packages", "git"} <= written["machine"].keys()

    floor = written["floor"]
    for client in ("aiohttp", "kubernetes_asyncio"):
        assert {"patches_per_second", "latency_seconds"} <= floor["status_patch"][client].keys()
    assert {"round_trips_per_second", "latency_seconds"} <= floor["kafka_round_trip"].keys()

    sagas = written["sagas"]
    assert sagas["phases"] == {"Succeeded": 6}
    assert {"sagas_per_second", "steps_per_second", "latency_seconds", "overhead_seconds"} <= sagas.keys()
    assert SUMMARY <= sagas["latency_seconds"]["end_to_end"].keys()
    assert SUMMARY <= sagas["overhead_seconds"]["reply_to_next_command"].keys()
    assert sagas["overhead_seconds"]["reply_to_next_command"]["count"] == 2 * 6
    assert {"p50", "p99"} <= sagas["operator_histograms_seconds"]["step_overhead"].keys()
    per_step = sagas["apiserver_writes"]["per_step"]
    assert {"sagas_post", "sagas_patch_main", "sagas_patch_status", "operator_saga_writes"} <= per_step.keys()
    assert {"cpu_seconds", "peak_rss_mib"} <= sagas["operator"].keys()

    # --replicas 1,2: the saga phase again with two replicas, side by side; each step applied by one of them
    rows = written["variants"]["rows"]
    assert [row["replicas"] for row in rows] == [1, 2]
    assert sum(rows[1]["replica_steps_applied"]) == 3 * 6
    assert {"status_patch", "event", "create", "all"} <= rows[1]["write_requests_per_saga"].keys()
    assert written["sagas_variants"][0]["phases"] == {"Succeeded": 6}
    assert [r["variant"] for r in written["variants"]["ratios"]] == [row["variant"] for row in rows]
    assert written["stack"]["etcd_fsync"] is (False if isinstance(stack, Stack) else None)

    scale = written["scale"]
    assert scale["sagas"] == 8
    assert {"resume_seconds", "ready_probe_seconds", "all_succeeded_seconds", "operator"} <= scale.keys()
    assert {"peak_rss_mib", "rss_settled_mib"} <= scale["operator"].keys()

    assert {t["name"] for t in written["targets"]} >= {"operator steps/s / raw status PATCHes/s"}
