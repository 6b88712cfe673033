"""Cron jobs (shoal.manager.cron) in a simulated cluster under virtual time: swarm-cronjob's labels, both shapes of
service, skip-running and the other concurrency policies, triggers, missed ticks, history limits, updates that
leave a run alone, and exactly one run per tick across a leader change at the tick."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

from shoal.errors import Unavailable
from shoal.manager.cron.loop import iso
from shoal.manager.status import service_status
from shoal.model.objects import RestartPolicy, ServiceSpec, Task
from shoal.model.state import TaskState
from shoal.tasks import cancel_and_wait
from shoal.testing.fakeexec import FakeBehavior
from shoal.testing.sim import SimCluster, forced, on_service, service_spec, with_image

NO_RESTART = RestartPolicy(condition="none")
T0 = 1_700_000_000.0  # the virtual clock's wall time at start: 2023-11-14T22:13:20Z


def cron_spec(schedule: str, *, name: str = "job", kind: str = "replicated", replicas: int = 0,
              extra: Mapping[str, str] | None = None, total: int = 1, max_concurrent: int = 1) -> ServiceSpec:
    """A service as swarm-cronjob users write it: `replicas: 0`, `restart_policy: none`, the labels."""
    spec = service_spec(name, kind=kind, replicas=replicas, restart=NO_RESTART, total_completions=total,
                        max_concurrent=max_concurrent)
    labels = {"swarm.cronjob.enable": "true", "swarm.cronjob.schedule": schedule, **(extra or {})}
    return replace(spec, annotations=replace(spec.annotations, labels=labels))


def with_labels(spec: ServiceSpec, **labels: str) -> ServiceSpec:
    new = dict(spec.annotations.labels)
    new.update({k.replace("_", "."): v for k, v in labels.items()})
    return replace(spec, annotations=replace(spec.annotations, labels=new))


def runs(sim: SimCluster, sid: str) -> dict[int, list[Task]]:
    """The service's tasks by cron run (job iteration)."""
    out: dict[int, list[Task]] = {}
    for t in sim.tasks(sid):
        out.setdefault(t.job_iteration or 0, []).append(t)
    return out


def started_at(sim: SimCluster, sid: str) -> dict[int, float]:
    """When the first task of each run was first RUNNING (virtual seconds since the start)."""
    out: dict[int, float] = {}
    for at, t, _ in sim.task_changes(sid):
        if t.status.state == TaskState.RUNNING and (t.job_iteration or 0) not in out:
            out[t.job_iteration or 0] = at
    return out


def created_at(sim: SimCluster, sid: str) -> dict[int, float]:
    """When each run's first task was created (virtual seconds since the start)."""
    out: dict[int, float] = {}
    for at, t, old in sim.task_changes(sid):
        if old is None and (t.job_iteration or 0) not in out:
            out[t.job_iteration or 0] = at
    return out


async def test_swarm_cronjob_stack_shape_runs_each_tick_and_measures_start_delay() -> None:
    """`replicas: 0`, `restart_policy: none` and the four labels: each minute, `swarm.cronjob.replicas` tasks
    run to completion; nothing runs at creation; the run starts within the scheduling delay of its tick."""
    async with SimCluster.started(nodes=3) as sim:
        sim.behave(on_service("job", FakeBehavior(exit_code=0, run_for=5.0)))
        svc = await sim.create_service(cron_spec("* * * * *", extra={"swarm.cronjob.replicas": "2",
                                                                      "swarm.cronjob.skip-running": "true"}))
        await sim.run_for(30)
        assert sim.tasks(svc.id) == []  # created at second 20 of a minute: the first tick is at the minute
        first_tick = 40.0  # T0 is 22:13:20, so ticks fall at 40 s, 100 s, 160 s... of virtual time
        await sim.run_for(first_tick + 1 - sim.now)
        # `docker service ls` shows the run going on as the desired tasks, and 0/0 between runs
        assert service_status(sim.view(), sim.service(svc.id))["DesiredTasks"] == 2
        await sim.run_for(10)
        assert service_status(sim.view(), sim.service(svc.id))["DesiredTasks"] == 0
        await sim.run_for(first_tick + 4 * 60 + 30 - sim.now)
        by_run = runs(sim, svc.id)
        assert sorted(by_run) == [1, 2, 3, 4, 5]
        assert all(len(ts) == 2 and all(t.status.state == TaskState.COMPLETE for t in ts) for ts in by_run.values())
        starts = started_at(sim, svc.id)
        for it, at in starts.items():
            tick = first_tick + (it - 1) * 60
            assert tick <= created_at(sim, svc.id)[it] <= at
            print(f"run {it}: tick at {tick:.0f}s, task running {at - tick:.3f}s after it (virtual)")
        st = sim.service(svc.id).cron
        assert st is not None and st.iteration == 5 and st.skipped == 0
        assert st.next_run == T0 + first_tick + 5 * 60
        assert sim.service(svc.id).spec.mode.replicas == 0  # the user's spec is left as written


