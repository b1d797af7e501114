"""The report of a run: its figures and violations, as JSON (report.json) and as the printed summary."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from .audit import Violation
from .plan import ChaosConfig


@dataclass
class ChaosReport:
    config: ChaosConfig
    seconds: float
    phases: dict[str, int]
    violations: list[Violation]
    figures: dict[str, Any]
    namespace: str
    run_dir: str

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> str:
        return json.dumps(
            {
                "config": asdict(self.config),
                "seconds": round(self.seconds, 1),
                "phases": self.phases,
                "violations": [str(v) for v in self.violations],
                "figures": self.figures,
                "namespace": self.namespace,
                "runDir": self.run_dir,
            },
            indent=2,
            sort_keys=True,
            default=str,
        )


def format_report(report: ChaosReport) -> str:
    f = report.figures
    c = report.config
    phases = ", ".join(f"{k} {v}" for k, v in sorted(report.phases.items()))
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(f["outcomes"].items(), key=lambda kv: -kv[1]))
    kills = ", ".join(f"{k} {v}" for k, v in sorted(f["participantKills"].items())) or "none"
    dups = f["duplicatesInjected"]
    lines = [
        "",
        f"== chaos run: {c.sagas} sagas, seed {c.seed}: {report.seconds:.0f} s",
        f"  sagas       {sum(report.phases.values())}: {phases}",
        f"  mix         {', '.join(f'{k} {v}' for k, v in sorted(f['tags'].items()))}; aborts sent {f['abortsSent']} "
        f"(missed their moment {f['abortsMissed']})",
        f"  outcomes    {outcomes}; commands sent again (retries) {f['retries']}",
        f"  faults      operator SIGKILLed {f['operatorKills']} times (started {f['operatorStarts']} times"
        + (
            f"; {f['operatorReplicas']} replicas, rolling restarts {f['rollingRestarts']}"
            if f.get("operatorReplicas", 1) > 1
            else ""
        )
        + f"); participants SIGKILLed and restarted: {kills}",
        f"              Kafka broker killed and restarted {f['kafkaRestarts']} (down {f['kafkaDownSeconds']} s); "
        f"API server frozen {f['apiserverPauses']} ({f['apiserverPausedSeconds']} s)",
        f"  duplicates  re-delivered: commands {dups.get('commands', 0)}, replies {dups.get('replies', 0)}; "
        f"participants absorbed {f['duplicatesAbsorbedByParticipants']} duplicate deliveries; "
        f"tombstones {f['tombstones']}, late actions refused {f['lateActionsRefused']}",
        f"  malformed   replies {f['malformedRepliesInjected']} injected, {f['malformedRepliesDeadLettered']} "
        f"dead-lettered by the operator; commands {f['malformedCommandsInjected']} injected, "
        f"{f['malformedCommandsDeadLettered']} dead-lettered by the participants; "
        f"replies undeliverable during the outage {f['repliesUndeliverableDeadLettered']}",
        f"  money       {f['moneyBefore']} cents before, {f['moneyAfter']} after",
        f"  violations  {len(report.violations)}",
    ]
    lines += [f"    VIOLATION {v}" for v in report.violations[:200]]
    if len(report.violations) > 200:
        lines.append(f"    ... and {len(report.violations) - 200} more (see {report.run_dir}/report.json)")
    return "\n".join(lines)
