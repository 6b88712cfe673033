"""Replication: committed writes per second and commit latency at 1, 16 and 256 concurrent clients.

Reference: a three-member etcd cluster (Debian's etcd-server 3.4) started here on loopback ports, each
member with its own data dir, fsync on (etcd's default; `--unsafe-no-fsync` is not given). The client is
Python (aiohttp) over HTTP/1.1 to etcd's gRPC gateway, `POST /v3/kv/put` with a fresh key per write
(16-byte key, 64-byte value); client c talks to member c mod 3, so followers forward to the leader as with
etcd's own benchmark spread over endpoints. A put is acknowledged only after the cluster has committed it.

Shoal: the same client pattern against the Engine API write path, `POST /configs/create` (a fresh config
per write; each is one store transaction committed through Raft, fsync'd on a majority, before the answer)
on three managers as separate processes on loopback, client c on manager c mod 3 (followers forward to
the leader); the ratio is taken against etcd per level. A single manager ("1 manager (no replication)")
runs after with the same client, for what replication costs; no ratio is taken for it.

Each level runs for a fixed time after a short warm-up; throughput counts acknowledged writes only.
The client itself is Python on the same 2 cores, which bounds what 256 clients can drive: the figures
are the same client on both sides, not each server's ceiling.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import conditions, ensure_debian, kill_under, note, percentile, record

DATA = Path("/var/tmp/shoalb-etcd")
LEVELS = (1, 16, 256)
# (client, peer) per member: below the ephemeral range, where the managers' free ports (here and in bench/scale.py)
# are drawn; bench/manager_path.py opens no port.
ETCD_PORTS = [(23790 + 10 * i, 23791 + 10 * i) for i in range(3)]


class NotAvailable(Exception):
    pass


# --- the load generator ---------------------------------------------------------------------------------


async def _load(clients: int, duration: float, warmup: float, make_session: Any,
                put: Any) -> tuple[int, float, list[float], int]:
    """`clients` coroutines each doing sequential writes; returns (acknowledged writes, seconds,
    latencies in seconds, errors) for the measured window."""
    lat: list[float] = []
    errors = 0
    count = 0
    t_start = time.perf_counter() + warmup
    t_end = t_start + duration
    sessions = [make_session(c) for c in range(min(clients, 3))]

    async def client(c: int) -> None:
        nonlocal count, errors
        s = sessions[c % len(sessions)]
        i = 0
        while True:
            now = time.perf_counter()
            if now >= t_end:
                return
            i += 1
            ok = await put(s, c, i)
            done = time.perf_counter()
            if now >= t_start and done <= t_end:
                if ok:
                    count += 1
                    lat.append(done - now)
                else:
                    errors += 1

    try:
        await asyncio.gather(*(client(c) for c in range(clients)))
    finally:
        for s in sessions:
            await s.close()
    return count, duration, lat, errors


def _level_records(side: str, clients: int, res: tuple[int, float, list[float], int], cond: str,
                   ref: dict[str, float] | None = None, ref_name: str | None = None) -> list[dict[str, Any]]:
    count, dur, lat, errors = res
    rate = count / dur
    p50 = percentile(lat, 50) * 1000
    p99 = percentile(lat, 99) * 1000
    print(f"  replication {side:<40} {clients:>3} clients  {rate:>8,.0f} writes/s  p50 {p50:7.2f} ms  "
          f"p99 {p99:7.2f} ms  errors {errors}", flush=True)
    case = f"{side}, {clients} clients"
    out = []
    for metric, value, unit in (("writes_per_s", rate, "writes/s"), ("p50_latency", p50, "ms"),
                                ("p99_latency", p99, "ms")):
        if ref is not None:
            out.append(record("replication", case, metric, value, unit, reference=ref_name,
                              reference_value=ref[metric], conditions=cond))
        else:
            out.append(record("replication", case, metric, value, unit, conditions=cond))
    return out


# --- etcd ---------------------------------------------------------------------------------------------


def _start_etcd() -> list[subprocess.Popen[bytes]]:
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ETCD_PORTS))
    procs = []
    for i, (cport, pport) in enumerate(ETCD_PORTS):
        args = ["etcd", "--name", f"m{i}", "--data-dir", str(DATA / f"m{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{cport}",
                "--advertise-client-urls", f"http://127.0.0.1:{cport}",
                "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "shoalb", "--log-level", "warn", "--logger", "zap"]
        with open(DATA / f"m{i}.log", "ab") as logf:
            procs.append(subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True))
    endpoints = ",".join(f"http://127.0.0.1:{c}" for c, _ in ETCD_PORTS)
    deadline = time.monotonic() + 60
    while True:
        res = subprocess.run(["etcdctl", "--endpoints", endpoints, "endpoint", "health"],
                             capture_output=True, text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        if res.returncode == 0:
            return procs
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            raise RuntimeError(f"etcd cluster not healthy: {res.stderr[-500:]}")
        time.sleep(0.2)  # bounded readiness poll


def _etcd_level(clients: int, duration: float, warmup: float) -> tuple[int, float, list[float], int]:
    import aiohttp

    value = base64.b64encode(b"v" * 64).decode()

    def make_session(c: int) -> Any:
        return aiohttp.ClientSession(base_url=f"http://127.0.0.1:{ETCD_PORTS[c % 3][0]}",
                                     connector=aiohttp.TCPConnector(limit=0))

    async def put(s: Any, c: int, i: int) -> bool:
        key = base64.b64encode(f"k{clients:03d}-{c:03d}-{i:08d}".encode()).decode()
        async with s.post("/v3/kv/put", json={"key": key, "value": value}) as r:
            await r.read()
            return r.status == 200

    return asyncio.run(_load(clients, duration, warmup, make_session, put))


# --- Shoal --------------------------------------------------------------------------------------------


def _shoal_level(sockets: list[str], clients: int, duration: float,
                 warmup: float) -> tuple[int, float, list[float], int]:
    import aiohttp

    data = base64.b64encode(b"v" * 64).decode()

    def make_session(c: int) -> Any:
        return aiohttp.ClientSession(base_url="http://docker",
                                     connector=aiohttp.UnixConnector(path=sockets[c % len(sockets)], limit=0))

    async def put(s: Any, c: int, i: int) -> bool:
        async with s.post("/v1.43/configs/create",
                          json={"Name": f"k{clients:03d}-{c:03d}-{i:08d}", "Data": data}) as r:
            await r.read()
            return r.status == 201

    return asyncio.run(_load(clients, duration, warmup, make_session, put))


def _start_shoal_single(base: Path) -> subprocess.Popen[bytes]:
    from tests.e2e.dockerd import ping
    from tests.support.managers import free_port

    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    sock = base / "api.sock"
    with open(base / "shoal.log", "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "daemon", "--data-dir", str(base / "data"),
                                 "--api-socket", str(sock), "--executor", "process", "--hostname", "shoalb-r",
                                 "--log-level", "warning"], stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(Path(__file__).resolve().parents[1]))
    deadline = time.monotonic() + 30
    while not ping(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("shoal daemon did not start: " + (base / "shoal.log").read_text()[-800:])
        time.sleep(0.05)  # bounded readiness poll

    async def init() -> None:
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s:
            # A free port, not 2377, as the three managers' (ManagerCluster): a fixed port on loopback may be taken
            # by another daemon on this host (a test, bench/scale.py's managers run meanwhile).
            async with s.post("http://docker/v1.43/swarm/init", json={"ListenAddr": f"127.0.0.1:{port}",
                                                                    "AdvertiseAddr": "127.0.0.1"}) as r:
                if r.status != 200:
                    raise RuntimeError(f"swarm init: {r.status} {await r.text()}")

    port = free_port()
    asyncio.run(init())
    return proc


def start_shoal_three_managers(base: Path) -> tuple[list[str], Any]:
    """Three Shoal managers as separate processes on loopback (`shoal daemon`, joined with the stock CLI and the
    manager token, tests/support/managers.py); returns their API sockets and the cluster (to stop it)."""
    from tests.support.managers import ManagerCluster

    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    mc = ManagerCluster(base, 3, heartbeat="", extra_args=("--log-level", "warning"))
    try:
        mc.start()
    except BaseException:
        mc.stop()
        raise
    return [str(n.socket) for n in mc.nodes], mc


def run(quick: bool) -> list[dict[str, Any]]:
    duration, warmup = (3.0, 0.5) if quick else (10.0, 1.0)
    records: list[dict[str, Any]] = []
    etcd_res: dict[int, dict[str, float]] = {}
    why = ensure_debian(["etcd-server", "etcd-client"], ["etcd", "etcdctl"])
    etcd_cond = (f"etcd 3 members on loopback, fsync on; Python aiohttp client via the gRPC gateway "
                 f"(/v3/kv/put), {duration:.0f}s per level")
    if why:
        note("replication", f"etcd reference not run: {why}")
    else:
        conditions("replication", etcd_cond)
        procs = _start_etcd()
        try:
            for c in LEVELS:
                res = _etcd_level(c, duration, warmup)
                recs = _level_records("etcd 3.4 (3 members)", c, res, etcd_cond)
                records += recs
                etcd_res[c] = {r["metric"]: r["value"] for r in recs}
        finally:
            for p in procs:
                p.kill()
                p.wait()
            shutil.rmtree(DATA, ignore_errors=True)

    base = Path("/run/shoalb-repl")
    try:
        socks, mc = start_shoal_three_managers(base / "three")
    except (NotAvailable, RuntimeError, AssertionError) as e:
        note("replication", f"Shoal 3 managers not measured: {e}")
    else:
        cond3 = ("Shoal 3 managers on loopback (separate processes, Raft over gRPC with mutual TLS), fsync on; "
                 "same client, POST /configs/create spread over the three (followers forward to the leader)")
        conditions("replication", cond3)
        try:
            for c in LEVELS:
                records += _level_records("Shoal (3 managers)", c, _shoal_level(socks, c, duration, warmup), cond3,
                                          ref=etcd_res.get(c),
                                          ref_name="etcd 3.4 (3 members)" if c in etcd_res else None)
        finally:
            mc.stop()
            shutil.rmtree(base / "three", ignore_errors=True)
    cond1 = "Shoal 1 manager (no replication), sqlite log fsync on; same client, POST /configs/create"
    proc = _start_shoal_single(base)
    try:
        for c in LEVELS:
            records += _level_records("Shoal 1 manager (no replication)", c,
                                      _shoal_level([str(base / "api.sock")], c, duration, warmup), cond1)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        kill_under(str(base))
        shutil.rmtree(base, ignore_errors=True)
    return records


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(ap.parse_args().quick), indent=1))
