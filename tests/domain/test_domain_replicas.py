"""Two coordinators on one saga, interleaved (a hand-over between replicas, docs/architecture.md "Several
replicas"): the world of test_domain_world, in which every event may be applied by either of two operators,
each with its own view of the log, possibly stale. The log is a compare-and-set store, as the API server's
resourceVersion makes it: a write based on a view that is not the stored status is refused, and the writer
reads the stored status and applies its event again (Coordinator._apply). Effects are performed only after
a write that succeeded. Every invariant of the one-operator world must hold: nothing applied twice, the
saga ends Succeeded or Compensated with the books to match.
"""

from __future__ import annotations

from typing import Any

from domain_support import SAGA_UID
from hypothesis import strategies as st
from hypothesis.stateful import rule
from test_domain_world import Crash, world_settings
from test_domain_world import SagaWorld as OneOperatorWorld

from saga_operator.domain.events import STALE_VIEW_REASONS, Event, ReplyIgnored, Resumed
from saga_operator.domain.model import Phase, SagaStatus
from saga_operator.domain.transition import transition

WHO = st.integers(0, 1)


def _stale_view_verdict(effects: list[Any]) -> bool:
    return any(isinstance(e, ReplyIgnored) and e.invalid and e.reason in STALE_VIEW_REASONS for e in effects)


class TwoCoordinators(OneOperatorWorld):
    def __init__(self) -> None:
        super().__init__()
        # Each coordinator's view of the log; `self.status` is the stored log (the API server's).
        # None: not seen yet; the first write is seen by both watches.
        self.views: list[SagaStatus | None] = [None, None]
        self.active = 0
        self.conflicts = 0

    def operate(self, event: Event, crash: Crash = Crash.NONE) -> bool:
        """The active coordinator applies `event` to its view; the write is a compare-and-set on seq."""
        who = self.active
        if isinstance(event, Resumed) and self.status.phase != Phase.PENDING:
            # The fencing write before a resume (Coordinator._fence): a compare-and-set of the view with only
            # seq moved on; refused, the coordinator reads the stored log and writes that. Only then does it
            # send what the log has in flight, and the other coordinator's next write is refused.
            self.conflicts += self.views[who] is not None and self.views[who] != self.status
            self.status = self.views[who] = self.status.model_copy(update={"seq": self.status.seq + 1})
        for _ in range(3):
            view = self.views[who] or self.status
            after, effects = transition(self.spec, view, event, uid=SAGA_UID)
            if after.seq == view.seq and view.seq != self.status.seq and _stale_view_verdict(effects):
                # A reply its view says was never sent (Coordinator.apply_reply): read the stored log, apply again.
                self.conflicts += 1
                self.views[who] = self.status
                continue
            if after.seq == view.seq:
                # Nothing to write (a duplicate, a late reply, a resume): the effects go out on this view alone.
                self.check_transition(event, view, after, effects)
                self.log_sent(effects)
                self.perform(effects)
                return False
            if view.seq != self.status.seq:
                self.conflicts += 1  # 409: read the stored log, apply the event again
                self.views[who] = self.status
                continue
            self.check_transition(event, view, after, effects)
            if crash == Crash.BEFORE_WRITE:
                self.restart()
                return False
            self.status = self.views[who] = after
            self.views = [v or after for v in self.views]
            self.log_sent(effects)
            if crash == Crash.AFTER_WRITE:
                self.restart()
                return True
            self.perform(effects)
            return True
        raise AssertionError("a fresh view was refused by the compare-and-set")

    def restart(self) -> None:
        """The active coordinator restarts: it lists the saga (its view is the stored log) and resumes it."""
        self.views[self.active] = self.status
        super().restart()
        self.views[self.active] = self.status

    @rule(who=WHO)
    def the_other_acts(self, who: int) -> None:
        """The overlap: events now reach coordinator `who`, whatever its view (the old owner still applies
        replies it read before the rebalance, fires a deadline it had scheduled)."""
        self.active = who

    @rule(who=WHO)
    def its_watch_catches_up(self, who: int) -> None:
        self.views[who] = self.status

    @rule(who=WHO)
    def hand_over(self, who: int) -> None:
        """Coordinator `who` is given the saga's shard: it lists it and resumes it (Coordinator.acquire)."""
        self.active = who
        self.views[who] = self.status
        self.operate(Resumed(self.clock))

    @rule(who=WHO)
    def a_stale_coordinator_resumes(self, who: int) -> None:
        """A coordinator resumes from the view it has (a hand-over whose listing raced a write)."""
        self.active = who
        self.operate(Resumed(self.clock))


TwoCoordinators.TestCase.settings = world_settings(150)
test_two_coordinators = TwoCoordinators.TestCase
