"""Rolling updates and rollbacks, observed from task states in a simulated cluster under virtual time."""

from __future__ import annotations

import itertools

import pytest

from shoal.errors import InvalidArgument
from shoal.model.objects import SECOND, RestartPolicy, ServiceSpec, Task, UpdateConfig
from shoal.model.state import TaskState
from shoal.testing.fakeexec import FakeBehavior
from shoal.testing.sim import SimCluster, first_n, forced, on_image, service_spec, with_image

CRASH = FakeBehavior(exit_code=1, run_for=2.0)
RESTART = RestartPolicy(condition="any", delay=5 * SECOND)


def ucfg(*, parallelism: int = 1, delay: float = 0.0, order: str = "stop-first", monitor: float = 5.0,
         failure_action: str = "pause", ratio: float = 0.0) -> UpdateConfig:
    return UpdateConfig(parallelism=parallelism, delay=int(delay * SECOND), order=order,
                        monitor=int(monitor * SECOND), failure_action=failure_action, max_failure_ratio=ratio)


def spec(replicas: int, update: UpdateConfig, rollback: UpdateConfig | None = None) -> ServiceSpec:
    return service_spec("web", replicas=replicas, image="app:1", update=update, rollback=rollback,
                        restart=RESTART)


def v2(s: ServiceSpec) -> ServiceSpec:
    return with_image(s, "app:2")


def is_v2(t: Task) -> bool:
    return t.spec.container.image == "app:2"


def created_times(sim: SimCluster, sid: str, pred: object) -> list[float]:
    assert callable(pred)
    return sorted(at for at, t, old in sim.task_changes(sid) if old is None and pred(t))


def first(sim: SimCluster, tid: str, pred: object) -> float:
    assert callable(pred)
    at = sim.first_time(lambda t: t.id == tid and bool(pred(t)))
    assert at is not None, f"task {tid} never matched"
    return at


async def _updated(sim: SimCluster, sid: str, n: int, state: str = "completed") -> None:
    await sim.wait_until(lambda: sim.update_state(sid) == state and sim.converged(sid, n),
                         what=f"update {state} with {n} tasks")


# --- batches ----------------------------------------------------------------------------------------


async def test_parallelism_and_delay_between_batches() -> None:
    async with SimCluster.started(nodes=3) as sim:
        svc = await sim.create_service(spec(5, ucfg(parallelism=2, delay=10.0)))
        await sim.wait_until(lambda: sim.converged(svc.id, 5))
        t0 = sim.now
        await sim.update_service(svc.id, v2)
        await _updated(sim, svc.id, 5)
        made = created_times(sim, svc.id, is_v2)
        assert [round(m - t0, 3) for m in made] == [0.0, 0.0, 10.0, 10.0, 20.0]
        # never more than `parallelism` slots without a running task at once
        assert sim.max_concurrent(svc.id, lambda t: is_v2(t) and t.status.state < TaskState.RUNNING) <= 2
        assert sim.update_states(svc.id) == ["", "updating", "completed"]
        assert sim.update_message(svc.id) == "update completed"


async def test_parallelism_zero_updates_all_at_once() -> None:
    async with SimCluster.started(nodes=3) as sim:
        svc = await sim.create_service(spec(6, ucfg(parallelism=0, delay=10.0)))
        await sim.wait_until(lambda: sim.converged(svc.id, 6))
        t0 = sim.now
        await sim.update_service(svc.id, v2)
        await _updated(sim, svc.id, 6)
        assert [m - t0 for m in created_times(sim, svc.id, is_v2)] == [0.0] * 6


async def test_completed_only_after_monitor_of_last_batch() -> None:
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(spec(2, ucfg(monitor=30.0)))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        await sim.update_service(svc.id, v2)
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        last_running = sim.now
        done = await sim.wait_until(lambda: sim.update_state(svc.id) == "completed")
        assert 30.0 <= done - last_running < 30.5


# --- order ------------------------------------------------------------------------------------------


