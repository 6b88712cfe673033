"""Admission of node registrations on the leader: at most `rate` a second, a node over that told when to come back.

A registration costs the leader a store write and then a node's complete set of assignments; a new leader can be
sent every node of the swarm within a second (agents that do not spread their return, or a network that comes
back). Admission is a schedule of slots `1/rate` apart: a registration that finds the schedule caught up with
the clock is taken at once (up to `burst` of them after a quiet spell), any other is refused with the time of the
next free slot, which is then held for that node alone, so a node that comes back when told is taken, and later
arrivals queue behind it instead of overtaking it. A held slot not claimed within `HOLD` seconds is let go.
"""

from __future__ import annotations

from collections import deque

from shoal.clock import Clock

# Seconds a node's slot is held past its time (it may be late: a reconnection, a busy process).
HOLD = 30.0
# A slot this little ahead is taken now (the arithmetic of slots, waits and the clock is not exact).
EARLY = 0.001


class Admission:
    def __init__(self, clock: Clock, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.clock = clock
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)  # taken at once after a quiet spell
        self._next = float("-inf")  # the schedule: the next free slot
        self._held: dict[str, float] = {}  # node -> its slot
        self._order: deque[tuple[float, str]] = deque()  # held slots by time (they are given out in order)
        self.deferred = 0  # registrations refused with a slot, since this manager started

    def admit(self, node_id: str) -> float:
        """0 if the node registers now; else the seconds until its slot, where it will be taken."""
        now = self.clock.monotonic()
        self._let_go(now)
        held = self._held.get(node_id)
        if held is not None:
            if held <= now + EARLY:
                del self._held[node_id]
                return 0.0
            self.deferred += 1
            return held - now  # came back early: the same slot
        slot = max(self._next, now - (self.burst - 1) / self.rate)
        self._next = slot + 1.0 / self.rate
        if slot <= now + EARLY:
            return 0.0
        self._held[node_id] = slot
        self._order.append((slot, node_id))
        self.deferred += 1
        return slot - now

    def waiting(self) -> int:
        """Nodes holding a slot."""
        return len(self._held)

    def reset(self) -> None:
        """A new term: no schedule, no held slots."""
        self._next = float("-inf")
        self._held.clear()
        self._order.clear()

    def _let_go(self, now: float) -> None:
        while self._order and self._order[0][0] < now - HOLD:
            slot, node_id = self._order.popleft()
            if self._held.get(node_id) == slot:
                del self._held[node_id]
