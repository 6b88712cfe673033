"""How the answers evolve, compared with dockerd: task states through restart attempts, a rolling update, a
rollback and a job, and the job's service logs. What is compared is the sequence of states reached (the
service's UpdateStatus states in the order they were seen, every task of the history with its desired and
reached state, exit code and error), never how long anything took.

The restart-attempts scenario and the job run always; the update and rollback are `slow`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.differential.harness import Answer, Pair, Side, cleanup
from tests.e2e.dockerd import TEST_IMAGE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

_TERMINAL = {"complete", "shutdown", "failed", "rejected", "orphaned", "remove"}


def _tasks(s: Side, name: str) -> list[dict[str, Any]]:
    _, tasks, _ = s.request("GET", "/tasks", query={"filters": {"service": [name]}})
    return list(tasks)


def _summary(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history, oldest first per slot: what each task was asked to be and what it became."""
    rows = []
    for t in sorted(tasks, key=lambda t: (t.get("Slot", 0), t["CreatedAt"])):
        st = t.get("Status", {})
        rows.append({"Slot": t.get("Slot"), "DesiredState": t.get("DesiredState"), "State": st.get("State"),
                     "ExitCode": st.get("ContainerStatus", {}).get("ExitCode"), "Err": st.get("Err", ""),
                     "Message": st.get("Message")})
    return rows