async def test_stop_first_stops_old_before_starting_new() -> None:
    async with SimCluster.started(nodes=3) as sim:
        svc = await sim.create_service(spec(3, ucfg(order="stop-first")))
        await sim.wait_until(lambda: sim.converged(svc.id, 3))
        old = {t.slot: t for t in sim.running(svc.id)}
        await sim.update_service(svc.id, v2)
        await _updated(sim, svc.id, 3)
        for t in sim.running(svc.id):
            stopped = first(sim, old[t.slot].id, lambda x: x.status.state == TaskState.SHUTDOWN)
            started = first(sim, t.id, lambda x: x.status.state == TaskState.RUNNING)
            assert stopped <= started
            # the new task was held at READY until the old one had stopped
            assert first(sim, t.id, lambda x: x.desired_state == TaskState.RUNNING) >= stopped
        assert sim.max_concurrent(svc.id, lambda t: t.status.state == TaskState.RUNNING) == 3


async def test_start_first_starts_new_before_stopping_old() -> None:
    async with SimCluster.started(nodes=3) as sim:
        svc = await sim.create_service(spec(3, ucfg(order="start-first", parallelism=2, delay=3.0)))
        await sim.wait_until(lambda: sim.converged(svc.id, 3))
        old = {t.slot: t for t in sim.running(svc.id)}
        await sim.update_service(svc.id, v2)
        await _updated(sim, svc.id, 3)
        for t in sim.running(svc.id):
            new_running = first(sim, t.id, lambda x: x.status.state == TaskState.RUNNING)
            old_told = first(sim, old[t.slot].id, lambda x: x.desired_state == TaskState.SHUTDOWN)
            assert new_running <= old_told
        # both generations ran side by side for a moment, never more than parallelism extra
        peak = sim.max_concurrent(svc.id, lambda t: t.status.state == TaskState.RUNNING)
        assert peak == 5


# --- monitor and failure actions --------------------------------------------------------------------


async def _fail_after(run_for: float, monitor: float) -> tuple[str, str, str]:
    async with SimCluster.started(nodes=1) as sim:
        sim.behave(on_image("app:2", FakeBehavior(exit_code=1, run_for=run_for)))
        svc = await sim.create_service(spec(1, ucfg(monitor=monitor)))
        await sim.wait_until(lambda: sim.converged(svc.id, 1))
        await sim.update_service(svc.id, v2)
        await sim.wait_until(lambda: sim.update_state(svc.id) in ("paused", "completed"))
        failed = [t for t in sim.tasks(svc.id) if t.status.state == TaskState.FAILED]
        return sim.update_state(svc.id), sim.update_message(svc.id), failed[0].id if failed else ""


async def test_monitor_window_boundaries() -> None:
    state, msg, tid = await _fail_after(9.9, monitor=10.0)  # just inside the window
    assert state == "paused"
    assert msg == f"update paused due to failure or early termination of task {tid}"
    state, msg, _ = await _fail_after(10.1, monitor=10.0)  # just after
    assert state == "completed" and msg == "update completed"


async def test_failure_before_running_counts() -> None:
    async with SimCluster.started(nodes=1) as sim:
        from shoal.errors import FatalError

        sim.behave(on_image("app:2", FakeBehavior(errors={"prepare": [FatalError("no such image")]})))
        svc = await sim.create_service(spec(2, ucfg()))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        await sim.update_service(svc.id, v2)
        await sim.wait_until(lambda: sim.update_state(svc.id) == "paused")
        rejected = [t for t in sim.tasks(svc.id) if t.status.state == TaskState.REJECTED]
        assert rejected and sim.update_message(svc.id).endswith(rejected[0].id)


