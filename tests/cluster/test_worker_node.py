"""A worker's own view: `shoal swarm join`, `docker info` on a worker, the heartbeat period reaching it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.wait import wait_until
from tests.support.workers import Cluster


def shoal_join(socket: Path, token: str, manager: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", "swarm", "join", "--token", token,
                           "--api-socket", str(socket), manager], capture_output=True, text=True, timeout=60)


def test_shoal_cli_join_worker_info_and_heartbeat_period(cluster: Cluster) -> None:
    m = cluster.manager
    w = cluster.add_worker("w1", join=False)
    # a wrong token: dockerd's message, exit 1, nothing half-joined
    bad = cluster.token()[:-5] + "00000"
    cp = shoal_join(w.socket, bad, cluster.addr)
    assert cp.returncode == 1
    assert ("Error response from daemon: rpc error: code = InvalidArgument desc = A valid join token is necessary "
            "to join this cluster") in cp.stderr
    assert not (w.data_dir / "node.json").exists() and cluster.node("w1") is None

    cp = shoal_join(w.socket, cluster.token(), cluster.addr)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "This node joined a swarm as a worker."
    wait_until(lambda: cluster.node_state("w1") == "ready", 20, what="w1 ready")

    # docker info on the worker is truthful
    info = json.loads(w.docker("info", "--format", "{{json .Swarm}}").stdout)
    mgr_id = json.loads(m.docker("info", "--format", "{{json .Swarm}}").stdout)["NodeID"]
    assert info["LocalNodeState"] == "active" and info["ControlAvailable"] is False
    assert info["NodeID"] == cluster.node_id("w1")
    assert info["RemoteManagers"] == [{"NodeID": mgr_id, "Addr": cluster.addr}]
    text = w.docker("info").stdout
    assert "Is Manager: false" in text and f"NodeID: {info['NodeID']}" in text and cluster.addr in text

    # a changed heartbeat period reaches the worker (the cluster fixture set 1s)
    assert "heartbeat period now 1.0s" in w.log_tail(400)
    m.docker("swarm", "update", "--dispatcher-heartbeat", "2s")
    wait_until(lambda: "heartbeat period now 2.0s" in w.log_tail(400), 20, what="the 2s period on w1")
    assert cluster.node_state("w1") == "ready"
