"""Mesh: throughput and added latency of the routing mesh and the VIP path, against connecting to the task
directly.

Three hosts made from network namespaces on one bridge (tests/net/netns.py): h1 a manager, h2 a worker (both
`shoal daemon`, process executor), h3 an outside client. One `sink` task runs on h2 (an echo/sink server), a
`client` task on h1 (sleep; the measurements run inside its namespaces). Paths, all TCP:

- direct: client task -> the sink task's overlay address (VXLAN between h1 and h2);
- vip: client task -> the service VIP (nftables DNAT in the client's namespace, then the same path);
- ingress, kernel, remote task: h3 -> h1:published (nftables DNAT on h1 and in its ingress namespace, then
  VXLAN to h2; h1 and h2 forward IPv4, as hosts running Docker do);
- ingress, kernel, local task: h3 -> h2:published (the task on the receiving node);
- ingress, user space, remote / local task: the same through the user-space balancer, for a second sink
  service whose `com.shoal.mesh.keepalive` label keeps it there (what every published port took before the
  kernel path: the previous figures, measured in the same run);
- node, no mesh: h3 -> the same server run on h2 itself (no NAT, no tunnel).

Per path: throughput of one connection sending `size` bytes (MiB/s), round trips of 1 byte on one open
connection (p50/p99 µs), and new connections (connect + 1-byte round trip, p50/p99 ms), in three rounds over
all paths (throughput: the median round; latencies: every round's samples). Printed, never
asserted; the reference of the VIP row is the direct path, that of the ingress rows the node without mesh
(the same client, host and network, so what remains is the mesh's own cost).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import conditions, note, record

SERVER = r'''
import socket, sys, threading
def handle(c):
    try:
        mode = c.recv(1)
        if mode == b"T":
            total = 0
            while True:
                d = c.recv(1 << 20)
                if not d: break
                total += len(d)
            c.sendall(str(total).encode())
        else:
            while True:
                d = c.recv(65536)
                if not d: break
                c.sendall(d)
    finally:
        c.close()
s = socket.create_server(("0.0.0.0", int(sys.argv[1])), backlog=256)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
'''

CLIENT = r'''
import json, socket, sys, time
host, port, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def conn():
    c = socket.create_connection((host, port), timeout=10)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c
out = {}
c = conn(); c.sendall(b"T"); buf = b"x" * (1 << 20); t0 = time.perf_counter(); left = size
while left > 0:
    c.sendall(buf[:min(left, len(buf))]); left -= min(left, len(buf))
c.shutdown(socket.SHUT_WR); got = int(c.recv(64)); out["tput"] = got / (time.perf_counter() - t0) / (1 << 20)
c.close()
c = conn(); c.sendall(b"E"); rtts = []
for _ in range(n):
    t = time.perf_counter(); c.sendall(b"x"); c.recv(1); rtts.append((time.perf_counter() - t) * 1e6)
c.close(); out["rtt"] = rtts
conns = []
for _ in range(max(20, n // 10)):
    t = time.perf_counter(); c = conn(); c.sendall(b"Ex"); c.recv(1)
    conns.append((time.perf_counter() - t) * 1e3); c.close()
out["conn"] = conns
print(json.dumps(out))
'''


ROUNDS = 3  # each path measured this many times, interleaved with the others


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def run(quick: bool) -> list[dict[str, Any]]:
    from tests.net.netns import Lab, why_not
    from tests.support.shoal_node import ShoalNode
    from tests.support.wait import wait_until

    size = (64 if quick else 512) << 20
    rounds = 500 if quick else 5000
    conditions("mesh", f"3 namespace hosts on one bridge, 2 shoal daemons (process executor), one TCP connection "
                       f"sending {size >> 20} MiB, {rounds} 1-byte round trips, {max(20, rounds // 10)} new "
                       f"connections per path and round, {ROUNDS} rounds; kernel mesh (nftables) and the Python "
                       "3.11 asyncio balancer (no uvloop); same 2 cores for everything")
    reason = why_not()
    if reason:
        note("mesh", f"not measured: {reason}")
        return []
    base = Path(tempfile.mkdtemp(prefix="mesh", dir="/tmp"))
    (base / "server.py").write_text(SERVER)
    (base / "client.py").write_text(CLIENT)
    py = sys.executable
    nodes: list[ShoalNode] = []
    records: list[dict[str, Any]] = []
    procs: list[subprocess.Popen[bytes]] = []
    with Lab() as lab:
        try:
            hosts = [lab.host(f"192.168.251.{i}/24") for i in (1, 2, 3)]
            for h in hosts[:2]:
                h.run("sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
            for i, h in enumerate(hosts[:2], start=1):
                nodes.append(ShoalNode(base / f"h{i}", hostname=f"h{i}", prefix=("ip", "netns", "exec", h.name),
                                       extra_args=("--dns-upstream", "none")).start())
            mgr = nodes[0]
            mgr.docker("swarm", "init", "--advertise-addr", "192.168.251.1", "--listen-addr", "192.168.251.1:2377")
            token = mgr.docker("swarm", "join-token", "-q", "worker").stdout.strip()
            nodes[1].docker("swarm", "join", "--token", token, "--advertise-addr", "192.168.251.2",
                            "--listen-addr", "192.168.251.2:2377", "192.168.251.1:2377")
            mgr.docker("network", "create", "-d", "overlay", "benchnet")
            mgr.docker("service", "create", "--detach", "--name", "sink", "--constraint", "node.hostname==h2",
                       "--network", "benchnet", "--publish", "30500:9000", "busybox", py, str(base / "server.py"),
                       "9000")
            mgr.docker("service", "create", "--detach", "--name", "sinkp", "--constraint", "node.hostname==h2",
                       "--label", "com.shoal.mesh.keepalive=true", "--publish", "30501:9000", "busybox", py,
                       str(base / "server.py"), "9000")
            mgr.docker("service", "create", "--detach", "--name", "client", "--constraint", "node.hostname==h1",
                       "--network", "benchnet", "busybox", "sleep", "3600")

            def tasks(svc: str) -> list[dict[str, Any]]:
                from urllib.parse import quote

                _, body = mgr.api("GET", "/v1.47/tasks?filters=" + quote(json.dumps({"service": [svc]})))
                return [t for t in body if t["Status"]["State"] == "running"]

            wait_until(lambda: tasks("sink") and tasks("sinkp") and tasks("client"), 60,
                       what="sink, sinkp and client running")
            net_id = json.loads(mgr.docker("network", "inspect", "benchnet").stdout)[0]["Id"]
            sink_ip = next(a.split("/")[0] for att in tasks("sink")[0]["NetworksAttachments"]
                           if att["Network"]["ID"] == net_id for a in att["Addresses"])
            svc = json.loads(mgr.docker("service", "inspect", "sink").stdout)[0]
            vip = next(v["Addr"].split("/")[0] for v in svc["Endpoint"]["VirtualIPs"] if v["NetworkID"] == net_id)
            client_pid = wait_until(lambda: nodes[0].command_pids().get(tasks("client")[0]["ID"]), 20)

            def measure(prefix: list[str], host: str, port: int) -> dict[str, Any]:
                deadline = time.monotonic() + 30
                while True:  # the balancer / rules may need a moment after the task started
                    r = subprocess.run([*prefix, py, str(base / "client.py"), host, str(port), str(size),
                                        str(rounds)], capture_output=True, text=True, timeout=600)
                    if r.returncode == 0:
                        out: dict[str, Any] = json.loads(r.stdout)
                        return out
                    if time.monotonic() > deadline:
                        raise RuntimeError(r.stderr)

            node_server = subprocess.Popen(["ip", "netns", "exec", hosts[1].name, py, str(base / "server.py"),
                                            "9100"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(node_server)
            in_client = ["nsenter", "-t", str(client_pid), "-n", "-m"]
            outside = ["ip", "netns", "exec", hosts[2].name]
            paths = [("direct (task address)", in_client, sink_ip, 9000),
                     ("node, no mesh", outside, "192.168.251.2", 9100),
                     ("vip (nftables DNAT)", in_client, vip, 9000),
                     ("ingress, kernel, remote task", outside, "192.168.251.1", 30500),
                     ("ingress, kernel, local task", outside, "192.168.251.2", 30500),
                     ("ingress, user space, remote task", outside, "192.168.251.1", 30501),
                     ("ingress, user space, local task", outside, "192.168.251.2", 30501)]
            # Rounds over all paths in turn, so a slow spell of the shared cores falls on every path alike;
            # a path's throughput is its median round, its latencies those of every round.
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in paths}
            for _ in range(ROUNDS):
                for name, p, h, port in paths:
                    runs[name].append(measure(p, h, port))
            results = {name: {"tput": statistics.median(r["tput"] for r in rs),
                              "rtt": [x for r in rs for x in r["rtt"]], "conn": [x for r in rs for x in r["conn"]]}
                       for name, rs in runs.items()}
            for name, *_ in paths:
                m = results[name]
                ref = None if name in ("direct (task address)", "node, no mesh") else \
                    "node, no mesh" if name.startswith("ingress") else "direct (task address)"
                d = results[ref] if ref else m
                for metric, unit, val, dval in (
                        ("throughput", "MiB/s", m["tput"], d["tput"]),
                        ("round trip p50", "µs", _pct(m["rtt"], 50), _pct(d["rtt"], 50)),
                        ("round trip p99", "µs", _pct(m["rtt"], 99), _pct(d["rtt"], 99)),
                        ("new connection p50", "ms", _pct(m["conn"], 50), _pct(d["conn"], 50)),
                        ("new connection p99", "ms", _pct(m["conn"], 99), _pct(d["conn"], 99))):
                    records.append(record("mesh", name, metric, val, unit, reference=ref,
                                          reference_value=dval if ref else None))
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            for n in nodes:
                n.stop()
    import shutil

    shutil.rmtree(base, ignore_errors=True)
    return records


def _print(records: list[dict[str, Any]]) -> None:
    """A plain table: each path's figure beside the direct path's, and their ratio."""
    print(f"{'path':38} {'metric':20} {'value':>14} {'reference':>14} {'ratio':>7}")
    for r in records:
        ref = f"{r['reference_value']:,.2f} {r['unit']}" if "reference_value" in r else ""
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        print(f"{r['case']:38} {r['metric']:20} {r['value']:>10,.2f} {r['unit']:<3} {ref:>14} {ratio:>7}")


if __name__ == "__main__":
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import procs

    ap = argparse.ArgumentParser(description="the mesh benchmark alone (bench/run --quick mesh runs it too)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the records as JSON instead of a table")
    args = ap.parse_args()
    with procs.guarded():  # SIGTERM, SIGHUP, Ctrl-C: the clean-up runs and nothing started is left
        recs = run(args.quick)
    print(json.dumps(recs, indent=1)) if args.json else _print(recs)
    from bench.common import NOTES

    for n in NOTES:
        print(n)