async def test_job_mode_runs_only_on_ticks_and_an_update_keeps_the_running_run() -> None:
    async with SimCluster.started(nodes=2) as sim:
        sim.behave(on_service("job", FakeBehavior(exit_code=0, run_for=15.0)))
        svc = await sim.create_service(cron_spec("@every 20s", kind="replicated-job", total=3, max_concurrent=3))
        await sim.run_for(19)
        assert sim.tasks(svc.id) == []  # a job with a schedule does not run at creation
        await sim.wait_until(lambda: len(sim.live(svc.id)) == 3)
        assert all(t.job_iteration == 1 for t in sim.live(svc.id))
        running = {t.id for t in sim.live(svc.id)}
        # `docker service update --image` while the run goes on: it is not stopped, and no run starts
        await sim.update_service(svc.id, lambda s: with_image(s, "app:2"))
        await sim.run_for(5)
        assert {t.id for t in sim.live(svc.id)} == running
        assert {t.job_iteration for t in sim.tasks(svc.id)} == {1}
        await sim.wait_until(lambda: all(t.status.state == TaskState.COMPLETE for t in sim.tasks(svc.id)))
        # the next tick runs the new spec
        await sim.wait_until(lambda: 2 in runs(sim, svc.id))
        assert {t.spec.container.image for t in runs(sim, svc.id)[2]} == {"app:2"}


async def test_on_update_restart_restarts_the_running_run() -> None:
    async with SimCluster.started(nodes=1) as sim:
        sim.behave(on_service("job", FakeBehavior(exit_code=None)))
        svc = await sim.create_service(cron_spec("@every 60s", extra={"com.shoal.cron.on-update": "restart"}))
        await sim.wait_until(lambda: len(sim.live(svc.id)) == 1)
        await sim.update_service(svc.id, lambda s: with_image(s, "app:2"))
        await sim.wait_until(lambda: sim.live(svc.id) == [])
        # the run's task was stopped and started again from the new spec
        await sim.wait_until(lambda: len(sim.live(svc.id)) == 1)
        assert [(t.job_iteration, t.spec.container.image, t.desired_state) for t in sim.tasks(svc.id)] == [
            (1, "app:1", TaskState.SHUTDOWN), (1, "app:2", TaskState.COMPLETE)]


async def test_skip_running_skips_ticks_while_a_run_goes_on() -> None:
    async with SimCluster.started(nodes=1) as sim:
        sim.behave(on_service("job", FakeBehavior(exit_code=0, run_for=25.0)))
        svc = await sim.create_service(cron_spec("@every 10s", extra={"swarm.cronjob.skip-running": "true"}))
        await sim.run_for(45)
        # run 1 at 10 s lasts until ~35 s: the ticks at 20 and 30 s are skipped, 40 s runs
        assert sorted(runs(sim, svc.id)) == [1, 2]
        st = sim.service(svc.id).cron
        assert st is not None and st.skipped == 2
        assert created_at(sim, svc.id)[2] == 40.0


async def test_concurrency_allow_and_replace() -> None:
    async with SimCluster.started(nodes=1) as sim:
        sim.behave(on_service("a", FakeBehavior(exit_code=None)))
        sim.behave(on_service("r", FakeBehavior(exit_code=None)))
        a = await sim.create_service(cron_spec("@every 10s", name="a"))
        r = await sim.create_service(cron_spec("@every 10s", name="r", extra={"com.shoal.cron.concurrency": "replace"}))
        await sim.run_for(35)
        assert len(sim.live(a.id)) == 3  # allow: runs pile up
        assert [t.job_iteration for t in sim.live(r.id)] == [3]  # replace: only the newest run goes on
        assert {t.job_iteration: t.desired_state for t in sim.tasks(r.id)} == {
            1: TaskState.SHUTDOWN, 2: TaskState.SHUTDOWN, 3: TaskState.COMPLETE}


