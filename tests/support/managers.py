"""Several real `shoal daemon` managers on loopback, joined with the stock CLI (`docker swarm join` with the
manager token), each listening on a port of its own. Used by the multi-manager cluster tests and benchmarks.

    with ManagerCluster(tmp, 3) as mc:
        mc.leader()            # the ShoalNode whose /_shoal/raft says it leads
        mc.api_any("POST", "/v1.47/configs/create", body)   # first live manager that answers
"""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until

MANAGER_JOINED = "This node joined a swarm as a manager."
WORKER_JOINED = "This node joined a swarm as a worker."


_ports = random.Random()


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range (32768 and up): a port the kernel hands out for port 0
    is also the source port of any outgoing connection, and one taken that way between this pick and the
    daemon's bind failed a test with `address already in use`."""
    for _ in range(200):
        port = _ports.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found below the ephemeral range")


class ManagerCluster:
    def __init__(self, base: Path, managers: int = 3, *, heartbeat: str = "1s",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.base = base
        self.count = managers
        self.heartbeat = heartbeat
        self.extra_args = extra_args
        self.nodes: list[ShoalNode] = []
        self.ports: dict[str, int] = {}

    # --- setup ------------------------------------------------------------------------------------------

    def __enter__(self) -> ManagerCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def addr(self, n: ShoalNode) -> str:
        return f"127.0.0.1:{self.ports[n.hostname]}"

    def new_node(self, name: str) -> ShoalNode:
        n = ShoalNode(self.base / name, hostname=name, extra_args=self.extra_args).start()
        self.ports[name] = free_port()
        self.nodes.append(n)
        return n

    def start(self) -> None:
        first = self.new_node("m1")
        first.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", self.addr(first))
        if self.heartbeat:
            first.docker("swarm", "update", "--dispatcher-heartbeat", self.heartbeat)
        for i in range(2, self.count + 1):
            self.join(self.new_node(f"m{i}"), "manager")
        self.wait_healthy()

    def token(self, role: str) -> str:
        for n in self.live():
            cp = n.docker("swarm", "join-token", "-q", role, check=False)
            if cp.returncode == 0:
                return cp.stdout.strip()
        raise AssertionError("no manager answered join-token")

    def join(self, n: ShoalNode, role: str, via: ShoalNode | None = None) -> None:
        target = via or self.leader()
        out = n.docker("swarm", "join", "--token", self.token(role), "--listen-addr", self.addr(n),
                       "--advertise-addr", "127.0.0.1", self.addr(target)).stdout
        assert (MANAGER_JOINED if role == "manager" else WORKER_JOINED) in out, out

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    # --- observation -----------------------------------------------------------------------------------

    def live(self) -> list[ShoalNode]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def managers(self) -> list[ShoalNode]:
        return [n for n in self.live() if self.raft(n).get("voters")]

    def raft(self, n: ShoalNode) -> dict[str, Any]:
        try:
            status, body = n.api("GET", "/_shoal/raft")
        except OSError:
            return {}
        return body if status == 200 and isinstance(body, dict) else {}

    def set_log_entries_for_slow_followers(self, count: int) -> None:
        """The cluster spec's Raft.LogEntriesForSlowFollowers (the catch-up tail kept below each snapshot; the
        stock CLI has no flag for it), through the API; waits until every live manager follows it."""
        lead = self.leader()
        status, sw = lead.api("GET", "/v1.47/swarm")
        assert status == 200, sw
        spec = sw["Spec"]
        spec.setdefault("Raft", {})["LogEntriesForSlowFollowers"] = count
        status, body = lead.api("POST", f"/v1.47/swarm/update?version={sw['Version']['Index']}",
                                json.dumps(spec).encode())
        assert status == 200, body
        for n in self.live():
            wait_until(lambda n=n: self.raft(n).get("catchup_entries") == count, 10,  # type: ignore[misc]
                       what=f"{n.hostname} to keep {count} entries for slow followers")

    def leader(self, among: list[ShoalNode] | None = None, timeout: float = 20.0) -> ShoalNode:
        def find() -> ShoalNode | None:
            leaders = [n for n in (among or self.live()) if self.raft(n).get("is_leader")]
            return leaders[0] if len(leaders) == 1 else None

        found = wait_until(find, timeout, what="exactly one leader")
        assert found is not None
        return found

    def node_ls(self, via: ShoalNode) -> dict[str, dict[str, Any]]:
        """hostname -> node as `GET /nodes` on `via` answers."""
        status, body = via.api("GET", "/v1.47/nodes")
        assert status == 200, body
        return {n["Description"]["Hostname"]: n for n in body}

    def manager_status(self, via: ShoalNode) -> dict[str, str]:
        """hostname -> "Leader" | "Reachable" | "Unreachable" ("" for workers), as `docker node ls` prints it."""
        out = {}
        for host, n in self.node_ls(via).items():
            ms = n.get("ManagerStatus")
            if not ms:
                out[host] = ""
            elif ms.get("Leader"):
                out[host] = "Leader"
            else:
                out[host] = {"reachable": "Reachable", "unreachable": "Unreachable"}.get(ms.get("Reachability", ""),
                                                                                         "Unknown")
        return out

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """One leader, every live manager a voter caught up with it, every node ready."""
        def healthy() -> bool:
            lead = [n for n in self.live() if self.raft(n).get("is_leader")]
            if len(lead) != 1:
                return False
            commit = self.raft(lead[0]).get("commit", 0)
            voters = set(self.raft(lead[0]).get("voters", []))
            for n in self.live():
                st = self.raft(n)
                if st.get("id") in voters and st.get("applied", 0) < commit:
                    return False
            try:
                ls = self.node_ls(lead[0])
            except (AssertionError, OSError):
                return False
            return all(x["Status"]["State"] == "ready" for h, x in ls.items()
                       if any(n.hostname == h for n in self.live()))

        wait_until(healthy, timeout, interval=0.2, what="a healthy cluster")

    # --- requests --------------------------------------------------------------------------------------

    def api_any(self, method: str, path: str, body: Any = None,
                order: list[ShoalNode] | None = None) -> tuple[int, Any, ShoalNode | None]:
        """The first live manager's answer that is not a connection failure: (status, body, who answered)."""
        raw = json.dumps(body).encode() if body is not None else None
        for n in order or self.live():
            try:
                status, data = n.api(method, path, raw)
            except OSError:
                continue
            return status, data, n
        return 0, None, None


def timed(fn: Any) -> tuple[Any, float]:
    t = time.monotonic()
    out = fn()
    return out, time.monotonic() - t


__all__ = ["MANAGER_JOINED", "WORKER_JOINED", "ManagerCluster", "free_port", "timed"]
