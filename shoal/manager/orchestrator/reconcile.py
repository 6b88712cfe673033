"""Reconciliation of one service's tasks, as plain functions over a write transaction.

Ownership (docs/design/task-model.md): these functions write tasks' `desired_state` and create tasks;
they never touch `status`, which belongs to the allocator, the scheduler and the agent.

A *slot* is a replica position (1..N for replicated services, a node for global ones). A slot is
occupied while it has a task whose desired state is RUNNING (COMPLETE for jobs) or READY, or when its
newest task ended by itself and must not be restarted (restart condition, max attempts): as swarmkit's
restart supervisor, such a task is set to desired SHUTDOWN all the same (`service ps` shows every task of
the slot "Shutdown"), and swarmkit's `UpdatableTasksInSlot` keeps its slot occupied, not refilled.
Replacing a task whose spec changed is the updater's job, not the reconciler's.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

from shoal.api import reasons
from shoal.ids import new_id
from shoal.manager.cron.view import job_view
from shoal.manager.orchestrator.rebalance import LABEL_MOVE, Rebalancer
from shoal.model.evolve import maker
from shoal.model.objects import (
    SECOND,
    Annotations,
    Endpoint,
    EndpointSpec,
    Meta,
    Node,
    RestartPolicy,
    Service,
    Task,
    TaskStatus,
)
from shoal.model.state import TaskState
from shoal.store.memory import Tx

DEFAULT_RESTART = RestartPolicy()
JOB_RESTART = RestartPolicy(condition="on-failure")


def runnable(t: Task) -> bool:
    """Meant to run: desired RUNNING (services), COMPLETE (jobs, as swarmkit) or READY (held)."""
    return t.desired_state <= TaskState.COMPLETE


def run_state(svc: Service) -> TaskState:
    """The desired state of a task that should run: COMPLETE for jobs (swarmkit's job orchestrators
    create their tasks so, and `service ps` shows desired "Complete"), RUNNING otherwise."""
    return TaskState.COMPLETE if svc.spec.mode.is_job else TaskState.RUNNING


def ended(t: Task) -> bool:
    return t.status.state >= TaskState.COMPLETE


def slot_key(t: Task) -> str:
    return t.node_id if t.slot == 0 else str(t.slot)


def is_dirty(svc: Service, t: Task) -> bool:
    """The task was made from a different task template than the service's current one."""
    return t.spec is not svc.spec.task_template and t.spec != svc.spec.task_template


def restart_policy(svc: Service, t: Task | None = None) -> RestartPolicy:
    """The policy of the service, or of task `t`'s own spec (swarmkit decides a restart by the task's)."""
    p = (t.spec if t is not None else svc.spec.task_template).restart_policy
    if p is not None:
        return p
    return JOB_RESTART if svc.spec.mode.is_job else DEFAULT_RESTART


def restart_window(svc: Service, t: Task, now: float) -> tuple[float, ...] | None:
    """The restart history a replacement of ended task `t` carries, or None when `t` must not be
    restarted (swarmkit's shouldRestart: the condition, then max attempts within the window)."""
    policy = restart_policy(svc, t)
    if policy.condition == "none":
        return None
    if t.status.state == TaskState.COMPLETE and (svc.spec.mode.is_job or policy.condition != "any"):
        return None
    history = t.restart_history
    window = policy.window or 0
    if window > 0:
        # The window is looked at from the moment the task ended, not from now: the decision
        # must not change when the reconciler happens to look again later (a task left failed
        # stays failed, as swarmkit decides once, at the failure).
        ended_at = min(now, max(t.status.timestamp, history[-1] if history else 0.0))
        history = tuple(h for h in history if ended_at - h < window / SECOND)
    if policy.max_attempts > 0 and len(history if window > 0 else range(t.restart_count)) \
            >= policy.max_attempts:
        return None  # max attempts reached: left failed
    return history


def finished(svc: Service, t: Task) -> bool:
    """`t` ended by itself (not stopped by the orchestrators) and was shut down without a replacement."""
    return t.desired_state == TaskState.SHUTDOWN and \
        t.status.state in (TaskState.COMPLETE, TaskState.FAILED, TaskState.REJECTED) and \
        restart_window(svc, t, t.status.timestamp) is None


