"""What the leader-only loops count and time as they run, for the daemon's metrics to read or be told.

One `LeaderStats` per manager, kept across its leadership terms (the loops of each term get it): counters are
this manager's since it started, as Prometheus counters are (a new leader's start from zero; `increase()`
and `rate()` take that in their stride).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable


class LeaderStats:
    def __init__(self) -> None:
        # (service ID, reason: shoal.api.reasons) of tasks that failed, and of tasks replaced by a new one
        self.failures: Counter[tuple[str, str]] = Counter()
        self.restarts: Counter[tuple[str, str]] = Counter()
        # (service ID, drain | rebalance) of tasks moved to another node while running, and (service ID, up |
        # down) of the autoscaler's changes of a replica count
        self.moves: Counter[tuple[str, str]] = Counter()
        self.autoscaled: Counter[tuple[str, str]] = Counter()
        # Told the seconds of each scheduling pass (deciding where a batch of pending tasks go), and of each
        # task's creation to its assignment to a node.
        self.on_scheduler_pass: Callable[[float], None] | None = None
        self.on_placement: Callable[[float], None] | None = None

    def count(self, events: Iterable[tuple[str, str, str]]) -> None:
        """(kind: failure | restart | move, service ID, reason) of a committed reconciliation."""
        by_kind = {"failure": self.failures, "restart": self.restarts, "move": self.moves}
        for kind, sid, reason in events:
            by_kind[kind][(sid, reason)] += 1

    def forget_services(self, keep: set[str]) -> None:
        """Drop the counts of services no longer in the store (their series end with them)."""
        for c in (self.failures, self.restarts, self.moves, self.autoscaled):
            for key in [k for k in c if k[0] not in keep]:
                del c[key]

    def pass_done(self, seconds: float) -> None:
        if self.on_scheduler_pass is not None:
            self.on_scheduler_pass(seconds)

    def placed(self, seconds: float) -> None:
        if self.on_placement is not None:
            self.on_placement(seconds)
