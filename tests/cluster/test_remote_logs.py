"""`docker service logs` on a manager for tasks on a worker (the log broker, docs/design/cluster.md "Logs"):
real `shoal daemon` processes, the stock CLI, a global service so one task runs on each node."""

from __future__ import annotations

import re
import subprocess
import threading
import time

from tests.support.wait import wait_until
from tests.support.workers import Cluster

# One numbered line every 0.3 s, on stdout, and one line on stderr at the start.
LOOP = ("sh", "-c", "echo started >&2; i=0; while true; do echo n=$i; i=$((i+1)); sleep 0.3; done")


def _numbers(out: str, host: str) -> list[int]:
    """The n=<i> numbers of lines whose prefix names `host` (the CLI's `svc.<slot>.<task>@<host> | ...`)."""
    return [int(m.group(1)) for line in out.splitlines() if f"@{host}" in line.split("|", 1)[0]
            for m in [re.search(r"\| n=(\d+)$", line)] if m]


def test_service_logs_from_worker_and_manager(cluster: Cluster) -> None:
    m = cluster.manager
    m.docker("node", "update", "--availability", "active", "mgr")
    w1 = cluster.add_worker("w1")
    m.docker("service", "create", "--detach", "--name", "lg", "--mode", "global", "busybox", *LOOP)
    wait_until(lambda: cluster.placement("lg") == {"mgr": 1, "w1": 1}, 30, what="one task per node")

    # --- lines of both nodes' tasks, stdout and stderr
    def both() -> str:
        cp = m.docker("service", "logs", "lg", timeout=20)
        out = cp.stdout
        return out if len(_numbers(out, "w1")) >= 3 and len(_numbers(out, "mgr")) >= 3 else ""

    out = wait_until(both, 20, interval=0.5, what="lines from both nodes")
    w_nums = _numbers(out, "w1")
    assert w_nums == list(range(len(w_nums))), w_nums  # the worker's lines complete and in order
    err = m.docker("service", "logs", "lg", timeout=20).stderr
    assert re.search(r"@w1\s*\| started", err) and re.search(r"@mgr\s*\| started", err), err
    assert "warning" not in err, err
    # stdout or stderr only (the CLI always asks for both: the API's selection is checked directly)
    sid = m.docker("service", "inspect", "-f", "{{.ID}}", "lg").stdout.strip()
    status, body = m.api("GET", f"/v1.47/services/{sid}/logs?stderr=1")
    assert status == 200 and str(body).count("started") == 2 and "n=0" not in str(body), str(body)[:500]
    status, body = m.api("GET", f"/v1.47/services/{sid}/logs?stdout=1")
    assert status == 200 and str(body).count("n=0") == 2 and "started" not in str(body), str(body)[:500]

    # --- --tail 1 and --timestamps: one line per task, each with an RFC 3339 timestamp
    tail = m.docker("service", "logs", "--tail", "1", "--timestamps", "lg", timeout=20)
    lines = [ln for ln in (tail.stdout + tail.stderr).splitlines() if ln.strip()]
    assert len(lines) == 2, lines
    assert {ln.split("|", 1)[0].split("@")[1].strip() for ln in lines} == {"mgr", "w1"}, lines
    for ln in lines:
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z lg\.", ln), ln

    # --- -f follows new lines of the worker's task and ends when the service is removed
    proc = subprocess.Popen(["docker", "service", "logs", "-f", "--tail", "1", "lg"], env=m.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        first = wait_until(lambda: _numbers("\n".join(seen), "w1"), 15, what="a first followed worker line")[0]
        wait_until(lambda: max(_numbers("\n".join(seen), "w1")) >= first + 3, 15, what="new worker lines followed")
        wait_until(lambda: len(_numbers("\n".join(seen), "mgr")) >= 2, 15, what="manager lines followed")
        nums = _numbers("\n".join(seen), "w1")
        assert nums == list(range(nums[0], nums[0] + len(nums))), nums  # nothing lost or repeated
        m.docker("service", "rm", "lg")
        t0 = time.monotonic()
        proc.wait(timeout=15)
        print(f"\nservice logs -f ended {time.monotonic() - t0:.2f}s after service rm")
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # --- kill -9 of the worker: logs return promptly, with a warning line for its task instead of a hang
    m.docker("service", "create", "--detach", "--name", "lg2", "--mode", "global", "busybox", *LOOP)
    wait_until(lambda: cluster.placement("lg2") == {"mgr": 1, "w1": 1}, 30, what="one task per node")
    wait_until(lambda: _numbers(m.docker("service", "logs", "lg2", timeout=20).stdout, "w1"), 20,
               interval=0.5, what="worker lines")
    w1.kill9()
    t0 = time.monotonic()
    cp = m.docker("service", "logs", "lg2", timeout=30)
    took = time.monotonic() - t0
    print(f"service logs after kill -9 of the worker: {took:.2f}s")
    assert took < 10, took
    assert _numbers(cp.stdout, "mgr"), cp.stdout
    assert re.search(r"@w1\s*\| warning: incomplete log stream: node \w+ of task \w+ is not available", cp.stderr), \
        cp.stderr
    # and once the node is known down too
    wait_until(lambda: cluster.node_state("w1") == "down", 15, what="w1 down")
    t0 = time.monotonic()
    cp = m.docker("service", "logs", "lg2", timeout=30)
    assert time.monotonic() - t0 < 10 and "warning: incomplete log stream" in cp.stderr, cp.stderr

