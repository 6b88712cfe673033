"""Known differences from dockerd found by real clients (issue 16) that need the whole simulated cluster: restart
max attempts, history limits and jobs, each pinned to what dockerd answers. The rest of them are
tests/unit/test_fidelity_fixes.py."""

from __future__ import annotations

from shoal.model.objects import SECOND, RestartPolicy
from shoal.model.state import TaskState
from shoal.testing.fakeexec import FakeBehavior
from shoal.testing.sim import SimCluster, on_image, on_service, service_spec, with_image

EXIT3 = FakeBehavior(exit_code=3, run_for=1.0)

# --- restart max attempts: every task ends desired Shutdown ---------------------------------------------
# dockerd 20.10, `docker service create --restart-condition on-failure --restart-max-attempts 2
# --restart-delay 1s busybox sh -c 'exit 3'`, then `docker service ps`: three rows "Shutdown | Failed".
# swarmkit's Supervisor.Restart sets DesiredState = Shutdown before asking shouldRestart, and its
# UpdatableTasksInSlot keeps the slot of a task that is not restarted occupied.


def _on_failure(max_attempts: int) -> RestartPolicy:
    return RestartPolicy(condition="on-failure", delay=1 * SECOND, max_attempts=max_attempts)


async def _all_failed(sim: SimCluster, service_id: str, n: int) -> None:
    """Until the service has `n` tasks, all failed."""
    await sim.wait_until(lambda: len(sim.tasks(service_id)) == n and
                         all(t.status.state == TaskState.FAILED for t in sim.tasks(service_id)))


async def test_max_attempts_leaves_every_task_desired_shutdown() -> None:
    async with SimCluster.started(nodes=1, history_limit=50) as sim:
        sim.behave(on_service("s", EXIT3))
        svc = await sim.create_service(service_spec("s", restart=_on_failure(2)))
        await _all_failed(sim, svc.id, 3)
        await sim.run_for(60)
        tasks = sim.tasks(svc.id)
        assert [(t.desired_state, t.status.state) for t in tasks] == [(TaskState.SHUTDOWN, TaskState.FAILED)] * 3
        # the slot stays held by the last task: nothing is started again, even after a leader change
        await sim.restart_leader()
        await sim.run_for(30)
        assert len(sim.tasks(svc.id)) == 3


async def test_max_attempts_global_service_is_not_refilled() -> None:
    async with SimCluster.started(nodes=2, history_limit=50) as sim:
        sim.behave(on_service("g", EXIT3))
        svc = await sim.create_service(service_spec("g", kind="global", restart=_on_failure(1)))
        await _all_failed(sim, svc.id, 4)
        await sim.run_for(60)
        tasks = sim.tasks(svc.id)
        assert len(tasks) == 4 and all(t.desired_state == TaskState.SHUTDOWN for t in tasks)


async def test_small_history_limit_keeps_the_finished_task() -> None:
    # The task reaper must not delete the task that holds the slot, or the slot would be refilled.
    async with SimCluster.started(nodes=1, history_limit=1) as sim:
        sim.behave(on_service("s", EXIT3))
        svc = await sim.create_service(service_spec("s", restart=_on_failure(2)))
        await sim.wait_until(lambda: sim.first_time(lambda t: t.restart_count == 2 and
                                                   t.status.state == TaskState.FAILED, svc.id) is not None)
        await sim.run_for(60)
        tasks = sim.tasks(svc.id)
        assert [(t.restart_count, t.desired_state) for t in tasks] == [(2, TaskState.SHUTDOWN)]


async def test_update_replaces_a_finished_slot() -> None:
    # swarmkit's updater sees the finished task as the slot's task: a new spec starts it again.
    async with SimCluster.started(nodes=1, history_limit=50) as sim:
        sim.behave(on_image("app:1", EXIT3))
        svc = await sim.create_service(service_spec("s", restart=_on_failure(1)))
        await _all_failed(sim, svc.id, 2)
        await sim.update_service(svc.id, lambda s: with_image(s, "app:2"))
        await sim.wait_until(lambda: len(sim.running(svc.id)) == 1)
        assert sim.running(svc.id)[0].spec.container.image == "app:2"


async def test_job_completion_keeps_desired_complete() -> None:
    async with SimCluster.started(nodes=1) as sim:
        sim.behave(on_service("j", FakeBehavior(exit_code=0, run_for=1.0)))
        svc = await sim.create_service(service_spec("j", kind="replicated-job"))
        await sim.wait_until(lambda: any(t.status.state == TaskState.COMPLETE for t in sim.tasks(svc.id)))
        await sim.run_for(10)
        assert [(t.desired_state, t.status.state) for t in sim.tasks(svc.id)] == \
            [(TaskState.COMPLETE, TaskState.COMPLETE)]
