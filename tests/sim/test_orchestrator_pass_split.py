"""A pass over many services (a node drained or down, a new leader's sweep) is written in several transactions,
each under the orchestrator's change budget, never as one log entry of every task it restarts: such an entry (117 MB
after a leader change at 5,000 nodes) is past what a Raft message carries, and the swarm would commit nothing after
it."""

from __future__ import annotations

import pytest

from shoal.manager.orchestrator import runner
from shoal.model.state import TaskState
from shoal.store.memory import decode_entry
from shoal.testing.sim import MemoryProposer, SimCluster, service_spec

SERVICES, REPLICAS = 6, 6


async def test_a_pass_over_every_service_is_split_into_bounded_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "MAX_PASS_CHANGES", 4)
    async with SimCluster.started(nodes=3) as sim:
        ids = [(await sim.create_service(service_spec(f"s{i}", replicas=REPLICAS))).id for i in range(SERVICES)]
        await sim.wait_until(lambda: all(sim.converged(s, REPLICAS) for s in ids))
        proposer = sim.store.proposer
        assert isinstance(proposer, MemoryProposer)
        first = len(proposer.entries)
        drained = next(iter(sim.nodes))
        moved = sum(1 for s in ids for t in sim.running(s) if t.node_id == drained)
        assert moved >= SERVICES  # the spread put tasks of every service on each node
        await sim.set_availability(drained, "drain")

        def settled() -> bool:
            return all(sim.converged(s, REPLICAS) and all(t.node_id != drained for t in sim.running(s)) for s in ids)

        await sim.wait_until(settled)
        created = []  # per entry written after the drain: the tasks it created
        for data in proposer.entries[first:]:
            _, actions = decode_entry(data)
            created.append(sum(1 for op, kind, obj in actions if op == "create" and kind == "task"
                               and obj.desired_state == TaskState.RUNNING))
    replacements = [n for n in created if n]
    assert sum(replacements) == moved
    # One pass over all six services, as several transactions: none carries more than one service's replacements
    # beyond the budget (the budget is checked between services).
    assert len(replacements) >= 2, created
    assert max(replacements) < moved, created