async def test_pause_stops_the_rollout_and_resumes_on_next_update() -> None:
    async with SimCluster.started(nodes=3) as sim:
        sim.behave(on_image("app:2", CRASH))
        # the delay gives the monitor time to see the crash before the next batch (as in Docker's docs)
        svc = await sim.create_service(spec(3, ucfg(delay=5.0)))
        await sim.wait_until(lambda: sim.converged(svc.id, 3))
        await sim.update_service(svc.id, v2)
        await sim.wait_until(lambda: sim.update_state(svc.id) == "paused")
        await sim.run_for(60)
        assert sim.update_state(svc.id) == "paused"
        # only the first slot was touched; the other two still run the old image
        old_running = [t for t in sim.running(svc.id) if not is_v2(t)]
        assert sorted(t.slot for t in old_running) == [2, 3]
        assert {t.slot for t in sim.tasks(svc.id) if is_v2(t)} == {1}
        # the image is fixed; the next `service update` (nothing else changed) resumes the update
        sim.behave(on_image("app:2", FakeBehavior(exit_code=None)))
        await sim.update_service(svc.id)
        await _updated(sim, svc.id, 3)
        assert all(is_v2(t) for t in sim.running(svc.id))


async def test_continue_goes_on_despite_failures() -> None:
    async with SimCluster.started(nodes=3) as sim:
        sim.behave(on_image("app:2", CRASH))
        svc = await sim.create_service(spec(3, ucfg(failure_action="continue")))
        await sim.wait_until(lambda: sim.converged(svc.id, 3))
        await sim.update_service(svc.id, v2)
        await sim.wait_until(lambda: sim.update_state(svc.id) == "completed")
        assert {t.slot for t in sim.tasks(svc.id) if is_v2(t)} == {1, 2, 3}
        assert not any(not is_v2(t) and t.desired_state == TaskState.RUNNING for t in sim.tasks(svc.id))


async def test_automatic_rollback_restores_previous_spec_exactly() -> None:
    async with SimCluster.started(nodes=3) as sim:
        sim.behave(on_image("app:2", CRASH))
        original = spec(3, ucfg(failure_action="rollback", parallelism=1),
                        rollback=ucfg(parallelism=0, monitor=2.0))
        svc = await sim.create_service(original)
        await sim.wait_until(lambda: sim.converged(svc.id, 3))
        before = sim.service(svc.id).spec
        await sim.update_service(svc.id, v2)
        await sim.wait_until(lambda: sim.update_state(svc.id) == "rollback_completed" and
                             sim.converged(svc.id, 3))
        after = sim.service(svc.id)
        assert after.spec == before
        assert after.update_status is not None and after.update_status.message == "rollback completed"
        assert sim.update_states(svc.id) == ["", "updating", "rollback_started", "rollback_completed"]
        started = [c.obj for c in sim.log if c.kind == "service" and c.obj.update_status is not None  # type: ignore[attr-defined]
                   and c.obj.update_status.state == "rollback_started"]  # type: ignore[attr-defined]
        failed = [t for t in sim.tasks(svc.id) if t.status.state == TaskState.FAILED and is_v2(t)]
        assert started[0].update_status.message == \
            f"update rolled back due to failure or early termination of task {failed[0].id}"
        await sim.run_for(60)
        assert sim.converged(svc.id, 3) and not any(is_v2(t) for t in sim.running(svc.id))
        # As swarmkit's rollbackUpdate, the previous spec is consumed: rolling back the rollback is
        # refused with swarmkit's text, and the service stays as it is.
        assert after.previous_spec is None
        with pytest.raises(InvalidArgument, match="does not have a previous spec"):
            await sim.update_service(svc.id, rollback=True)
        assert sim.update_state(svc.id) == "rollback_completed"


async def test_max_failure_ratio_boundary() -> None:
    async def run(failing: int) -> str:
        async with SimCluster.started(nodes=4) as sim:
            sim.behave(first_n(failing, on_image("app:2", CRASH)))
            svc = await sim.create_service(spec(4, ucfg(ratio=0.25, monitor=10.0)))
            await sim.wait_until(lambda: sim.converged(svc.id, 4))
            await sim.update_service(svc.id, v2)
            await sim.wait_until(lambda: sim.update_state(svc.id) in ("paused", "completed"))
            return sim.update_state(svc.id)

    assert await run(1) == "completed"  # 1/4 = 0.25, not above the ratio
    assert await run(2) == "paused"  # 2/4 > 0.25


