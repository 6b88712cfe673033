"""What a service's tasks add up to, as `docker service ls` shows it (the Engine API and the metrics both count
with this)."""

from __future__ import annotations

from shoal.manager.cron.view import job_view
from shoal.model.objects import Service
from shoal.model.state import TaskState
from shoal.store.memory import ReadTx


def service_status(v: ReadTx, svc: Service, live_nodes: set[str] | None = None) -> dict[str, int]:
    """ServiceStatus as swarmkit's ListServiceStatuses computes it: for jobs only the current iteration's
    tasks count, DesiredTasks is MaxConcurrent for a replicated job (so a finished job with 5 completions
    and max concurrent 2 lists as `0/2 (5/5 completed)`, as on dockerd), and for global jobs the tasks
    meant to complete that have not yet. `live_nodes`: the IDs of the nodes not down, when the caller has them."""
    if live_nodes is None:
        live_nodes = {n.id for n in v.nodes() if n.status.state != "down"}
    mode = svc.spec.mode
    running = desired = completed = 0
    view = job_view(svc)  # a service with a schedule counts its cron run's tasks
    iteration = view.job_status.job_iteration if view.job_status is not None else 0
    # A `replicated` service with a schedule (swarm-cronjob's `replicas: 0`) wants the tasks of the run going on.
    cron_run = view is not svc and mode.kind == "replicated"
    cron_global = view is not svc and mode.kind == "global"  # as a global job: the run's unfinished tasks
    run_tasks = 0
    for t in v.tasks(service_id=svc.id):
        if cron_run and (t.job_iteration or 0) == iteration and t.desired_state <= TaskState.COMPLETE \
                and t.status.state < TaskState.COMPLETE:
            run_tasks += 1
        if mode.is_job:
            if (t.job_iteration or 0) != iteration:
                continue
            if t.status.state == TaskState.COMPLETE:
                completed += 1
        if t.status.state == TaskState.RUNNING and (mode.is_job or t.node_id in live_nodes):
            running += 1
        if mode.kind == "global" and not cron_global and t.desired_state == TaskState.RUNNING \
                and t.node_id in live_nodes:
            desired += 1
        if (mode.kind == "global-job" or cron_global) and t.desired_state == TaskState.COMPLETE \
                and t.status.state != TaskState.COMPLETE:
            desired += 1
    if mode.kind == "replicated":
        desired = run_tasks if cron_run else mode.replicas
    elif mode.kind == "replicated-job":
        desired = mode.max_concurrent
    return {"RunningTasks": running, "DesiredTasks": desired, "CompletedTasks": completed}
