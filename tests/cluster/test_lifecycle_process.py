"""Service lifecycle end to end with the stock `docker` CLI against `shoal daemon --executor process`:
rolling updates (pause, failure ratio), restart policy, health commands, logs options and events, and kill -9 of
the daemon in the middle of an update or a rollback. The scenarios both executors share (start-first with
parallelism and delay, automatic rollback, a replicated job, `service logs -f`) are
tests/cluster/test_lifecycle_executors.py.

Everything is observed from outside, through the Engine API and the CLI, as a user would.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.test_cli_process import create, go_time, inspect, running, tasks, wait_running
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(180)

SLEEP = ("sleep", "600")


def update_state(node: ShoalNode, name: str) -> tuple[str, str]:
    st = inspect(node, "service", name).get("UpdateStatus") or {}
    return st.get("State", ""), st.get("Message", "")


def wait_state(node: ShoalNode, name: str, state: str, timeout: float = 40) -> str:
    def ok() -> str | None:
        st, msg = update_state(node, name)
        return msg if st == state else None

    try:
        return wait_until(ok, timeout, what=f"{name} UpdateStatus {state}")
    except AssertionError as e:
        raise AssertionError(f"{e}\nnow: {update_state(node, name)}\n{node.log_tail(30)}") from None


def args_of(t: dict[str, Any]) -> list[str]:
    return list(t["Spec"]["ContainerSpec"].get("Args") or [])


# --- rolling updates ------------------------------------------------------------------------------


def test_pause_then_resume_on_next_update(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    create(node, "pz", "--replicas", "2", "--update-failure-action", "pause", "--update-monitor", "1s",
           "--restart-condition", "none")
    wait_running(node, "pz", 2)
    node.docker("service", "update", "--detach", "--args", "sh -c 'exit 1'", "pz")
    msg = wait_state(node, "pz", "paused")
    assert msg.startswith("update paused due to failure or early termination of task "), msg
    bad = msg.rsplit(" ", 1)[1]
    assert any(t["ID"] == bad and t["Status"]["State"] == "failed" for t in tasks(node, "pz"))
    node.docker("service", "update", "--detach", "--args", "sleep 602", "pz")
    wait_state(node, "pz", "completed")
    ts = wait_running(node, "pz", 2)
    assert all(args_of(t) == ["sleep", "602"] for t in ts)
    node.docker("service", "rm", "pz")


def test_max_failure_ratio_tolerated(shoal_module_node: ShoalNode, tmp_path: Path) -> None:
    """The first two new tasks fail (an atomic mkdir per failure), later ones run: 2 of 4 is within 0.5."""
    node = shoal_module_node
    flag = tmp_path / "fail"
    flag.mkdir()
    script = f"for i in 1 2; do mkdir {flag}/f$i 2>/dev/null && exit 1; done; exec sleep 600"
    create(node, "ratio", "--replicas", "4", "--update-monitor", "1s", "--update-max-failure-ratio", "0.5",
           "--update-parallelism", "2", "--restart-delay", "200ms")
    wait_running(node, "ratio", 4)
    node.docker("service", "update", "--detach", "--args", f"sh -c '{script}'", "ratio")
    wait_state(node, "ratio", "completed")
    wait_running(node, "ratio", 4)
    failed = [t for t in tasks(node, "ratio") if t["Status"]["State"] == "failed"]
    assert len(failed) == 2 and sorted(os.listdir(flag)) == ["f1", "f2"]
    node.docker("service", "rm", "ratio")


# --- restarts and health -------------------------------------------------------------------------


def test_restart_max_attempts_leaves_task_failed(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    create(node, "rmax", "--restart-condition", "on-failure", "--restart-max-attempts", "2",
           "--restart-delay", "200ms", cmd=("sh", "-c", "sleep 0.2; exit 3"))
    # The orchestrator shuts an ended task down in the transaction that creates its replacement, if any: once
    # the third failure is desired Shutdown, a fourth attempt, were it wrongly allowed, would be there too.
    def handled() -> list[dict[str, Any]] | None:
        ts = tasks(node, "rmax")
        done = [t for t in ts if t["Status"]["State"] == "failed" and t["DesiredState"] == "shutdown"]
        return ts if len(done) >= 3 else None

    ts = wait_until(handled, 30, what="three failed attempts, each handled by the orchestrator")
    assert len(ts) == 3 and all(t["Status"]["State"] == "failed" for t in ts), ts
    assert all(t["Status"]["Err"] == "task: non-zero exit (3)" for t in ts)
    assert node.docker("service", "ls", "--filter", "name=rmax", "--format", "{{.Replicas}}").stdout.strip() == "0/1"
    node.docker("service", "rm", "rmax")


def test_health_check_failing_replaces_task(shoal_module_node: ShoalNode, tmp_path: Path) -> None:
    node = shoal_module_node
    bad = tmp_path / "bad"
    create(node, "hc", "--health-cmd", f"test ! -e {bad}", "--health-interval", "300ms", "--health-retries", "2",
           "--health-timeout", "1s", "--restart-delay", "100ms")
    (first,) = wait_running(node, "hc", 1)
    bad.touch()
    wait_until(lambda: any(t["ID"] == first["ID"] and t["Status"]["State"] == "failed" for t in tasks(node, "hc")),
               20, what="the unhealthy task to fail")
    t0 = next(t for t in tasks(node, "hc") if t["ID"] == first["ID"])
    assert "unhealthy" in t0["Status"]["Err"], t0["Status"]
    bad.unlink()
    (second,) = wait_running(node, "hc", 1)
    assert second["ID"] != first["ID"] and second["Slot"] == first["Slot"]
    node.docker("service", "rm", "hc")


def test_task_running_only_once_healthy_and_update_waits(shoal_module_node: ShoalNode, tmp_path: Path) -> None:
    node = shoal_module_node
    ok = tmp_path / "ok"
    probes, new_probes = tmp_path / "probes", tmp_path / "new-probes"  # a line per health check run

    def probed(log: Path, n: int) -> bool:
        return log.exists() and len(log.read_text().splitlines()) >= n

    create(node, "hw", "--health-cmd", f"echo probe >> {probes}; test -e {ok}", "--health-interval", "200ms",
           "--health-retries", "100", "--update-monitor", "300ms")
    wait_until(lambda: any(t["Status"]["State"] == "starting" for t in tasks(node, "hw")), 20, what="starting")
    wait_until(lambda: probed(probes, 3), 20, what="three failed health checks")
    assert not running(node, "hw")  # not healthy yet: starting, not running
    ok.touch()
    (t1,) = wait_running(node, "hw", 1)
    ok.unlink()
    # The new task's health checks write a log of their own: the old task's go on failing meanwhile.
    node.docker("service", "update", "--detach", "--args", "sleep 601", "--health-cmd",
                f"echo probe >> {new_probes}; test -e {ok}", "hw")
    wait_until(lambda: any(t["ID"] != t1["ID"] and t["Status"]["State"] == "starting" for t in tasks(node, "hw")),
               20, what="the new task starting")
    wait_until(lambda: probed(new_probes, 3), 20, what="three failed health checks of the new task")
    assert update_state(node, "hw")[0] == "updating"
    ok.touch()
    wait_state(node, "hw", "completed")
    (t2,) = wait_running(node, "hw", 1)
    assert args_of(t2) == ["sleep", "601"]
    # --no-healthcheck: runs at once although the command would fail
    ok.unlink()
    node.docker("service", "update", "--detach", "--no-healthcheck", "hw")
    wait_state(node, "hw", "completed")
    (t3,) = wait_running(node, "hw", 1)
    assert t3["Spec"]["ContainerSpec"]["Healthcheck"]["Test"] == ["NONE"]
    node.docker("service", "rm", "hw")


# --- logs and events ----------------------------------------------------------------------------


def test_service_logs_options(shoal_module_node: ShoalNode) -> None:
    node = shoal_module_node
    create(node, "lg", "--replicas", "2", cmd=("sh", "-c", "for i in 1 2 3 4; do echo line$i; done; echo err >&2; "
                                               "exec sleep 600"))
    ts = wait_running(node, "lg", 2)
    wait_until(lambda: node.docker("service", "logs", "lg").stdout.count("line4") == 2, 20, what="logs")
    out = node.docker("service", "logs", "--no-trunc", "lg")
    lines = out.stdout.splitlines()
    assert len(lines) == 8 and out.stderr.count("err") == 2, out
    assert all(" | line" in x and x.startswith("lg.") for x in lines)
    # tail per task; timestamps; raw; details (the CLI asks attributes only to show context)
    tail = node.docker("service", "logs", "--tail", "2", "lg")
    assert sorted(x.split(" | ")[1] for x in (tail.stdout + tail.stderr).splitlines()) == ["err", "err", "line4",
                                                                                           "line4"]
    stamped = node.docker("service", "logs", "-t", "--raw", "lg").stdout.splitlines()
    assert len(stamped) == 8
    for x in stamped:
        ts_, msg = x.split(" ", 1)
        assert msg.startswith("line") and abs(go_time(ts_) - time.time()) < 120
    details = node.docker("service", "logs", "--details", "--raw", "lg").stdout.splitlines()
    assert all(x.startswith("com.docker.swarm.node.id=") and "com.docker.swarm.task.id=" in x for x in details)
    assert node.docker("service", "logs", "--since", "1m", "--raw", "lg").stdout.count("line1") == 2
    future = time.time() + 3600
    assert node.docker("service", "logs", "--since", f"{future:.0f}", "--raw", "lg").stdout == ""
    # a task's logs by ID, and `docker logs` of the task on a node without a Docker Engine
    tid = ts[0]["ID"]
    assert node.docker("service", "logs", "--raw", tid).stdout.splitlines() == ["line1", "line2", "line3", "line4"]
    cp = node.docker("logs", "--tail", "2", tid)
    assert cp.stdout.splitlines() == ["line4"] and cp.stderr == "err\n", cp  # the last 2 of both streams
    name = f"lg.{ts[0]['Slot']}.{tid}"
    assert node.docker("logs", "-t", name).stdout.count("line") == 4
    assert node.docker("logs", tid[:10]).stdout.splitlines()[0] == "line1"
    cp = node.docker("logs", "nosuchcontainer", check=False)
    assert cp.returncode != 0
    node.docker("service", "rm", "lg")


def test_events_since_replay_and_after_restart(shoal_node: ShoalNode) -> None:
    node = shoal_node
    since = time.time() - 1
    sid = create(node, "ev", "--replicas", "1")
    node.docker("secret", "create", "evs", "-", input="x")
    node.docker("service", "scale", "--detach", "ev=2")
    node.docker("service", "rm", "ev")
    until = time.time() + 0.5
    wait_until(lambda: time.time() > until, 5, what="until to pass")

    def replay() -> list[dict[str, Any]]:
        cp = node.docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--format", "{{json .}}",
                         "--filter", "scope=swarm", timeout=20)
        return [json.loads(x) for x in cp.stdout.splitlines() if x.strip()]

    evs = replay()
    mine = [(e["Type"], e["Action"]) for e in evs if e["Actor"]["ID"] == sid or e["Type"] == "secret"]
    assert ("service", "create") in mine and ("service", "remove") in mine and ("secret", "create") in mine, mine
    scale = [e for e in evs if e["Actor"]["ID"] == sid and "replicas.new" in e["Actor"]["Attributes"]]
    assert scale and scale[0]["Actor"]["Attributes"] == {"name": "ev", "replicas.old": "1", "replicas.new": "2"}
    e = evs[0]
    assert set(e) >= {"Type", "Action", "Actor", "scope", "time", "timeNano"} and e["scope"] == "swarm"
    node.kill9()
    node.start()
    assert replay() == evs  # the retained window survives a restart


# --- kill -9 in the middle of an update or a rollback ----------------------------------------------


def _generations(node: ShoalNode, name: str) -> set[tuple[str, ...]]:
    return {tuple(args_of(t)) for t in tasks(node, name) if t["Status"]["State"] in ("running", "starting")}


@pytest.mark.slow
def test_kill9_during_rolling_update(shoal_node: ShoalNode) -> None:
    node = shoal_node
    create(node, "ku", "--replicas", "4", "--update-delay", "1s", "--update-monitor", "500ms")
    wait_running(node, "ku", 4)
    node.docker("service", "update", "--detach", "--args", "sleep 601", "ku")
    wait_until(lambda: sum(args_of(t) == ["sleep", "601"] for t in running(node, "ku")) >= 1, 20,
               what="the first new task running")
    node.kill9()
    node.start()
    wait_state(node, "ku", "completed", 60)
    ts = wait_running(node, "ku", 4)
    assert all(args_of(t) == ["sleep", "601"] for t in ts)
    assert sorted(t["Slot"] for t in ts) == [1, 2, 3, 4]
    assert _generations(node, "ku") == {("sleep", "601")}
    assert set(node.command_pids()) == {t["ID"] for t in ts}
    assert update_state(node, "ku") == ("completed", "update completed")


@pytest.mark.slow
def test_kill9_during_rollback(shoal_node: ShoalNode) -> None:
    node = shoal_node
    create(node, "kr", "--replicas", "4", "--update-failure-action", "rollback", "--update-monitor", "1s",
           "--rollback-delay", "1s", "--rollback-monitor", "500ms", "--restart-delay", "200ms",
           "--update-parallelism", "4")
    wait_running(node, "kr", 4)
    node.docker("service", "update", "--detach", "--args", "sh -c 'sleep 0.3; exit 1'", "kr")
    wait_state(node, "kr", "rollback_started", 30)
    wait_until(lambda: sum(args_of(t) == list(SLEEP) for t in running(node, "kr")) >= 1, 20,
               what="the rollback to bring one task back")
    node.kill9()
    node.start()
    msg = wait_state(node, "kr", "rollback_completed", 60)
    assert msg == "rollback completed"
    ts = wait_running(node, "kr", 4)
    assert all(args_of(t) == list(SLEEP) for t in ts)
    assert _generations(node, "kr") == {SLEEP}
    assert set(node.command_pids()) == {t["ID"] for t in ts}
    # the rollback was never rolled back nor paused by failures counted twice
    evs = node.docker("events", "--since", "0", "--until", f"{time.time():.3f}", "--filter", "type=service",
                      "--format", "{{json .}}", timeout=20).stdout.splitlines()
    states = [json.loads(x)["Actor"]["Attributes"].get("updatestate.new") for x in evs]
    states = [s for s in states if s]
    assert states == ["updating", "rollback_started", "rollback_completed"], states