# --- what triggers an update ------------------------------------------------------------------------


async def test_update_with_nothing_changed_replaces_nothing() -> None:
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(spec(2, ucfg()))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        before = {t.id for t in sim.tasks(svc.id)}
        await sim.update_service(svc.id)
        await sim.run_for(60)
        assert {t.id for t in sim.tasks(svc.id)} == before
        assert sim.update_state(svc.id) == ""


async def test_force_redeploys_with_unchanged_spec() -> None:
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(spec(2, ucfg()))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        before = {t.id for t in sim.running(svc.id)}
        await sim.update_service(svc.id, forced)
        await _updated(sim, svc.id, 2)
        assert not before & {t.id for t in sim.running(svc.id)}


async def test_manual_rollback() -> None:
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(spec(2, ucfg()))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        original = sim.service(svc.id).spec
        await sim.update_service(svc.id, v2)
        await _updated(sim, svc.id, 2)
        await sim.update_service(svc.id, rollback=True)
        assert sim.update_state(svc.id) == "rollback_started"
        assert sim.update_message(svc.id) == "manually requested rollback"
        await _updated(sim, svc.id, 2, "rollback_completed")
        assert sim.update_message(svc.id) == "rollback completed"
        assert sim.service(svc.id).spec == original
        assert not any(is_v2(t) for t in sim.running(svc.id))
        # A manual rollback swaps the specs (as swarmkit): rolling it back goes forward to v2 again.
        await sim.update_service(svc.id, rollback=True)
        await _updated(sim, svc.id, 2, "rollback_completed")
        assert all(is_v2(t) for t in sim.running(svc.id))


async def test_rollback_failure_pauses_rollback() -> None:
    async with SimCluster.started(nodes=2) as sim:
        svc = await sim.create_service(spec(2, ucfg()))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        await sim.update_service(svc.id, v2)
        await _updated(sim, svc.id, 2)
        sim.behave(on_image("app:1", CRASH))  # the old image broke meanwhile
        await sim.update_service(svc.id, rollback=True)
        await sim.wait_until(lambda: sim.update_state(svc.id) == "rollback_paused")
        assert sim.update_message(svc.id).startswith("rollback paused due to failure or early termination of task ")


async def test_new_update_during_update_targets_newest_spec() -> None:
    async with SimCluster.started(nodes=3) as sim:
        svc = await sim.create_service(spec(4, ucfg(delay=10.0)))
        await sim.wait_until(lambda: sim.converged(svc.id, 4))
        await sim.update_service(svc.id, v2)
        await sim.run_for(12)
        await sim.update_service(svc.id, lambda s: with_image(s, "app:3"))
        await _updated(sim, svc.id, 4)
        assert all(t.spec.container.image == "app:3" for t in sim.running(svc.id))


# --- leader change in the middle --------------------------------------------------------------------


def _generations_ok(sim: SimCluster, sid: str) -> None:
    """At most one task per slot meant to run, and no old-generation task left running."""
    by_slot: dict[int, list[Task]] = {}
    for t in sim.tasks(sid):
        if t.status.state == TaskState.RUNNING or (t.desired_state <= TaskState.RUNNING and \
                t.status.state < TaskState.COMPLETE):
            by_slot.setdefault(t.slot, []).append(t)
    assert all(len(ts) == 1 for ts in by_slot.values()), by_slot


async def test_leader_restart_mid_update_stop_first() -> None:
    async with SimCluster.started(nodes=3) as sim:
        svc = await sim.create_service(spec(4, ucfg(delay=10.0)))
        await sim.wait_until(lambda: sim.converged(svc.id, 4))
        await sim.update_service(svc.id, v2)
        # stop the leader while slot 2's new task is held at READY and its old task shuts down
        await sim.wait_until(lambda: any(is_v2(t) and t.slot == 2 for t in sim.tasks(svc.id)))
        await sim.stop_leader()
        await sim.run_for(30)
        sim.start_leader()
        await _updated(sim, svc.id, 4)
        await sim.run_for(30)
        _generations_ok(sim, svc.id)
        assert len([t for t in sim.tasks(svc.id) if is_v2(t)]) == 4  # each slot replaced once


