"""Autoscaling end to end (process executor, stock CLI): a service labelled for it that burns CPU scales from 1
to its max, each decision a `docker events` service update carrying its inputs; once its tasks go idle (an update
of the command) it scales back to its min."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.cluster.test_usage import sample, scrape
from tests.support.managers import free_port
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until
from tests.support.workers import Cluster

# Niced, so three of them leave the machine to the tests; a 0.1-core reservation makes any use count.
BURN = ("nice", "-n", "19", "sh", "-c", "while :; do :; done")


def test_a_burning_service_scales_up_then_down(tmp_path: Path) -> None:
    metrics_addr = f"127.0.0.1:{free_port()}"
    cluster = Cluster(tmp_path)
    cluster.manager = ShoalNode(tmp_path / "mgr", hostname="mgr", extra_args=("--metrics-addr", metrics_addr))
    try:
        cluster.start()
        _scale_up_then_down(cluster, metrics_addr)
    finally:
        cluster.stop()


def _scale_up_then_down(cluster: Cluster, metrics_addr: str) -> None:
    m = cluster.manager
    cluster.add_worker("w1")
    since = int(time.time())
    m.docker("service", "create", "--detach", "--name", "hot", "--reserve-cpu", "0.1",
             "--label", "com.shoal.autoscale.min=1", "--label", "com.shoal.autoscale.max=3",
             "--label", "com.shoal.autoscale.cpu=50", "--label", "com.shoal.autoscale.down-window=0s",
             "busybox", *BURN)

    def replicas() -> int:
        spec = json.loads(m.docker("service", "inspect", "hot").stdout)[0]["Spec"]
        return int(spec["Mode"]["Replicated"]["Replicas"])

    t0 = time.monotonic()
    wait_until(lambda: replicas() == 3, 120, interval=1, what="hot scaled to its max")
    up = time.monotonic() - t0
    labels = json.loads(m.docker("service", "inspect", "hot").stdout)[0]["Spec"]["Labels"]
    assert "cpu" in labels["com.shoal.autoscale.decision"] and "-> 3" in labels["com.shoal.autoscale.decision"]

    # Idle now: back to the min.
    m.docker("service", "update", "--detach", "--args", "sleep 3600", "hot")
    t1 = time.monotonic()
    wait_until(lambda: replicas() == 1, 180, interval=1, what="hot scaled back to its min")
    down = time.monotonic() - t1
    events = subprocess.run(["docker", "events", "--since", str(since), "--until", str(int(time.time()) + 1),
                             "--filter", "type=service", "--format", "{{json .}}"],
                            capture_output=True, text=True, timeout=30,
                            env={"DOCKER_HOST": f"unix://{m.socket}", "PATH": "/usr/bin:/bin"}).stdout
    decided = [json.loads(line)["Actor"]["Attributes"] for line in events.splitlines() if line.strip()]
    decided = [a for a in decided if "autoscale.decision" in a]
    assert [a.get("replicas.new") for a in decided][-1] == "1", decided
    assert all("target" in a["autoscale.decision"] for a in decided)
    samples = scrape(metrics_addr)
    assert (sample(samples, "shoal_autoscale_decisions_total", service="hot", direction="up") or 0) >= 1
    assert (sample(samples, "shoal_autoscale_decisions_total", service="hot", direction="down") or 0) >= 1
    print(f"autoscale (process executor): 1 -> 3 in {up:.0f} s, 3 -> 1 in {down:.0f} s after going idle")