async def test_triggers_label_force_and_api() -> None:
    async with SimCluster.started(nodes=1) as sim:
        svc = await sim.create_service(cron_spec("@yearly", extra={"com.shoal.cron.trigger": "initial"}))
        await sim.run_for(5)
        assert sim.tasks(svc.id) == []  # the trigger's value at creation is no request
        await sim.update_service(svc.id, lambda s: with_labels(s, com_shoal_cron_trigger="now-1"))
        await sim.wait_until(lambda: 1 in runs(sim, svc.id))
        await sim.update_service(svc.id, forced)  # `docker service update --force`
        await sim.wait_until(lambda: 2 in runs(sim, svc.id))
        from shoal.manager.cron.api import request_run
        await request_run(sim.manager, svc.name)
        await sim.wait_until(lambda: 3 in runs(sim, svc.id))
        st = sim.service(svc.id).cron
        assert st is not None and st.last_reason == "api" and st.iteration == 3
        await sim.run_for(60)
        assert sorted(runs(sim, svc.id)) == [1, 2, 3]  # each trigger ran once


async def _no_leader_for(sim: SimCluster, seconds: float) -> None:
    await sim.stop_leader()
    await sim.run_for(seconds)
    sim.start_leader()


async def test_missed_ticks_run_once() -> None:
    """Ticks that pass while no manager leads become one run when a leader is back (the newest tick's), for
    every policy while that tick is within the deadline; the ones before it count as skipped."""
    async with SimCluster.started(nodes=1) as sim:
        sim.behave(on_service("once", FakeBehavior(exit_code=0, run_for=1.0)))
        once = await sim.create_service(cron_spec("@every 10s", name="once"))
        late = await sim.create_service(cron_spec("@every 10s", name="late", extra={"com.shoal.cron.deadline": "15s"}))
        skip = await sim.create_service(cron_spec("@every 10s", name="skip", extra={"com.shoal.cron.missed": "skip"}))
        await sim.run_for(5)
        await _no_leader_for(sim, 61)  # no leader from 5 s to 66 s: the ticks at 10..60 s pass unseen
        await sim.run_for(1)
        for svc in (once, late, skip):
            assert sorted(runs(sim, svc.id)) == [1], svc.spec.name
            assert created_at(sim, svc.id)[1] == 66.0
            st = sim.service(svc.id).cron
            assert st is not None and (st.skipped, st.last_reason) == (5, "missed")
            assert st.next_run == T0 + 70


async def test_deadline_skips_a_too_old_tick() -> None:
    async with SimCluster.started(nodes=1) as sim:
        once = await sim.create_service(cron_spec("@every 60s", name="once"))
        late = await sim.create_service(cron_spec("@every 60s", name="late", extra={"com.shoal.cron.deadline": "20s"}))
        skip = await sim.create_service(cron_spec("@every 60s", name="skip", extra={"com.shoal.cron.missed": "skip"}))
        await sim.run_for(50)
        await _no_leader_for(sim, 25)  # the tick at 60 s is 15 s old when a leader is back at 75 s
        await sim.run_for(1)
        assert sorted(runs(sim, once.id)) == [1]  # run-once without a deadline
        assert sorted(runs(sim, late.id)) == [1]  # within its 20 s
        assert sim.tasks(skip.id) == []  # skip: past 10 s
        st = sim.service(skip.id).cron
        assert st is not None and st.skipped == 1 and "past the deadline" in st.message
        await sim.run_for(60)
        assert sorted(runs(sim, skip.id)) == [1]  # the next tick runs on time


async def test_history_limits_keep_the_newest_finished_runs() -> None:
    async with SimCluster.started(nodes=1, history_limit=100) as sim:
        def behaviour(t: Task) -> FakeBehavior | None:
            if t.service_annotations.name != "job":
                return None
            return FakeBehavior(exit_code=1 if (t.job_iteration or 0) % 2 else 0, run_for=1.0)

        sim.behave(behaviour)
        svc = await sim.create_service(cron_spec("@every 10s", extra={"com.shoal.cron.history": "2",
                                                                       "com.shoal.cron.failed-history": "1"}))
        await sim.run_for(95)  # runs 1..9; the trim happens as each run starts
        assert all(len(ts) == 1 for ts in runs(sim, svc.id).values())  # a failed run is not run again
        # run 9 (failed) is the newest; when it started: failed 7 kept, succeeded 8 and 6 kept, the rest deleted
        assert sorted(runs(sim, svc.id)) == [6, 7, 8, 9]