async def test_leader_restart_mid_update_start_first() -> None:
    async with SimCluster.started(nodes=3) as sim:
        svc = await sim.create_service(spec(4, ucfg(order="start-first", delay=10.0)))
        await sim.wait_until(lambda: sim.converged(svc.id, 4))
        await sim.update_service(svc.id, v2)
        # stop the leader once slot 2's new task is on its node: it starts, and nobody is left to stop
        # the old one; the next leader must finish that slot (not leave two generations running)
        await sim.wait_until(lambda: any(is_v2(t) and t.slot == 2 and t.status.state >= TaskState.ASSIGNED
                                         for t in sim.tasks(svc.id)))
        await sim.stop_leader()
        await sim.run_for(30)
        sim.start_leader()
        await sim.wait_until(lambda: len([t for t in sim.tasks(svc.id) if t.slot == 2 and
                                          t.status.state == TaskState.RUNNING]) == 2)
        await _updated(sim, svc.id, 4)
        await sim.run_for(30)
        _generations_ok(sim, svc.id)
        assert len([t for t in sim.tasks(svc.id) if is_v2(t)]) == 4


async def test_leader_restart_does_not_double_count_failures() -> None:
    # ratio 0.5 over 4 slots: 2 failures are tolerated, a third is not. Two fail before the leader
    # restarts; the new leader must not count them again (which would pause at once).
    async with SimCluster.started(nodes=4) as sim:
        sim.behave(first_n(2, on_image("app:2", CRASH)))
        svc = await sim.create_service(spec(4, ucfg(ratio=0.5, monitor=10.0)))
        await sim.wait_until(lambda: sim.converged(svc.id, 4))
        await sim.update_service(svc.id, v2)
        await sim.wait_until(lambda: sum(t.status.state == TaskState.FAILED for t in sim.tasks(svc.id)) == 2)
        await sim.restart_leader()
        await sim.wait_until(lambda: sim.update_state(svc.id) in ("paused", "completed") and
                             sim.converged(svc.id, 4))
        assert sim.update_state(svc.id) == "completed"
        _generations_ok(sim, svc.id)


async def test_rolling_update_survives_leader_restart_durable_store() -> None:
    async with SimCluster.started(nodes=2, durable=True) as sim:
        svc = await sim.create_service(spec(3, ucfg(delay=5.0)))
        await sim.wait_until(lambda: sim.converged(svc.id, 3))
        await sim.update_service(svc.id, v2)
        await sim.run_for(6)
        await sim.restart_leader()
        await _updated(sim, svc.id, 3)
        _generations_ok(sim, svc.id)


async def test_start_first_continue_with_broken_image_keeps_old_tasks_and_ends() -> None:
    from shoal.errors import FatalError

    async with SimCluster.started(nodes=2, history_limit=50) as sim:
        sim.behave(on_image("app:2", FakeBehavior(errors={"prepare": [FatalError("no such image")] * 1000})))
        svc = await sim.create_service(spec(2, ucfg(order="start-first", failure_action="continue")))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        old = {t.id for t in sim.running(svc.id)}
        await sim.update_service(svc.id, v2)
        await sim.wait_until(lambda: sim.update_state(svc.id) == "completed", timeout=120)
        # the service never went down: the old tasks were never stopped, since no new task ran
        assert {t.id for t in sim.live(svc.id)} == old
        await sim.run_for(30)
        assert {t.id for t in sim.live(svc.id)} == old
        assert sim.update_states(svc.id) == ["", "updating", "completed"]  # no flapping afterwards
        # later attempts are the restart policy's, one per restart delay, not a tight loop
        for slot in (1, 2):
            made = created_times(sim, svc.id, lambda t, s=slot: is_v2(t) and t.slot == s)
            gaps = [b - a for a, b in itertools.pairwise(made)]
            assert len(made) >= 5 and all(g >= 5.0 for g in gaps[1:]), made
