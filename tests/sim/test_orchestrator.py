"""Replicated, global and job orchestration in a simulated cluster under virtual time."""

from __future__ import annotations

from collections import Counter

from shoal.model.objects import RestartPolicy
from shoal.model.state import TaskState
from shoal.testing.fakeexec import FakeBehavior
from shoal.testing.sim import SimCluster, on_service, service_spec, with_replicas

NO_RESTART = RestartPolicy(condition="none")


async def test_replicated_scale_up_and_down_reuses_slots() -> None:
    async with SimCluster.started(nodes=3) as sim:
        svc = await sim.create_service(service_spec(replicas=3))
        await sim.wait_until(lambda: sim.converged(svc.id, 3))
        assert sorted(t.slot for t in sim.running(svc.id)) == [1, 2, 3]
        # spread: one per node
        assert len({t.node_id for t in sim.running(svc.id)}) == 3

        await sim.update_service(svc.id, lambda s: with_replicas(s, 5))
        await sim.wait_until(lambda: sim.converged(svc.id, 5))
        assert sorted(t.slot for t in sim.running(svc.id)) == [1, 2, 3, 4, 5]

        await sim.update_service(svc.id, lambda s: with_replicas(s, 2))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        assert sorted(t.slot for t in sim.running(svc.id)) == [1, 2]
        # the removed tasks were shut down, not left running
        assert all(t.status.state == TaskState.SHUTDOWN for t in sim.tasks(svc.id) if t.slot > 2)

        await sim.update_service(svc.id, lambda s: with_replicas(s, 4))
        await sim.wait_until(lambda: sim.converged(svc.id, 4))
        assert sorted(t.slot for t in sim.running(svc.id)) == [1, 2, 3, 4]  # slots 3 and 4 reused
        # scaling is not an update: no tasks were replaced, no UpdateStatus
        assert sim.update_state(svc.id) == ""


async def test_scale_to_zero_and_back() -> None:
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(service_spec(replicas=2))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        await sim.update_service(svc.id, lambda s: with_replicas(s, 0))
        await sim.wait_until(lambda: sim.live(svc.id) == [])
        await sim.update_service(svc.id, lambda s: with_replicas(s, 2))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))


async def test_global_follows_nodes_added_and_drained() -> None:
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(service_spec(kind="global"))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        assert len({t.node_id for t in sim.running(svc.id)}) == 2
        assert all(t.slot == 0 for t in sim.tasks(svc.id))

        n3 = await sim.add_node()
        await sim.wait_until(lambda: sim.converged(svc.id, 3))
        assert {t.node_id for t in sim.running(svc.id)} == set(sim.nodes)

        await sim.set_availability(n3, "drain")
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        assert n3 not in {t.node_id for t in sim.running(svc.id)}
        await sim.run_for(30)  # nothing comes back on the drained node
        assert sim.converged(svc.id, 2)

        await sim.set_availability(n3, "active")
        await sim.wait_until(lambda: sim.converged(svc.id, 3))


async def test_global_respects_constraints() -> None:
    async with SimCluster.started(nodes=0) as sim:
        await sim.add_node("a", labels={"zone": "x"})
        await sim.add_node("b", labels={"zone": "y"})
        svc = await sim.create_service(service_spec(kind="global", constraints=("node.labels.zone==x",)))
        await sim.wait_until(lambda: sim.converged(svc.id, 1))
        await sim.run_for(10)
        assert [sim.node(t.node_id).description.hostname for t in sim.running(svc.id)] == ["a"]


async def test_replicated_job_total_and_max_concurrent() -> None:
    async with SimCluster.started(nodes=3) as sim:
        sim.behave(on_service("job", FakeBehavior(exit_code=0, run_for=3.0)))
        svc = await sim.create_service(service_spec("job", kind="replicated-job", max_concurrent=2,
                                                    total_completions=5))

        def complete() -> list[int]:
            return [t.slot for t in sim.tasks(svc.id) if t.status.state == TaskState.COMPLETE]

        await sim.wait_until(lambda: len(complete()) == 5)
        await sim.run_for(60)
        assert sorted(complete()) == [0, 1, 2, 3, 4]  # slots from 0, as swarmkit numbers them
        assert len(sim.tasks(svc.id)) == 5  # exactly five ever made, none replaced
        assert {t.desired_state for t in sim.tasks(svc.id)} == {TaskState.COMPLETE}
        assert sim.max_concurrent(svc.id, lambda t: t.status.state == TaskState.RUNNING) == 2
        # they ran two at a time: 3 s each, 5 of them -> done at 9 s, not 3 s or 15 s
        done = max(t.status.timestamp for t in sim.tasks(svc.id)) - sim.clock.now() + sim.now
        assert 8.9 <= done <= 9.5


