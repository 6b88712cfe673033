"""Autoscaling under virtual time: a CPU-burning service scales up to its max under load and back to its min
after, by Kubernetes' HPA rule, with the down window holding the scale-down; each decision is written with its
inputs; a manual scale outside min..max is clamped."""

from __future__ import annotations

from dataclasses import replace

from shoal.manager.autoscale import LABEL_DECISION, PERIOD, policy_of, recommend
from shoal.model.objects import Annotations, ResourceRequirements, Resources, Service, ServiceSpec
from shoal.testing.fakeexec import FakeBehavior
from shoal.testing.sim import SimCluster, service_spec, with_replicas

CORE = 10**9


def autoscaled(spec: ServiceSpec, **labels: str) -> ServiceSpec:
    tmpl = replace(spec.task_template, resources=ResourceRequirements(reservations=Resources(nano_cpus=CORE)))
    own = {f"com.shoal.autoscale.{k.replace('_', '-')}": v for k, v in labels.items()}
    return replace(spec, task_template=tmpl, annotations=Annotations(name=spec.annotations.name, labels=own))


def replicas(sim: SimCluster, sid: str) -> int:
    return sim.service(sid).spec.mode.replicas


def decisions(sim: SimCluster, sid: str) -> list[tuple[int, str]]:
    """(replicas, decision label) of each version of the service the autoscaler wrote."""
    out: list[tuple[int, str]] = []
    for c in sim.log:
        if c.kind == "service" and isinstance(c.obj, Service) and c.obj.id == sid:
            d = c.obj.spec.annotations.labels.get(LABEL_DECISION)
            if d is not None and (not out or out[-1][1] != d):
                out.append((c.obj.spec.mode.replicas, d))
    return out


def test_the_hpa_rule() -> None:
    assert recommend(2, 100.0, 50.0) == 4
    assert recommend(4, 54.0, 50.0) == 4  # within the 10 % tolerance
    assert recommend(4, 25.0, 50.0) == 2
    assert recommend(3, 70.0, 50.0) == 5  # ceil(4.2)


async def test_a_cpu_burning_service_scales_to_max_under_load_and_back_to_min() -> None:
    async with SimCluster.started(nodes=3) as sim:
        demand = [3.0]  # cores of work the service's clients bring, shared by its running replicas
        sid = ""

        def share() -> float:
            return min(1.0, demand[0] / max(1, len(sim.running(sid))))

        sim.behave(lambda t: FakeBehavior(exit_code=None, cpu_load=share))
        svc = await sim.create_service(autoscaled(service_spec(replicas=1), min="1", max="5", cpu="50",
                                                  down_window="2m"))
        sid = svc.id
        t0 = sim.now
        up = await sim.wait_until(lambda: replicas(sim, sid) == 5 and sim.converged(sid, 5), 600) - t0
        demand[0] = 0.0
        t1 = sim.now
        down = await sim.wait_until(lambda: replicas(sim, sid) == 1 and sim.converged(sid, 1), 900) - t1
        assert down >= 120.0  # held by the down window
        steps = decisions(sim, sid)
        assert [r for r, _ in steps][-1] == 1 and max(r for r, _ in steps) == 5
        assert all("cpu" in why and "target" in why for _r, why in steps), steps
        counted = sim.manager.stats.autoscaled  # shoal_autoscale_decisions_total
        assert (counted[(sid, "up")], counted[(sid, "down")]) == (len(steps) - 1, 1)
        assert up < 600 and down < 900
        print(f"autoscale: 1 -> 5 in {up:.0f} s of virtual time, 5 -> 1 in {down:.0f} s; steps "
              f"{[r for r, _ in steps]}")


async def test_a_manual_scale_outside_the_bounds_is_clamped_with_the_reason() -> None:
    async with SimCluster.started(nodes=2) as sim:
        sim.behave(lambda t: FakeBehavior(exit_code=None, cpus=0.5))  # on target: nothing to change
        svc = await sim.create_service(autoscaled(service_spec(replicas=2), min="2", max="4", cpu="50"))
        await sim.wait_until(lambda: sim.converged(svc.id, 2))
        await sim.update_service(svc.id, lambda s: with_replicas(s, 3))  # inside: stands
        await sim.run_for(4 * PERIOD)
        assert replicas(sim, svc.id) == 3
        await sim.update_service(svc.id, lambda s: with_replicas(s, 9))  # outside: clamped
        await sim.wait_until(lambda: replicas(sim, svc.id) == 4, 2 * PERIOD + 1)
        assert "outside 2..4" in sim.service(svc.id).spec.annotations.labels[LABEL_DECISION]


def test_labels_that_make_no_policy_turn_it_off_with_the_reason() -> None:
    import pytest

    from shoal.manager.autoscale import BadLabels

    def svc(**labels: str) -> Service:
        return Service(id="s", spec=autoscaled(service_spec(), **labels))

    assert policy_of(Service(id="s", spec=service_spec())) is None
    for labels, why in (({"min": "1", "cpu": "50"}, "max is required"), ({"max": "3"}, "cpu or"),
                        ({"max": "1", "min": "2", "cpu": "50"}, "below"), ({"max": "3", "cpu": "lots"}, "percentage"),
                        ({"max": "3", "cpu": "50", "down_window": "soon"}, "duration")):
        with pytest.raises(BadLabels, match=why):
            policy_of(svc(**labels))