def _wait(fn: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn() and time.monotonic() < deadline:
        time.sleep(0.3)  # polling interval of a bounded poll; the comparison shows what was reached


def _watch_update(s: Side, name: str, until: set[str], timeout: float = 90.0) -> list[str]:
    """The UpdateStatus states seen, in order, without repeats, until one in `until` (or the deadline)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, svc, _ = s.request("GET", f"/services/{name}")
        state = (svc.get("UpdateStatus") or {}).get("State", "")
        if state and (not seen or seen[-1] != state):
            seen.append(state)
        if state in until:
            break
        time.sleep(0.2)
    return seen


def _milestones(seen: list[str]) -> list[str]:
    """The first and the last UpdateStatus state seen: the states between may last less than one poll."""
    return seen[:1] + seen[-1:] if len(seen) > 1 else seen


def _create(s: Side, *args: str) -> None:
    r = s.cli("service", "create", "--detach", "--no-resolve-image", *args)
    assert r.returncode == 0, f"{s.name}: {r.stderr}"


def _restart_attempts(s: Side) -> list[Answer]:
    _create(s, "--name", "drestart", "--restart-condition", "on-failure", "--restart-max-attempts", "2",
            "--restart-delay", "0s", TEST_IMAGE, "sh", "-c", "exit 3")
    with cleanup(s, "/services/drestart"):
        def done() -> bool:
            t = _tasks(s, "drestart")
            return len(t) >= 3 and all(x["Status"]["State"] in _TERMINAL for x in t)
        _wait(done)
        # Give a fourth task (which dockerd never starts) the time to show up if it were started.
        _wait(lambda: len(_tasks(s, "drestart")) > 3, timeout=6)
        return [Answer("GET /tasks?service (restart attempts)", 200, _summary(_tasks(s, "drestart")))]


def test_restart_attempts(pair: Pair) -> None:
    pair.check(_restart_attempts)


def _engine_quiet(s: Side) -> bool:
    """The engine has no container left to stop or remove: each task container belongs to a task the swarm
    still has and does not want removed (swarmkit keeps the task of a removed service until its container is
    gone), and one that runs to a task still desired running. (Until then the cleanup of earlier scenarios'
    services goes on, and its container events are no part of what comes next.)"""
    _, tasks, _ = s.request("GET", "/tasks")
    desired = {t["ID"]: t.get("DesiredState") for t in tasks}
    _, containers, _ = s.request("GET", "/containers/json", query={
        "all": "1", "filters": {"label": ["com.docker.swarm.task.id"]}})
    for c in containers:
        tid = c.get("Labels", {}).get("com.docker.swarm.task.id", "")
        if desired.get(tid, "remove") == "remove" or (c.get("State") == "running" and desired[tid] != "running"):
            return False
    return True


def _job(s: Side) -> list[Answer]:
    _wait(lambda: _engine_quiet(s))
    since = time.time()
    _create(s, "--name", "djob", "--mode", "replicated-job", "--replicas", "3", "--max-concurrent", "1",
            TEST_IMAGE, "sh", "-c", "echo job-line-1; echo job-line-2 >&2")
    with cleanup(s, "/services/djob"):
        def done() -> bool:
            t = _tasks(s, "djob")
            return len(t) >= 3 and all(x["Status"]["State"] in _TERMINAL for x in t)
        _wait(done)
        out = [Answer("GET /tasks?service (job)", 200, _summary(_tasks(s, "djob")))]
        _, svc, _ = s.request("GET", "/services/djob", query={"status": "true"})
        out.append(Answer("GET /services/{job} .JobStatus", 200, {"JobStatus": svc.get("JobStatus", {}).get(
            "JobIteration") is not None}))
        status, raw, hdrs = s.request("GET", "/services/djob/logs", query={"stdout": "1", "stderr": "1"},
                                      binary=True, timeout=20)
        lines = []
        i = 0
        while i + 8 <= len(raw):  # the multiplexed stream: [stream, 0, 0, 0, size(4)] + payload
            size = int.from_bytes(raw[i + 4:i + 8], "big")
            lines.extend(f"{raw[i]}:{ln}" for ln in raw[i + 8:i + 8 + size].decode().splitlines())
            i += 8 + size
        out.append(Answer("GET /services/{job}/logs", status, {"content-type": hdrs.get("content-type"),
                                                                "lines": sorted(lines)}))
        for q in ({"stdout": "1", "since": "yesterday"}, {"stdout": "1", "until": "soon"}):
            out.append(s.call(f"GET /services/{{job}}/logs ({next(k for k in q if k != 'stdout')} not a time)",
                              "GET", "/services/djob/logs", query=q, timeout=15))
        # Every event of the job's run, unfiltered (swarm and engine alike), as a multiset of (type, action):
        # the order of two containers' events is timing. Containers that are not the job's tasks count too
        # (none of the earlier scenarios' is left to clean up when the job starts).
        _, evs, _ = s.request("GET", "/events", query={"since": f"{since:.3f}", "until": f"{time.time():.3f}"},
                              timeout=15)
        kinds: dict[str, int] = {}
        for e in evs if isinstance(evs, list) else [evs]:
            if e.get("Type") == "network" and e.get("Action") in ("create", "destroy", "remove"):
                continue  # the job has no network of its own: an earlier scenario's network coming or going
            task = e.get("Actor", {}).get("Attributes", {}).get("com.docker.swarm.service.name") == "djob"
            key = f"{e.get('Type')} {e.get('Action')}" + ("" if task or e.get("Type") != "container" else
                                                          " (not a task of the job)")
            kinds[key] = kinds.get(key, 0) + 1
        out.append(Answer("GET /events (the job's run, unfiltered)", 200, kinds))
        r = s.cli("service", "logs", "--no-task-ids", "djob")
        out.append(Answer("docker service logs", r.returncode, sorted(
            ln.split("|", 1)[-1].strip() for ln in (r.stdout + r.stderr).splitlines())))
        return out


def test_job_and_logs(pair: Pair) -> None:
    pair.check(_job)


def _update(s: Side) -> list[Answer]:
    _create(s, "--name", "dupdate", "--replicas", "2", "--update-parallelism", "1", "--update-delay", "1s",
            TEST_IMAGE, "sleep", "600")
    with cleanup(s, "/services/dupdate"):
        _wait(lambda: sum(t["Status"]["State"] == "running" for t in _tasks(s, "dupdate")) == 2)
        r = s.cli("service", "update", "--detach", "--env-add", "X=1", "dupdate")
        assert r.returncode == 0, r.stderr
        seen = _watch_update(s, "dupdate", {"completed", "paused", "rollback_completed"})
        _wait(lambda: sum(t["Status"]["State"] == "running" for t in _tasks(s, "dupdate")) == 2)
        return [Answer("UpdateStatus states (update)", 200, _milestones(seen), ordered=True),
                Answer("GET /tasks?service (after update)", 200, _summary(_tasks(s, "dupdate")))]


@pytest.mark.slow
def test_rolling_update(pair: Pair) -> None:
    pair.check(_update)


def _rollback(s: Side) -> list[Answer]:
    _create(s, "--name", "drollback", "--replicas", "1", "--update-failure-action", "rollback",
            "--update-monitor", "3s", "--restart-condition", "none", TEST_IMAGE, "sleep", "600")
    with cleanup(s, "/services/drollback"):
        _wait(lambda: any(t["Status"]["State"] == "running" for t in _tasks(s, "drollback")))
        r = s.cli("service", "update", "--detach", "--args", "sh -c 'exit 1'", "drollback")
        assert r.returncode == 0, r.stderr
        seen = _watch_update(s, "drollback", {"rollback_completed", "rollback_paused", "completed"})
        _wait(lambda: any(t["Status"]["State"] == "running" for t in _tasks(s, "drollback")))
        _, svc, _ = s.request("GET", "/services/drollback")
        return [Answer("UpdateStatus states (rollback)", 200, _milestones(seen), ordered=True),
                Answer("GET /services/{rolled back} .Spec", 200, svc["Spec"]),
                Answer("GET /tasks?service (after rollback)", 200, _summary(_tasks(s, "drollback")))]


@pytest.mark.slow
def test_rollback(pair: Pair) -> None:
    pair.check(_rollback)