async def test_replicated_job_failures_are_retried_until_complete() -> None:
    async with SimCluster.started(nodes=2) as sim:
        failed_once: set[int] = set()

        def rule(t):  # type: ignore[no-untyped-def]
            if t.service_annotations.name != "job":
                return None
            if t.slot not in failed_once:
                failed_once.add(t.slot)
                return FakeBehavior(exit_code=1, run_for=1.0)
            return FakeBehavior(exit_code=0, run_for=1.0)

        sim.behave(rule)
        svc = await sim.create_service(service_spec(
            "job", kind="replicated-job", max_concurrent=2, total_completions=3,
            restart=RestartPolicy(condition="on-failure", delay=0)))
        await sim.wait_until(lambda: sum(t.status.state == TaskState.COMPLETE for t in sim.tasks(svc.id)) == 3)
        await sim.run_for(30)
        st = Counter(t.status.state for t in sim.tasks(svc.id))
        assert st == {TaskState.COMPLETE: 3, TaskState.FAILED: 3}


async def test_global_job_runs_once_per_node() -> None:
    async with SimCluster.started(nodes=3) as sim:
        sim.behave(on_service("gj", FakeBehavior(exit_code=0, run_for=2.0)))
        svc = await sim.create_service(service_spec("gj", kind="global-job"))
        await sim.wait_until(lambda: sum(t.status.state == TaskState.COMPLETE for t in sim.tasks(svc.id)) == 3)
        await sim.run_for(30)
        tasks = sim.tasks(svc.id)
        assert len(tasks) == 3 and all(t.status.state == TaskState.COMPLETE for t in tasks)
        assert {t.node_id for t in tasks} == set(sim.nodes)
        # completed, still visible, desired Complete as on swarmkit
        assert all(t.desired_state == TaskState.COMPLETE for t in tasks)


async def test_history_trimmed_to_cluster_limit() -> None:
    async with SimCluster.started(nodes=1, history_limit=3) as sim:
        sim.behave(on_service("crash", FakeBehavior(exit_code=1, run_for=1.0)))
        svc = await sim.create_service(service_spec(
            "crash", restart=RestartPolicy(condition="any", delay=0)))
        await sim.wait_until(lambda: max((t.restart_count for t in sim.tasks(svc.id)), default=0) >= 10)
        await sim.run_for(0.5)
        tasks = sim.tasks(svc.id)
        # dockerd keeps `limit` tasks per slot, the current one included
        assert len(tasks) == 3, [(t.restart_count, t.status.state.name) for t in tasks]
        assert all(t.slot == 1 for t in tasks)
        # the newest ones are kept
        assert max(t.restart_count for t in tasks) - min(t.restart_count for t in tasks) == 2


async def test_job_rerun_with_force_is_a_new_iteration() -> None:
    from dataclasses import replace

    async with SimCluster.started(nodes=1) as sim:
        sim.behave(on_service("job", FakeBehavior(exit_code=0, run_for=1.0)))
        svc = await sim.create_service(service_spec("job", kind="replicated-job", max_concurrent=2,
                                                    total_completions=3))

        def complete(it: int) -> int:
            return sum(t.status.state == TaskState.COMPLETE and (t.job_iteration or 0) == it
                       for t in sim.tasks(svc.id))

        await sim.wait_until(lambda: complete(0) == 3)
        await sim.update_service(svc.id, lambda s: replace(
            s, task_template=replace(s.task_template, force_update=s.task_template.force_update + 1)))
        await sim.wait_until(lambda: complete(1) == 3)
        await sim.run_for(10)
        assert complete(0) == 3 and complete(1) == 3 and len(sim.tasks(svc.id)) == 6
        assert sim.service(svc.id).job_status.job_iteration == 1  # type: ignore[union-attr]