def slot_holders(svc: Service, tasks: list[Task]) -> dict[str, list[Task]]:
    """The tasks holding each occupied slot (swarmkit's UpdatableTasksInSlot): those meant to run, or
    else the newest task when it finished and is not to be restarted."""
    by_slot: dict[str, list[Task]] = defaultdict(list)
    for t in tasks:
        by_slot[slot_key(t)].append(t)
    out: dict[str, list[Task]] = {}
    for key, ts in by_slot.items():
        live = [t for t in ts if runnable(t)]
        if not live:
            newest = max(ts, key=lambda t: (t.meta.created_at, t.restart_count))
            if finished(svc, newest):
                live = [newest]
        if live:
            out[key] = live
    return out


def node_eligible(node: Node) -> bool:
    return node.status.state == "ready" and node.spec.availability == "active"


# On a task started in place of one on a drained node (see `drains_start_first`): the ID of the task it replaces.
LABEL_REPLACES = "com.shoal.drain.replaces"


def drains_start_first(svc: Service) -> bool:
    """A replicated service whose update order is start-first keeps its task on a drained node running until
    the task that replaces it runs (and is healthy, which RUNNING implies) elsewhere; the others stop theirs at
    once, as Swarm does."""
    cfg = svc.spec.update_config
    return svc.spec.mode.kind == "replicated" and cfg is not None and cfg.order == "start-first"


def allocated_already(svc: Service) -> bool:
    """Is there nothing for the allocator to do for this service's new tasks? (No network, no port, and the
    service's endpoint is the final one for its spec.) Such tasks are created PENDING, ready for the scheduler:
    one Raft write fewer per task than going through the allocator, which would only change their state."""
    last = _allocated_last
    if last[0] is svc:  # asked once per task made; services are frozen, so the answer for one object holds
        return bool(last[1])
    spec = svc.spec.endpoint_spec or EndpointSpec()
    done = not svc.spec.task_template.networks and not spec.ports and svc.endpoint == Endpoint(spec=spec)
    _allocated_last[:] = [svc, done]
    return done


_allocated_last: list[object] = [None, False]  # the last service asked about, and the answer


def make_task(svc: Service, *, tid: str, slot: int, node_id: str, now: float,
              desired: TaskState = TaskState.RUNNING, start_after: float = 0.0,
              restart_count: int = 0, restart_history: tuple[float, ...] = (),
              job_iteration: int | None = None, labels: dict[str, str] | None = None,
              meta: Meta | None = None) -> Task:
    """A new task of `svc`; `meta`: the transaction's `creation_meta()`, so that creating it copies nothing."""
    if desired == TaskState.RUNNING:
        desired = run_state(svc)
    global _status_last
    ready = allocated_already(svc)
    last = _status_last
    if last is not None and last[0] == now and last[1] is ready:
        status = last[2]  # frozen: the tasks made together share it
    else:
        status = TaskStatus(timestamp=now, state=TaskState.PENDING, message="pending task scheduling") \
            if ready else TaskStatus(timestamp=now, state=TaskState.NEW, message="created")
        _status_last = (now, ready, status)
    return _new_task(
        id=tid,
        meta=meta or Meta(),
        annotations=Annotations(labels=labels or {}),
        spec=svc.spec.task_template,
        spec_version=svc.spec_version,
        service_id=svc.id,
        service_annotations=svc.spec.annotations,
        slot=slot,
        node_id=node_id,
        status=status,
        desired_state=desired,
        networks=(),
        endpoint=svc.endpoint,
        job_iteration=job_iteration,
        restart_count=restart_count,
        restart_history=restart_history,
        start_after=start_after,
    )


_new_task = maker(Task)  # every field given: what Task(...) makes, without the frozen __init__'s cost
# The status of the last task made: (timestamp, allocated already, status).
_status_last: tuple[float, bool, TaskStatus] | None = None


