"""The orchestrator looks at a service again only when something it did not decide itself changed: the creation
of the tasks its own pass created is no reason for another pass over all of the service's tasks."""

from __future__ import annotations

import pytest

from shoal.manager.orchestrator.reconcile import Reconciler
from shoal.model.objects import Node, Service
from shoal.store.memory import Tx
from shoal.testing.sim import SimCluster, service_spec, with_replicas

State = frozenset[tuple[str, int, str, int]]


def seen(tx: Tx, sid: str) -> State:
    return frozenset((t.id, int(t.status.state), t.node_id, int(t.desired_state)) for t in tx.tasks(service_id=sid))


async def test_no_pass_over_a_service_finds_what_the_last_one_left(monkeypatch: pytest.MonkeyPatch) -> None:
    passes: dict[str, list[tuple[State, State]]] = {}
    real = Reconciler.reconcile

    def recording(self: Reconciler, tx: Tx, svc: Service, nodes: dict[str, Node] | None = None) -> None:
        before = seen(tx, svc.id)
        real(self, tx, svc, nodes)
        passes.setdefault(svc.id, []).append((before, seen(tx, svc.id)))

    monkeypatch.setattr(Reconciler, "reconcile", recording)
    async with SimCluster.started(nodes=3) as sim:
        svc = await sim.create_service(service_spec(replicas=6))
        await sim.wait_until(lambda: sim.converged(svc.id, 6))
        await sim.update_service(svc.id, lambda s: with_replicas(s, 9))
        await sim.wait_until(lambda: sim.converged(svc.id, 9))
    mine = passes[svc.id]
    assert len(mine) >= 2
    redundant = [i for i in range(1, len(mine)) if mine[i][0] == mine[i - 1][1]]
    assert redundant == [], f"{len(redundant)} of {len(mine)} passes found the service as the pass before left it"


async def test_a_new_service_whose_tasks_are_placed_as_they_are_made_takes_one_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The scheduler's stage assigns the tasks in the transaction that creates them: their creation comes back
    # assigned, which is no more reason for a pass than an assignment in a later commit would be.
    passes: list[str] = []
    real = Reconciler.reconcile

    def counting(self: Reconciler, tx: Tx, svc: Service, nodes: dict[str, Node] | None = None) -> None:
        passes.append(svc.id)
        real(self, tx, svc, nodes)

    monkeypatch.setattr(Reconciler, "reconcile", counting)
    async with SimCluster.started(nodes=3) as sim:
        svc = await sim.create_service(service_spec(replicas=6))
        await sim.wait_until(lambda: sim.converged(svc.id, 6))
    assert passes.count(svc.id) == 1
