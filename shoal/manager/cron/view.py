"""A scheduled service as the orchestrators run it: a job whose iterations are the cron loop's runs.

A service with `swarm.cronjob.enable=true` keeps the spec its user wrote (a `replicated` service with
`replicas: 0` and `restart_policy: none`, as swarm-cronjob wants it, or a `replicated-job` / `global-job`), and the
reconciler sees it through `job_view`: a replicated job of `swarm.cronjob.replicas` tasks (or the job's own
counts), a global job for a global service, at the iteration the cron loop last started. Before its first run it
is a job with nothing to complete, so creating or updating the service never runs it: only a tick or a trigger does.
An update of the spec does not start a new iteration, and jobs are never rolled by the updater, so a run in
progress is not stopped by an update of its service.
"""

from __future__ import annotations

from dataclasses import replace

from shoal.manager.cron.config import cron_config_cached
from shoal.model.objects import GLOBAL_JOB, REPLICATED, REPLICATED_JOB, JobStatus, Service, ServiceMode


def job_view(svc: Service) -> Service:
    """`svc` itself, or for a service with a schedule, the job the orchestrators run in its place."""
    cfg = cron_config_cached(svc.spec)
    if cfg is None:
        return svc
    st = svc.cron
    iteration = st.iteration if st is not None else 0
    mode = svc.spec.mode
    if iteration == 0:
        view_mode = ServiceMode(kind=REPLICATED_JOB, replicas=0, max_concurrent=1, total_completions=0)
    elif mode.is_global:
        view_mode = ServiceMode(kind=GLOBAL_JOB)
    elif mode.kind == REPLICATED:
        n = cfg.replicas or 0
        view_mode = ServiceMode(kind=REPLICATED_JOB, replicas=n, max_concurrent=max(n, 1), total_completions=n)
    else:
        view_mode = mode
    return replace(svc, spec=replace(svc.spec, mode=view_mode),
                   job_status=JobStatus(job_iteration=iteration, last_execution=st.last_run if st else 0.0))