async def test_time_zone_label() -> None:
    async with SimCluster.started(nodes=1) as sim:
        # T0 is 22:13:20 UTC on the 14th = 07:13:20 on the 15th in Tokyo; 07:14 Tokyo is 40 s later
        svc = await sim.create_service(cron_spec("14 7 * * *", extra={"com.shoal.cron.timezone": "Asia/Tokyo"}))
        await sim.wait_until(lambda: 1 in runs(sim, svc.id))
        assert created_at(sim, svc.id)[1] == 40.0
        st = sim.service(svc.id).cron
        assert st is not None and st.next_run == T0 + 40 + 86400


async def test_exactly_one_run_per_tick_when_the_leader_dies_at_the_tick() -> None:
    """The leader is stopped around the tick (before, exactly at, just after it committed) and a new one starts
    1.5 s later (a Raft election's time): every tick runs once, never twice, never not at all."""
    for offset in (-0.5, -0.001, 0.0, 0.001, 0.2):
        async with SimCluster.started(nodes=1) as sim:
            svc = await sim.create_service(cron_spec("@every 30s"))
            tick = 30.0
            await sim.run_for(tick + offset)
            await _no_leader_for(sim, 1.5)
            await sim.run_for(tick + 29.9 - sim.now)  # up to just before the next tick
            assert sorted(runs(sim, svc.id)) == [1], f"killed at tick {offset:+}s"
            assert created_at(sim, svc.id)[1] in (tick, tick + offset + 1.5), offset
            await sim.run_for(1)
            assert sorted(runs(sim, svc.id)) == [1, 2]


async def test_a_tick_whose_entry_never_committed_runs_under_the_next_leader() -> None:
    """The leader's write of the tick is lost (its leadership ended before the entry committed): the next leader
    finds the tick not run and runs it, once."""
    async with SimCluster.started(nodes=1) as sim:
        svc = await sim.create_service(cron_spec("@every 30s"))
        proposer = sim.store._proposer
        lost: list[bytes] = []

        class LosesTheTick:
            async def propose(self, entry: bytes) -> int:
                if not lost and b'started (schedule)' in entry:
                    lost.append(entry)
                    raise Unavailable("leadership lost before the entry committed")
                return await proposer.propose(entry)

        sim.store._proposer = LosesTheTick()  # type: ignore[assignment]
        await sim.run_for(30.5)
        assert lost and sim.tasks(svc.id) == []
        st = sim.service(svc.id).cron
        assert st is not None and st.iteration == 0  # nothing of the tick was written
        await sim.restart_leader()
        await sim.wait_until(lambda: 1 in runs(sim, svc.id))
        await sim.run_for(20)
        assert sorted(runs(sim, svc.id)) == [1]


async def test_next_run_and_events_are_visible() -> None:
    async with SimCluster.started(nodes=1) as sim:
        svc = await sim.create_service(cron_spec("@every 10s"))
        events = asyncio.create_task(sim.manager.events.run())
        await sim.run_for(1)
        st = sim.service(svc.id).cron
        assert st is not None and st.next_run == T0 + 10 and iso(st.next_run) in st.message
        await sim.run_for(10)
        seen = [e for e in sim.manager.events.window if e.get("Type") == "service"
                  and e["Actor"]["Attributes"].get("cron.run")]
        assert [e["Actor"]["Attributes"]["cron.run"] for e in seen] == ["1"]
        assert seen[0]["Actor"]["Attributes"]["cron.reason"] == "schedule"
        await cancel_and_wait(events)


async def test_global_service_with_a_schedule_runs_once_per_node_each_tick() -> None:
    async with SimCluster.started(nodes=3) as sim:
        sim.behave(on_service("sweep", FakeBehavior(exit_code=0, run_for=2.0)))
        svc = await sim.create_service(cron_spec("@every 30s", name="sweep", kind="global"))
        await sim.run_for(10)
        assert sim.tasks(svc.id) == []
        await sim.run_for(21)  # the first run (at 30 s) goes on
        assert service_status(sim.view(), sim.service(svc.id))["DesiredTasks"] == 3
        await sim.run_for(5)
        assert service_status(sim.view(), sim.service(svc.id))["DesiredTasks"] == 0
        await sim.run_for(65 - sim.now)  # ticks at 30 and 60 s
        by_run = runs(sim, svc.id)
        assert sorted(by_run) == [1, 2]
        for ts in by_run.values():
            assert sorted(t.node_id for t in ts) == sorted(sim.nodes)
            assert all(t.status.state == TaskState.COMPLETE for t in ts)
