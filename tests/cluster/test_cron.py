"""Cron jobs end to end: `docker stack deploy` of a stack file with swarm-cronjob's labels, and `docker service
create --mode replicated-job --label ...`, on a real `shoal daemon` with the process executor, through the stock
CLI; how long after its tick each run's process starts is measured and printed (never asserted)."""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until
from tests.support.workers import Cluster

pytestmark = pytest.mark.timeout(240)

STACK = """\
version: "3.8"
services:
  tick:
    image: busybox
    command: ["sh", "-c", "date +%s.%N >> {out}"]
    deploy:
      mode: replicated
      replicas: 0
      restart_policy:
        condition: none
      labels:
        - "swarm.cronjob.enable=true"
        - "swarm.cronjob.schedule=*/2 * * * * *"
        - "swarm.cronjob.skip-running=true"
        - "swarm.cronjob.replicas=1"
"""


def inspect(node: ShoalNode, name: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = json.loads(node.docker("service", "inspect", name).stdout)
    return out[0]


def epoch(ts: str) -> float:
    """An RFC 3339 time in UTC (Go's, to the nanosecond, or /_shoal/cron's, to the millisecond) -> epoch seconds."""
    head, _, frac = ts.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


def cron_entry(node: ShoalNode, name: str) -> dict[str, Any]:
    status, body = node.api("GET", "/_shoal/cron")
    assert status == 200, body
    (entry,) = [e for e in body if e["Name"] == name]
    return dict(entry)


def settled(node: ShoalNode, name: str, starts: Callable[[], list[float]]) -> tuple[dict[str, Any], int]:
    """The service's schedule and how many runs' processes started, read at a moment no run goes on (so each run
    the store counts has written its line)."""
    def quiet() -> tuple[dict[str, Any], int] | None:
        e = cron_entry(node, name)
        n = len(starts())
        return (e, n) if e["Running"] == 0 and n == e["Runs"] == cron_entry(node, name)["Runs"] else None

    found = wait_until(quiet, 30, what=f"a moment between two runs of {name}")
    assert found is not None
    return found


def ticks_handled(period: int, entry: dict[str, Any]) -> int:
    """How many ticks of a `*/period` seconds schedule fell after the moment it counts from (`Since`: when it was
    written), up to the newest one the store says was handled."""
    first = (int(epoch(entry["Since"])) // period + 1) * period
    return round((epoch(entry["LastTick"]) - first) / period) + 1


def test_stack_with_swarm_cronjob_labels_runs_on_schedule(shoal_node: ShoalNode) -> None:
    node = shoal_node
    out = node.workdir / "starts.txt"
    (node.workdir / "cron.yml").write_text(STACK.format(out=out))
    node.docker("stack", "deploy", "--detach=true", "-c", "cron.yml", "cj")

    def starts() -> list[float]:
        return [float(x) for x in out.read_text().split()] if out.exists() else []

    wait_until(lambda: len(starts()) >= 6, 60, what="six runs of the */2 s schedule")
    # Each tick since the schedule was written was handled once (run, or skipped while the previous run went on),
    # and each run's process ran once: counted in the store and in the file, no time compared.
    entry, lines = settled(node, "cj_tick", starts)
    assert entry["Runs"] + entry["Skipped"] == ticks_handled(2, entry), entry
    assert lines == entry["Runs"]
    # measured, not asserted: each run's process started this long after its tick (ticks are the even seconds)
    delays = [s - (int(s) - int(s) % 2) for s in starts()]
    print(f"\ncron run start after its tick, {len(delays)} runs (s): min {min(delays):.3f} "
          f"median {statistics.median(delays):.3f} max {max(delays):.3f}")

    svc = inspect(node, "cj_tick")
    labels = svc["Spec"]["Labels"]
    assert "com.shoal.cron.next-run" in labels and "com.shoal.cron.last-run" in labels
    assert svc["Spec"]["Mode"] == {"Replicated": {"Replicas": 0}}

    entry = cron_entry(node, "cj_tick")
    assert entry["Schedule"] == "*/2 * * * * *" and entry["Runs"] >= 6 and entry["NextRun"]
    m = re.search(r"([0-9.]+)s after its tick", entry["Message"])
    assert m is not None, entry["Message"]
    print(f"the newest run was written to the store {float(m.group(1)):.3f}s after its tick")

    # a redeploy of the same file (replicas: 0 again) leaves the schedule running and its state in place
    runs_before = entry["Runs"]
    node.docker("stack", "deploy", "--detach=true", "-c", "cron.yml", "cj")
    wait_until(lambda: len(starts()) >= runs_before + 2, 30, what="runs after the redeploy")
    node.docker("stack", "rm", "cj")


def test_service_create_replicated_job_with_labels_trigger_and_events(shoal_node: ShoalNode) -> None:
    node = shoal_node
    out = node.workdir / "job.txt"
    since = str(int(time.time()) - 1)
    node.docker("service", "create", "--detach", "--name", "nightly", "--mode", "replicated-job",
                "--label", "swarm.cronjob.enable=true", "--label", "swarm.cronjob.schedule=0 3 * * *",
                "--label", "com.shoal.cron.timezone=Europe/Berlin",
                "busybox", "sh", "-c", f"echo ran >> {out}")
    # 03:00 Berlin is far away: nothing runs at creation, the next run is shown
    wait_until(lambda: "com.shoal.cron.next-run" in inspect(node, "nightly")["Spec"]["Labels"],
               20, what="the next-run label")
    nxt = inspect(node, "nightly")["Spec"]["Labels"]["com.shoal.cron.next-run"]
    assert nxt.endswith(("T01:00:00Z", "T02:00:00Z")), nxt  # 03:00 in Berlin, CET or CEST
    assert not Path(out).exists()

    # run now: through the API, then with `docker service update --force`, then with the trigger label
    status, body = node.api("POST", "/_shoal/cron/nightly/run")
    assert status == 202, body
    wait_until(lambda: Path(out).exists() and Path(out).read_text().count("ran") == 1, 30, what="the API run")
    node.docker("service", "update", "--detach", "--force", "nightly")
    wait_until(lambda: Path(out).read_text().count("ran") == 2, 30, what="the --force run")
    node.docker("service", "update", "--detach", "--label-add", "com.shoal.cron.trigger=1", "nightly")
    wait_until(lambda: Path(out).read_text().count("ran") == 3, 30, what="the label run")
    # the shown labels are not stored back by the update
    status, raw = node.api("GET", "/_shoal/cron")
    assert [e["Runs"] for e in raw if e["Name"] == "nightly"] == [3]

    ev = node.docker("events", "--since", since, "--until", str(int(time.time()) + 1), "--filter", "type=service",
                     "--format", "{{json .Actor.Attributes}}").stdout.splitlines()
    runs = [json.loads(line).get("cron.run") for line in ev]
    assert [r for r in runs if r] == ["1", "2", "3"], ev

    # bad input: dockerd's 400 shape, and nothing created
    cp = node.docker("service", "create", "--detach", "--name", "bad", "--label", "swarm.cronjob.enable=true",
                     "--label", "swarm.cronjob.schedule=61 * * * *", "busybox", "true", check=False)
    assert cp.returncode != 0 and "invalid label swarm.cronjob.schedule" in cp.stderr, cp.stderr
    status, body = node.api("POST", "/_shoal/cron/nosuch/run")
    assert status == 404, body


def test_exactly_one_run_per_tick_when_the_leader_is_killed_at_a_tick(tmp_path: Path) -> None:
    """Three managers; the leader is killed (kill -9) at a tick of a `*/10 s` schedule (a run late by an election
    still starts before the next tick): every tick from the first run to the last runs exactly once, the one at
    the kill under whichever leader recorded it."""
    from tests.support.managers import ManagerCluster

    with ManagerCluster(tmp_path, 3) as mc:
        leader = mc.leader()
        out = tmp_path / "starts.txt"
        # the runs stay off the node that will be killed, so a task is never left on a dead node
        leader.docker("service", "create", "--detach", "--name", "fo", "--replicas", "0",
                      "--restart-condition", "none", "--constraint", f"node.hostname!={leader.hostname}",
                      "--label", "swarm.cronjob.enable=true", "--label", "swarm.cronjob.schedule=*/10 * * * * *",
                      "busybox", "sh", "-c", f"date +%s.%N >> {out}")

        def starts() -> list[float]:
            return [float(x) for x in out.read_text().split()] if out.exists() else []

        wait_until(lambda: len(starts()) >= 2, 40, what="two runs before the kill")
        tick = (int(time.time()) // 10 + 1) * 10
        time.sleep(max(0.0, tick - time.time()))  # the fault is timed to the tick (this is the test's action)
        leader.kill9()
        survivors = [n for n in mc.nodes if n is not leader]
        new = mc.leader(among=survivors)
        wait_until(lambda: any(s > tick + 21 for s in starts()), 40, what="runs after the failover")
        # Every tick since the schedule was written ran once, the one at the kill included: none lost, none run
        # twice (the store's count of runs against the ticks it handled, and the processes that ran), no time
        # compared.
        entry, lines = settled(new, "fo", starts)
        assert entry["Skipped"] == 0 and epoch(entry["LastTick"]) > tick, entry
        assert entry["Runs"] == ticks_handled(10, entry), entry
        assert lines == entry["Runs"]
        got = starts()
        ticks = [int(s) - int(s) % 10 for s in got]  # measured, not asserted
        print(f"\nfailover: ticks {[t - ticks[0] for t in ticks]}, delays "
              f"{[round(s - t, 3) for s, t in zip(got, ticks, strict=True)]}; new leader {new.hostname}")


MULTI_STACK = """\
version: "3.8"
services:
  pair:
    image: busybox
    command: ["true"]
    deploy:
      replicas: 0
      restart_policy:
        condition: none
      placement:
        max_replicas_per_node: 1
      labels:
        - "swarm.cronjob.enable=true"
        - "swarm.cronjob.schedule=*/3 * * * * *"
        - "swarm.cronjob.replicas=2"
  sweep:
    image: busybox
    command: ["true"]
    deploy:
      mode: global
      restart_policy:
        condition: none
      labels:
        - "swarm.cronjob.enable=true"
        - "swarm.cronjob.schedule=*/3 * * * * *"
"""


def test_cron_runs_on_workers_replicated_and_global(cluster: Cluster) -> None:
    """A drained manager and two workers: each tick runs `swarm.cronjob.replicas` tasks of a replicated service
    (one per worker with max_replicas_per_node 1) and one task of a global service on every worker."""
    cluster.add_worker("w1")
    cluster.add_worker("w2")
    workers = {cluster.node_id("w1"), cluster.node_id("w2")}
    mgr = cluster.manager
    (mgr.workdir / "multi.yml").write_text(MULTI_STACK)
    mgr.docker("stack", "deploy", "--detach=true", "-c", "multi.yml", "m")

    def finished_runs(service: str) -> dict[int, list[dict[str, object]]]:
        out: dict[int, list[dict[str, object]]] = {}
        for t in cluster.tasks(service):
            it = int(t.get("JobIteration", {}).get("Index", 0))
            out.setdefault(it, []).append(t)
        return {it: ts for it, ts in out.items()
                if all(t["Status"]["State"] == "complete" for t in ts)}

    wait_until(lambda: len(finished_runs("m_pair")) >= 3 and len(finished_runs("m_sweep")) >= 3, 60,
               what="three finished runs of each")
    for service in ("m_pair", "m_sweep"):
        for it, ts in finished_runs(service).items():
            assert {t["NodeID"] for t in ts} == workers and len(ts) == 2, (service, it, ts)
    ls = mgr.docker("service", "ls", "--format", "{{.Name}} {{.Mode}}").stdout.split("\n")
    assert "m_pair replicated" in ls and "m_sweep global" in ls, ls


def test_an_update_of_the_service_leaves_a_running_run_alone(shoal_node: ShoalNode) -> None:
    """swarm-cronjob#270: `docker service update` (and a redeploy) while a run goes on must not kill it."""
    node = shoal_node
    out = node.workdir / "long.txt"
    node.docker("service", "create", "--detach", "--name", "long", "--replicas", "0", "--restart-condition", "none",
                "--label", "swarm.cronjob.enable=true", "--label", "swarm.cronjob.schedule=@yearly",
                "busybox", "sh", "-c", f"sleep 4; echo done >> {out}")
    status, body = node.api("POST", "/_shoal/cron/long/run")
    assert status == 202, body

    sid = inspect(node, "long")["ID"]

    def tasks_of_long() -> list[dict[str, Any]]:
        status, body = node.api("GET", "/v1.41/tasks")
        assert status == 200, body
        return [t for t in body if t["ServiceID"] == sid]

    def run_task() -> dict[str, Any] | None:
        mine = tasks_of_long()
        return mine[0] if len(mine) == 1 and mine[0]["Status"]["State"] == "running" else None

    task = wait_until(run_task, 20, what="the run's task running")
    node.docker("service", "update", "--detach", "--env-add", "CHANGED=1", "long")
    wait_until(lambda: Path(out).exists() and Path(out).read_text() == "done\n", 20, what="the run to finish")
    # the same task, neither replaced nor followed by another, ends by itself
    wait_until(lambda: [(t["ID"], t["Status"]["State"]) for t in tasks_of_long()] == [(task["ID"], "complete")],
               20, what="the run's one task complete")
    status, raw = node.api("GET", "/_shoal/cron")
    assert [e["Runs"] for e in raw if e["Name"] == "long"] == [1]
