"""Health checks in the simulated cluster: running only once healthy, unhealthy tasks replaced, updates
waiting for health."""

from __future__ import annotations

from dataclasses import replace

from shoal.model.objects import SECOND, HealthConfig, RestartPolicy, ServiceSpec, UpdateConfig
from shoal.model.state import TaskState
from shoal.testing.fakeexec import FakeBehavior
from shoal.testing.sim import SimCluster, on_image, service_spec, with_image

UNHEALTHY = "task: non-zero exit (137): dockerexec: unhealthy container"


def checked(spec: ServiceSpec) -> ServiceSpec:
    tmpl = spec.task_template
    hc = HealthConfig(test=("CMD", "true"), interval=SECOND)
    return replace(spec, task_template=replace(tmpl, container=replace(tmpl.container, healthcheck=hc)))


async def test_unhealthy_task_is_replaced() -> None:
    async with SimCluster.started(nodes=1, history_limit=50) as sim:
        sim.behave(on_image("app:1", FakeBehavior(exit_code=None, run_for=3.0, unhealthy=UNHEALTHY)))
        svc = await sim.create_service(service_spec(restart=RestartPolicy(condition="any", delay=SECOND)))
        await sim.wait_until(lambda: len(sim.tasks(svc.id)) >= 3)
        first = min(sim.tasks(svc.id), key=lambda t: t.meta.created_at)
        assert first.status.state == TaskState.FAILED and first.status.err == UNHEALTHY
        failed_at = sim.first_time(lambda t: t.id == first.id and t.status.state == TaskState.FAILED)
        assert failed_at == 3.0


async def test_task_is_running_only_once_healthy_and_update_waits_for_it() -> None:
    async with SimCluster.started(nodes=2) as sim:
        # v2 reports "starting" (None) for 4 s of 0.25 s polls, then healthy
        sim.behave(on_image("app:2", FakeBehavior(exit_code=None, healthy=[None] * 16 + [True])))
        sim.behave(on_image("app:1", FakeBehavior(exit_code=None, healthy=[True])))
        svc = await sim.create_service(checked(service_spec(
            replicas=2, update=UpdateConfig(parallelism=1, monitor=SECOND))))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        t0 = sim.now
        await sim.update_service(svc.id, lambda s: with_image(s, "app:2"))
        await sim.wait_until(lambda: sim.update_state(svc.id) == "completed" and sim.converged(svc.id, 2))
        new = sorted((t for t in sim.tasks(svc.id) if t.spec.container.image == "app:2"),
                     key=lambda t: t.meta.created_at)
        running = [sim.first_time(lambda x, i=t.id: x.id == i and x.status.state == TaskState.RUNNING)
                   for t in new]
        assert running[0] is not None and running[0] - t0 >= 4.0
        # the second slot was started only after the first task was healthy (running)
        assert new[1].meta.created_at - sim.clock.now() + sim.now >= running[0]
        assert all(t.status.healthy is True for t in sim.running(svc.id))


async def test_never_healthy_update_pauses() -> None:
    async with SimCluster.started(nodes=2) as sim:
        sim.behave(on_image("app:1", FakeBehavior(exit_code=None, healthy=[True])))
        sim.behave(on_image("app:2", FakeBehavior(exit_code=None, healthy=[None] * 8 + [False])))
        svc = await sim.create_service(checked(service_spec(replicas=2, update=UpdateConfig())))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        await sim.update_service(svc.id, lambda s: with_image(s, "app:2"))
        await sim.wait_until(lambda: sim.update_state(svc.id) == "paused")
        failed = [t for t in sim.tasks(svc.id) if t.status.state == TaskState.FAILED]
        assert failed and sim.update_message(svc.id).endswith(failed[0].id)
        # the other slot still runs the old image
        assert any(t.spec.container.image == "app:1" for t in sim.running(svc.id))


async def test_task_waiting_for_its_image_health_check_stops_at_once_when_scaled_away() -> None:
    async with SimCluster.started(nodes=1) as sim:
        # the image declares a HEALTHCHECK that never reports: the task waits in STARTING
        sim.behave(on_image("app:1", FakeBehavior(exit_code=None, healthy=[None], image_health_check=True)))
        svc = await sim.create_service(service_spec(replicas=1))
        await sim.wait_until(lambda: any(t.status.state == TaskState.STARTING for t in sim.tasks(svc.id)))
        task = sim.tasks(svc.id)[0]
        t0 = sim.now
        await sim.update_service(svc.id, lambda s: replace(s, mode=replace(s.mode, replicas=0)))
        # the shutdown interrupts the wait for health instead of waiting for a result that never comes
        await sim.wait_until(lambda: sim.view().task(task.id) is None
                             or sim.view().task(task.id).status.state >= TaskState.SHUTDOWN, timeout=10)
        assert sim.now - t0 < 5
