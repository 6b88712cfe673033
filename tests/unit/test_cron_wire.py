"""The cron labels Shoal shows in `docker service inspect` (never stored), and its cron events' attributes."""

from __future__ import annotations

from dataclasses import replace

from shoal.engineapi.convert.service import service_spec_from_wire, service_to_wire
from shoal.manager.cron.loop import cron_attrs
from shoal.model.objects import Annotations, CronStatus, Service, ServiceSpec

LABELS = {"swarm.cronjob.enable": "true", "swarm.cronjob.schedule": "@hourly"}


def test_next_and_last_run_are_shown_and_not_stored_back() -> None:
    svc = Service(id="s1", spec=ServiceSpec(annotations=Annotations(name="job", labels=LABELS)),
                  cron=CronStatus(next_run=1_700_003_600.0, last_run=1_700_000_000.5, iteration=1))
    wire = service_to_wire(svc)
    labels = wire["Spec"]["Labels"]
    assert labels["com.shoal.cron.next-run"] == "2023-11-14T23:13:20Z"
    assert labels["com.shoal.cron.last-run"] == "2023-11-14T22:13:20.5Z"
    back = service_spec_from_wire(wire["Spec"])
    assert dict(back.annotations.labels) == LABELS
    # a service whose schedule was turned off shows none
    off = replace(svc, spec=ServiceSpec(annotations=Annotations(name="job", labels={})))
    assert service_to_wire(off)["Spec"]["Labels"] == {}


def test_event_attributes_of_a_run_and_a_skip() -> None:
    st = CronStatus(iteration=1, next_run=1_700_000_000.0)
    before = Service(id="s1", cron=st)
    ran = replace(before, cron=replace(st, iteration=2, last_reason="trigger"))
    assert cron_attrs(before, ran) == {"cron.run": "2", "cron.reason": "trigger",
                                       "cron.next": "2023-11-14T22:13:20.000Z"}
    assert cron_attrs(before, replace(before, cron=replace(st, skipped=1)))["cron.skipped"] == "1"
    assert cron_attrs(before, replace(before, cron=replace(st, message="x"))) == {}
