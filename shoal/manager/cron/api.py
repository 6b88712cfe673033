"""What the Engine API's `/_shoal/cron` endpoints ask of the manager: the schedules, and a run now."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shoal.api.messages import INVALID_ARGUMENT, rpc
from shoal.errors import InvalidArgument
from shoal.manager.cron.config import cron_config_cached
from shoal.manager.cron.loop import active, iso
from shoal.manager.manager import Manager
from shoal.model.objects import CronStatus, Service
from shoal.store.memory import ReadTx, Tx


def describe(v: ReadTx, svc: Service) -> dict[str, Any]:
    """One scheduled service as `GET /_shoal/cron` shows it."""
    cfg = cron_config_cached(svc.spec)
    st = svc.cron or CronStatus()
    labels = svc.spec.annotations.labels
    tasks = v.tasks(service_id=svc.id)
    return {
        "ID": svc.id,
        "Name": svc.name,
        "Schedule": labels.get("swarm.cronjob.schedule", ""),
        "TimeZone": labels.get("com.shoal.cron.timezone", "") or "UTC",
        "Concurrency": cfg.concurrency if cfg is not None else "",
        "Since": iso(st.since) if st.since else None,
        "NextRun": iso(st.next_run) if st.next_run else None,
        "LastTick": iso(st.last_tick) if st.iteration or st.skipped else None,
        "LastRun": iso(st.last_run) if st.last_run else None,
        "LastReason": st.last_reason,
        "Runs": st.iteration,
        "Skipped": st.skipped,
        "Running": sum(1 for t in tasks if active(t)),
        "Message": st.message,
    }


def schedules(v: ReadTx) -> list[dict[str, Any]]:
    scheduled = [s for s in v.services() if cron_config_cached(s.spec) is not None]
    return [describe(v, s) for s in sorted(scheduled, key=lambda s: s.name)]


async def request_run(manager: Manager, ref: str) -> dict[str, Any]:
    """Ask the leader's cron loop for a run of service `ref` now (the request is replicated; the loop starts it
    under the service's concurrency policy). NotFound as for any service; 400 for one without a schedule."""

    def fn(tx: Tx) -> Service:
        svc = manager.controlapi.get_service(ref, tx)
        if cron_config_cached(svc.spec) is None:
            raise InvalidArgument(rpc(INVALID_ARGUMENT, f"service {svc.name} has no schedule "
                                                        f"(label swarm.cronjob.enable=true)"))
        st = svc.cron or CronStatus()
        return tx.update(replace(svc, cron=replace(st, requested=st.requested + 1)))

    svc = await manager.store.update(fn)
    return describe(manager.store.view(), svc)