class Reconciler:
    """Everything the orchestrators decide, for one service at a time, inside one transaction."""

    def __init__(self, rng: random.Random, constraint_check: Callable[[Service, Node], bool]) -> None:
        self.rng = rng
        self.constraint_check = constraint_check
        # Services with a task being moved (a drain's or rebalancing's) whose replacement is on its way: the
        # orchestrator looks at them again when a task of theirs only moves forward (which it otherwise skips).
        self.waiting_on_moves: set[str] = set()
        self.rebalancer = Rebalancer(node_eligible, constraint_check)
        # (failure | restart, service ID, reason) decided in the current transaction; the caller counts them once
        # it committed (shoal.manager.stats) and clears them before the next one.
        self.events: list[tuple[str, str, str]] = []

    def new_id(self) -> str:
        return new_id(self.rng)

    # --- entry point --------------------------------------------------------------------------------

    def nodes(self, tx: Tx) -> dict[str, Node]:
        """The nodes by ID, as the reconciliation of services reads them (noted by the rebalancer): once per
        transaction for all the services it reconciles, since reconciling writes no node."""
        nodes = {n.id: n for n in tx.nodes()}
        self.rebalancer.observe_nodes(nodes, tx.now)
        return nodes

    def reconcile(self, tx: Tx, svc: Service, nodes: dict[str, Node] | None = None) -> None:
        """Reconcile one service; `nodes`: `self.nodes(tx)`, when the caller reconciles several in one go."""
        svc = job_view(svc)  # a service with a schedule runs as a job (shoal.manager.cron)
        tasks = tx.tasks(service_id=svc.id)
        if nodes is None:
            nodes = self.nodes(tx)
        # The service's tasks are read again only after a step that wrote something (a pass over a service
        # with nothing to do, the common case, reads them once here and once to trim its history).
        sp = tx.savepoint()
        self._handle_lost_nodes(tx, svc, tasks, nodes)
        if tx.savepoint() != sp:
            tasks, sp = tx.tasks(service_id=svc.id), tx.savepoint()
        self._restart_ended(tx, svc, tasks)
        if tx.savepoint() != sp:
            tasks = tx.tasks(service_id=svc.id)
        kind = svc.spec.mode.kind
        if kind == "replicated":
            self._replicated(tx, svc, tasks)
            def move(old: Task, dest: str) -> Task:
                self.events.append(("move", svc.id, "rebalance"))
                return make_task(svc, tid=self.new_id(), slot=old.slot, node_id=dest, now=tx.now,
                                 labels={LABEL_REPLACES: old.id, LABEL_MOVE: "rebalance"})

            self.rebalancer.plan(tx, svc, lambda: tx.tasks(service_id=svc.id), nodes, move, LABEL_REPLACES)
        elif kind == "global":
            self._global(tx, svc, tasks, nodes)
        elif kind == "replicated-job":
            self._replicated_job(tx, svc, tasks)
        elif kind == "global-job":
            self._global_job(tx, svc, tasks, nodes)
        self._trim_history(tx, svc)

    # --- failures and restarts ------------------------------------------------------------------------

    def _handle_lost_nodes(self, tx: Tx, svc: Service, tasks: list[Task], nodes: dict[str, Node]) -> None:
        """Tasks on a drained, down or removed node are shut down so that their slot is refilled (a lost
        node's running tasks count as failed, and a replicated service's as restarted, for node_down); with
        `drains_start_first`, a running one on a drained node only once its replacement runs."""
        self.waiting_on_moves.discard(svc.id)
        by_id = {t.id: t for t in tasks}
        # The newest task started in place of each moved one (restarts of a replacement carry the label).
        replacement: dict[str, Task] = {}
        stopped: set[str] = set()
        for r in sorted((r for r in tasks if LABEL_REPLACES in r.annotations.labels),
                        key=lambda r: (r.meta.created_at, r.restart_count)):
            replacement[r.annotations.labels[LABEL_REPLACES]] = r
        for old_id, r in replacement.items():
            old = by_id.get(old_id)
            if r.desired_state == TaskState.READY and r.start_after <= 0:
                # A stop-first move's replacement, held until the old task has stopped.
                if old is None or old.status.state >= TaskState.COMPLETE:
                    tx.update(replace(r, desired_state=run_state(svc)))
                continue
            if old is None or not runnable(old) or not runnable(r):
                continue
            if r.status.state == TaskState.RUNNING:
                tx.update(replace(old, desired_state=TaskState.SHUTDOWN))  # the move is done
                stopped.add(old.id)
            else:  # still on its way (also once the node is active again: a move that began completes)
                self.waiting_on_moves.add(svc.id)
        for t in tasks:
            if not runnable(t) or not t.node_id or t.id in stopped:
                continue
            node = nodes.get(t.node_id)
            lost = node is None or node.status.state == "down"
            drained = node is not None and node.spec.availability == "drain"
            if svc.spec.mode.is_global and node is not None and not self.constraint_check(svc, node):
                drained = True
            if lost or drained:
                if svc.spec.mode.is_job and ended(t):
                    continue  # a finished job task keeps its result
                if not lost and t.status.state == TaskState.RUNNING and drains_start_first(svc) \
                        and self._keep_until_replaced(tx, svc, t, tasks, nodes, replacement.get(t.id)):
                    continue
                tx.update(replace(t, desired_state=TaskState.SHUTDOWN))
                if lost and not ended(t):
                    self.events.append(("failure", svc.id, reasons.NODE_DOWN))
                    if not svc.spec.mode.is_global and not svc.spec.mode.is_job:
                        self.events.append(("restart", svc.id, reasons.NODE_DOWN))

    def _keep_until_replaced(self, tx: Tx, svc: Service, t: Task, tasks: list[Task], nodes: dict[str, Node],
                             r: Task | None) -> bool:
        """Whether the drained node's running task `t` stays up for now. Another task of its slot that is meant
        to run away from drained and down nodes (its replacement, or an update's start-first task) is on its way;
        `t` goes once one of them runs. With none, a replacement is made (unassigned: the scheduler puts it on an
        active node, or says in its status why it cannot), unless the last one was given up (it ended and is not
        restarted, or an update or scale-down stopped it): then `t` goes as any drained task does."""
        def away(o: Task) -> bool:
            n = nodes.get(o.node_id) if o.node_id else None
            return not o.node_id or (n is not None and node_eligible(n))

        others = [o for o in tasks if o.id != t.id and o.slot == t.slot and runnable(o) and away(o)]
        if any(o.status.state == TaskState.RUNNING for o in others):
            return False
        if not others:
            if r is not None and not runnable(r):
                return False
            tx.create(make_task(svc, tid=self.new_id(), slot=t.slot, node_id="", now=tx.now,
                                labels={LABEL_REPLACES: t.id, LABEL_MOVE: "drain"}))
            self.events.append(("move", svc.id, "drain"))
        self.waiting_on_moves.add(svc.id)
        return True

    def _restart_ended(self, tx: Tx, svc: Service, tasks: list[Task]) -> None:
        now = tx.now
        for t in tasks:
            if not runnable(t) or not ended(t) or t.status.state == TaskState.REMOVE:
                continue
            if svc.spec.mode.is_job and t.status.state == TaskState.COMPLETE:
                continue  # done: a job's completed task keeps its desired state (swarmkit's job reconciler)
            if t.desired_state == TaskState.READY and t.start_after > now:
                # A replacement that failed while held in its restart delay (its prepare failed, e.g. no
                # such image) is restarted once the delay is over, not at once: otherwise a task that
                # can never be prepared is replaced in a tight loop with no delay at all.
                continue
            # As swarmkit's Supervisor.Restart: the ended task is shut down whether or not it is replaced.
            tx.update(replace(t, desired_state=TaskState.SHUTDOWN))
            why = reasons.end_reason(t)
            if why not in (reasons.COMPLETED, reasons.SHUTDOWN):
                self.events.append(("failure", svc.id, why))
            history = restart_window(svc, t, now)
            if history is None:
                continue  # not restarted: its slot stays occupied by it (see slot_holders)
            self.events.append(("restart", svc.id, why))
            policy = restart_policy(svc, t)
            # The replacement always gets the current spec, even while an update is paused.
            delay = policy.delay_or_default / SECOND
            moved = {k: v for k, v in t.annotations.labels.items() if k in (LABEL_REPLACES, LABEL_MOVE)}
            tx.create(make_task(
                svc, tid=self.new_id(), slot=t.slot, node_id=t.node_id if t.slot == 0 else "",
                now=now, desired=TaskState.READY if delay > 0 else TaskState.RUNNING,
                start_after=now + delay if delay > 0 else 0.0,
                restart_count=t.restart_count + 1, restart_history=(*history, now),
                job_iteration=t.job_iteration, labels=moved or None))

    def start_due(self, tx: Tx, now: float) -> float | None:
        """Start tasks whose restart delay has passed; return when the next one is due."""
        nxt: float | None = None
        for t in tx.tasks():
            if t.desired_state != TaskState.READY or t.start_after <= 0:
                continue
            if t.start_after <= now:
                svc = tx.service(t.service_id)
                state = run_state(job_view(svc)) if svc is not None else TaskState.RUNNING
                tx.update(replace(t, desired_state=state, start_after=0.0))
            elif nxt is None or t.start_after < nxt:
                nxt = t.start_after
        return nxt

    # --- replicated ---------------------------------------------------------------------------------

    def _replicated(self, tx: Tx, svc: Service, tasks: list[Task]) -> None:
        want = svc.spec.mode.replicas
        occupied: dict[int, list[Task]] = {ts[0].slot: ts for ts in slot_holders(svc, tasks).values()}
        if len(occupied) > want:
            # Scale down: drop slots whose tasks are not running first, then the highest numbers
            # (keep = running first, then the lowest slot numbers, so `service ps` stays 1..N).
            def keep_score(slot: int) -> tuple[int, int]:
                running = any(t.status.state == TaskState.RUNNING for t in occupied[slot])
                return (0 if running else 1, slot)

            ranked = sorted(occupied, key=keep_score)
            for slot in ranked[want:]:
                for t in occupied.pop(slot):
                    # As swarmkit: REMOVE, so the agent shuts the task down and removes its container, and
                    # the task reaper deletes the task (it leaves `service ps`).
                    tx.update(replace(t, desired_state=TaskState.REMOVE))
        slot = 1
        while len(occupied) < want:
            if slot not in occupied:
                occupied[slot] = [tx.create(make_task(svc, tid=self.new_id(), slot=slot, node_id="",
                                                      now=tx.now, meta=tx.creation_meta()))]
            slot += 1

    # --- global -------------------------------------------------------------------------------------

    def _global(self, tx: Tx, svc: Service, tasks: list[Task], nodes: dict[str, Node]) -> None:
        by_node = slot_holders(svc, tasks)
        for node in nodes.values():
            if node.id in by_node or not node_eligible(node) or not self.constraint_check(svc, node):
                continue
            tx.create(make_task(svc, tid=self.new_id(), slot=0, node_id=node.id, now=tx.now,
                                meta=tx.creation_meta()))

    # --- jobs ---------------------------------------------------------------------------------------

    def _job_iteration(self, svc: Service) -> int:
        return svc.job_status.job_iteration if svc.job_status is not None else 0

    def _replicated_job(self, tx: Tx, svc: Service, tasks: list[Task]) -> None:
        it = self._job_iteration(svc)
        mine = [t for t in tasks if (t.job_iteration or 0) == it]
        completed = sum(1 for t in mine if t.status.state == TaskState.COMPLETE)
        if svc.cron is not None:  # a cron run (shoal.manager.cron) does not retry a task that failed for good
            completed += sum(1 for t in mine if t.status.state != TaskState.COMPLETE and finished(svc, t))
        active = [t for t in mine if runnable(t) and not ended(t)]
        total = svc.spec.mode.total_completions
        room = min(svc.spec.mode.max_concurrent - len(active), total - completed - len(active))
        used_slots = {t.slot for t in mine}
        slot = 0  # swarmkit numbers a replicated job's slots from 0 (dockerd shows the first one as name.<node>)
        while room > 0:
            while slot in used_slots:
                slot += 1
            used_slots.add(slot)
            tx.create(make_task(svc, tid=self.new_id(), slot=slot, node_id="", now=tx.now, job_iteration=it))
            room -= 1

    def _global_job(self, tx: Tx, svc: Service, tasks: list[Task], nodes: dict[str, Node]) -> None:
        it = self._job_iteration(svc)
        mine = [t for t in tasks if (t.job_iteration or 0) == it]
        done_nodes = {t.node_id for t in mine if t.status.state == TaskState.COMPLETE} | \
            set(slot_holders(svc, mine))
        for node in nodes.values():
            if node.id in done_nodes or not node_eligible(node) or not self.constraint_check(svc, node):
                continue
            tx.create(make_task(svc, tid=self.new_id(), slot=0, node_id=node.id, now=tx.now,
                                job_iteration=it))

    # --- history ------------------------------------------------------------------------------------

    def _trim_history(self, tx: Tx, svc: Service) -> None:
        """Keep at most `limit` tasks per slot, the live ones included (swarmkit's task reaper: with the
        default 5, `service ps` shows the running task and 4 before it). Only dead tasks go, oldest first;
        a negative limit keeps everything."""
        cluster = tx.cluster()
        limit = cluster.spec.task_history_retention_limit if cluster is not None else 5
        if limit < 0:
            return
        tasks = tx.tasks(service_id=svc.id)
        by_slot: dict[str, list[Task]] = defaultdict(list)
        for t in tasks:
            by_slot[slot_key(t)].append(t)
        full = [ts for ts in by_slot.values() if len(ts) > limit]
        if not full:
            return
        holders = {t.id for ts in slot_holders(svc, tasks).values() for t in ts}
        for slot_tasks in full:
            dead = [t for t in slot_tasks if not runnable(t) and t.id not in holders and
                    (ended(t) or not t.node_id)]
            dead.sort(key=lambda t: (t.meta.created_at, t.meta.version))
            for t in dead[: len(slot_tasks) - limit]:
                tx.delete("task", t.id)


def reap_removed(tx: Tx) -> None:
    """Delete tasks whose desired state is REMOVE (their service was removed, or scaled down) once they
    have stopped (or never reached a node); the agent then removes their containers."""
    for t in tx.tasks():
        if t.desired_state >= TaskState.REMOVE and (ended(t) or not t.node_id):
            tx.delete("task", t.id)
