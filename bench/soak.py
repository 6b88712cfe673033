"""Soak: a five-node Shoal swarm (docker executor) under churn and faults, then lost writes and leaks.

Run: `bench/soak [--minutes N] [--quick] [--seed S]` as root (not part of CI). Prints figures, never asserts a
timing; exits 1 when an acknowledged write is missing on a manager or the history is not linearizable, 2 on a
leak, 3 when the soak could not run at all.

Set-up. Each node is a `shoal daemon --executor docker` in its own network namespace (`shoalsk-m1` ...
`shoalsk-w2`, veths on the host bridge `shoalsk-br`, 10.215.0.0/24, as bench/failover.py lays out its Swarm
reference) with its own private dockerd there (bench/common.py's NsDockerd: tests/e2e/dockerd.py's flags, its own
data-root and exec-root, the offline busybox test image), so a node's bridges, veths, nftables and DNS listeners
are its own and the leak audit counts only what the soak made. (Five nodes sharing one engine in one namespace do
not work: every node binds the DNS server of an overlay on the same gateway address, "address already in use".)
Managers m1, m2, m3 and workers w1, w2 are joined with the stock CLI on their namespace addresses. m3's data dir is
a tmpfs (1.5 GiB, 384 MiB with --quick) so its disk can be filled. A network `soak-small` with a /28 subnet is the
IPAM probe: a service of 16 replicas on it gets as many addresses as the subnet has free, before and after.

Churn, round after round until the time is up, each request through a manager picked at random (seeded):
services created (2 replicas, half of them on soak-small), updated (`--env-add`), rolled back and removed; a
replicated job of 2 runs and is removed; a secret is created, given to a service and both removed; w2 is drained
and made active again. Alongside, the linearizability workload of tests/support/history.py: configs created and
read by name, and a register (a service label) written with its version and read back, all recorded in one
history.

Faults, once each, at fixed points of the run: kill -9 of the leader (restarted after a round); kill -9 of w1
(restarted after a round); a follower (m2, or m1 when m2 leads) stopped with SIGTERM while ~500 MiB of configs
(400 KiB each; 40 MiB with --quick) are written through the others (a refused write is retried: an election may
be under way), then restarted and given two minutes to catch up (its applied index at the leader's commit and as
many configs in its store), the configs then removed; m3's tmpfs filled to the last byte while rounds go on, then
freed, and m3 given a minute to catch up (restarted if it chose to exit), then killed with -9 and restarted on
its data dir, and given a minute again.

End. The churn's objects are removed and the cluster given a minute to settle; every config the history saw
acknowledged is read through every manager (a follower forwards reads to the leader, so each manager's own store
must also hold as many configs as the leader's, with its applied index at the leader's commit), the history is
checked (shoal/testing/linearizability.py), and the audit of the start is taken again: nftables tables and rules,
bridges and veths of the nodes' namespaces, mounts under the soak's directories, processes of the engines'
containers, containers and engine networks, IPAM (the probe), open files and RSS of each Shoal daemon, open files
of each dockerd. A figure beyond its allowance is a leak (allowances are printed beside the figures).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Netns, NsDockerd, del_bridge, make_bridge, sh  # noqa: E402
from shoal.manager.raft import DEFAULT_CATCHUP_BYTES, DEFAULT_SNAPSHOT_BYTES  # noqa: E402
from shoal.testing.linearizability import Budget, History, check  # noqa: E402
from tests.e2e.dockerd import ensure_test_image, why_unavailable  # noqa: E402
from tests.support import history as hist  # noqa: E402
from tests.support.managers import ManagerCluster  # noqa: E402
from tests.support.shoal_node import ShoalNode  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

NETNS = "shoalsk"  # the nodes' namespaces: shoalsk-m1 ... shoalsk-w2
BRIDGE = "shoalsk-br"
SUBNET = "10.215.0"
BASE = Path("/run/shoal-soak")  # sockets, exec-root (short paths)
DATA = Path("/var/tmp/shoal-soak")  # data dirs, engine data-root
API = "/v1.47"
IMAGE = "shoal-test/busybox:latest"
SLEEP = ["sh", "-c", 'trap "exit 0" TERM; sleep 100000 & wait']
PROBE_REPLICAS = 16


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class SoakCluster(ManagerCluster):
    """ManagerCluster's nodes, each in its own namespace on the soak's bridge with its own engine."""

    def __init__(self, base: Path, tmpfs_mib: int) -> None:
        super().__init__(base, managers=3, heartbeat="1s")
        self.tmpfs_mib = tmpfs_mib
        self.by_name: dict[str, ShoalNode] = {}
        self.netns: dict[str, Netns] = {}
        self.engines: dict[str, NsDockerd] = {}

    def addr(self, n: ShoalNode) -> str:
        return f"{self.netns[n.hostname].ns_ip}:2377"

    def new_node(self, name: str) -> ShoalNode:
        i = len(self.nodes)
        ns = self.netns[name] = Netns(f"{NETNS}-{name}", f"{SUBNET}.{10 + i}", bridge=BRIDGE, prefix=24).create()
        engine = self.engines[name] = NsDockerd(BASE / f"e-{name}", DATA / f"e-{name}", ns).start()
        ensure_test_image(engine.url)
        n = ShoalNode(self.base / name, hostname=name, netns=ns.name,
                      extra_args=("--executor", "docker", "--engine-host", engine.url))
        if name == "m3":  # the manager whose disk is filled
            n.data_dir.mkdir(parents=True, exist_ok=True)
            sh("mount", "-t", "tmpfs", "-o", f"size={self.tmpfs_mib}m,mode=0700", "shoal-soak-m3", str(n.data_dir))
        n.start()
        self.nodes.append(n)
        self.by_name[name] = n
        return n

    def start(self) -> None:
        first = self.new_node("m1")
        first.docker("swarm", "init", "--advertise-addr", self.netns["m1"].ns_ip, "--listen-addr", self.addr(first))
        first.docker("swarm", "update", "--dispatcher-heartbeat", self.heartbeat)
        for name in ("m2", "m3", "w1", "w2"):
            self.join(self.new_node(name), "manager" if name.startswith("m") else "worker")
        self.wait_healthy(60)

    def join(self, n: ShoalNode, role: str, via: ShoalNode | None = None) -> None:
        target = via or self.leader()
        n.docker("swarm", "join", "--token", self.token(role), "--listen-addr", self.addr(n),
                 "--advertise-addr", self.netns[n.hostname].ns_ip, self.addr(target))

    def managers_named(self) -> list[ShoalNode]:
        return [self.by_name[m] for m in ("m1", "m2", "m3")]

    def alive(self, n: ShoalNode) -> bool:
        return n.proc is not None and n.proc.poll() is None


class Soak:
    def __init__(self, minutes: float, quick: bool, seed: int) -> None:
        self.minutes = minutes
        self.quick = quick
        self.rng = random.Random(seed)
        self.seed = seed
        self.h = History()
        self.figures: list[str] = []
        self.problems: list[str] = []  # lost writes, non-linearizable history, faults not recovered
        self.leaks: list[str] = []
        self.counts: dict[str, int] = {}
        self.cluster: SoakCluster | None = None
        self.names = 0
        self.live_services: list[str] = []
        self.register_service = ""

    # --- small helpers ----------------------------------------------------------------------------------

    def figure(self, text: str) -> None:
        self.figures.append(text)
        log(f"figure: {text}")

    def count(self, what: str, ok: bool = True) -> None:
        key = what if ok else f"{what} failed"
        self.counts[key] = self.counts.get(key, 0) + 1

    def name(self, prefix: str) -> str:
        self.names += 1
        return f"{prefix}{self.names}"

    @property
    def c(self) -> SoakCluster:
        assert self.cluster is not None
        return self.cluster

    def managers(self) -> list[ShoalNode]:
        return [n for n in self.c.managers_named() if self.c.alive(n)]

    def pick(self) -> ShoalNode:
        return self.rng.choice(self.managers())

    def cli(self, what: str, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str] | None:
        """The stock CLI against a manager picked at random; counted, never raises."""
        n = self.pick()
        try:
            cp = n.docker(*args, check=False, timeout=60, input=input_text)
        except subprocess.TimeoutExpired:
            self.count(what, False)
            log(f"{what}: docker {' '.join(args[:3])} timed out on {n.hostname}")
            return None
        self.count(what, cp.returncode == 0)
        if cp.returncode != 0:
            log(f"{what} on {n.hostname}: {cp.stderr.strip()[:300]}")
            return None
        return cp

    def api(self, n: ShoalNode, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            return n.api(method, API + path, json.dumps(body).encode() if body is not None else None)
        except OSError as e:
            return 0, str(e)

    # --- set-up and tear-down ---------------------------------------------------------------------------

    def setup(self) -> None:
        reason = why_unavailable()
        if reason:
            raise RuntimeError(f"no dockerd: {reason}")
        self.teardown_leftovers()
        BASE.mkdir(parents=True, exist_ok=True)
        DATA.mkdir(parents=True, exist_ok=True)
        make_bridge(BRIDGE, f"{SUBNET}.1/24")
        self.cluster = SoakCluster(BASE / "nodes", 384 if self.quick else 1536)
        self.c.start()
        m = self.c.by_name["m1"]
        m.docker("network", "create", "-d", "overlay", "--subnet", "10.250.0.0/28", "soak-small")
        self.register_service = "soak-register"
        m.docker("service", "create", "-d", "--no-resolve-image", "--name", self.register_service,
                 "--replicas", "0", IMAGE, *SLEEP)
        log(f"cluster up: m1 m2 m3 (m3 on tmpfs), w1 w2, each in its netns on {BRIDGE} with its own dockerd")

    def teardown_leftovers(self) -> None:
        """What an interrupted earlier soak left (same fixed paths and namespace)."""
        for pid_s in os.listdir("/proc"):
            if not pid_s.isdigit() or int(pid_s) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid_s}/cmdline").read_bytes()
                if str(BASE).encode() in cmd or str(DATA).encode() in cmd:
                    os.kill(int(pid_s), 9)
        for p in (BASE, DATA):
            sh("sh", "-c", f"grep -F ' {p}/' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r umount -l", check=False)
        shutil.rmtree(BASE, ignore_errors=True)
        shutil.rmtree(DATA, ignore_errors=True)
        for name in ("m1", "m2", "m3", "w1", "w2"):
            Netns(f"{NETNS}-{name}", "").destroy()
        del_bridge(BRIDGE)

    def teardown(self) -> None:
        if self.cluster is not None:
            for n in self.c.nodes:
                with contextlib.suppress(Exception):
                    n.terminate(20)
            for e in self.c.engines.values():
                with contextlib.suppress(Exception):
                    e.cleanup()
        self.teardown_leftovers()

    # --- the audit --------------------------------------------------------------------------------------

    def audit(self) -> dict[str, Any]:
        a: dict[str, Any] = {}
        for key in ("nft tables", "nft rules", "bridges", "veths", "containers", "engine networks"):
            a[key] = 0
        for name, ns in self.c.netns.items():
            ruleset = ns.run("nft", "list", "ruleset", check=False).stdout if shutil.which("nft") else ""
            a["nft tables"] += sum(1 for ln in ruleset.splitlines() if ln.startswith("table "))
            a["nft rules"] += sum(1 for ln in ruleset.splitlines()
                                  if ln.startswith("\t\t") and not ln.strip().startswith(("type ", "policy ")))
            a["bridges"] += len(ns.run("ip", "-o", "link", "show", "type", "bridge").stdout.splitlines())
            a["veths"] += len(ns.run("ip", "-o", "link", "show", "type", "veth").stdout.splitlines())
            a["containers"] += len(self.engine_cli(name, "ps", "-aq").splitlines())
            a["engine networks"] += len(self.engine_cli(name, "network", "ls", "-q").splitlines())
        a["host veths on the bridge"] = len(sh("ip", "-o", "link", "show", "master", BRIDGE).stdout.splitlines())
        mounts = Path("/proc/mounts").read_text().splitlines()
        a["mounts"] = sum(1 for ln in mounts if f" {BASE}/" in ln or f" {DATA}/" in ln)
        a["container processes"] = len(self.container_pids())
        a["processes in the nodes' netns"] = self.netns_processes()
        a["ipam probe addresses"] = self.ipam_probe()
        for n in self.c.nodes:
            if self.c.alive(n):
                assert n.proc is not None
                a[f"{n.hostname} fds"] = len(os.listdir(f"/proc/{n.proc.pid}/fd"))
                a[f"{n.hostname} rss MiB"] = rss_mib(n.proc.pid)
        for name, e in self.c.engines.items():
            if e.proc is not None and e.proc.poll() is None:
                a[f"dockerd-{name} fds"] = len(os.listdir(f"/proc/{e.pid}/fd"))
        return a

    def engine_cli(self, name: str, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=self.c.engines[name].url, DOCKER_CONFIG=str(BASE / "engine-cli"))
        cp = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=60)
        return cp.stdout

    def netns_processes(self) -> int:
        """Processes in one of the nodes' namespaces: the daemons, dockerds, containerds, and any helper left."""
        inodes = {os.stat(ns.path).st_ino for ns in self.c.netns.values()}
        count = 0
        for pid_s in os.listdir("/proc"):
            if pid_s.isdigit():
                with contextlib.suppress(OSError):
                    count += os.stat(f"/proc/{pid_s}/ns/net").st_ino in inodes
        return count

    def container_pids(self) -> list[int]:
        """Processes below the engine's containerd-shims (the containers' processes and the shims)."""
        children: dict[int, list[int]] = {}
        shims = []
        for pid_s in os.listdir("/proc"):
            if not pid_s.isdigit():
                continue
            try:
                stat = Path(f"/proc/{pid_s}/stat").read_text()
                cmd = Path(f"/proc/{pid_s}/cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(pid_s))
            if b"containerd-shim" in cmd and str(BASE).encode() in cmd:
                shims.append(int(pid_s))
        out, todo = [], list(shims)
        while todo:
            p = todo.pop()
            out.append(p)
            todo += children.get(p, [])
        return out

    def ipam_probe(self) -> int:
        """Addresses a 16-replica service gets on the /28 network (the subnet's free addresses)."""
        m = self.leader_or_any()
        name = self.name("probe")
        sid = m.docker("service", "create", "-d", "-q", "--no-resolve-image", "--name", name, "--network",
                       "soak-small", "--replicas", str(PROBE_REPLICAS), IMAGE, *SLEEP).stdout.strip()

        def tasks() -> list[dict[str, Any]] | None:
            status, body = self.api(m, "GET", "/tasks")
            return [t for t in body if t.get("ServiceID") == sid] if status == 200 else None

        def addresses() -> int:
            ts = tasks()
            if ts is None:
                return -1
            return sum(1 for t in ts for na in t.get("NetworksAttachments") or [] if na.get("Addresses"))

        seen: list[int] = []

        def settled() -> bool:
            seen.append(addresses())
            return len(seen) > 10 and seen[-1] == seen[-10] and seen[-1] >= 0

        with contextlib.suppress(AssertionError):
            wait_until(settled, 30, interval=0.3)
        m.docker("service", "rm", name, check=False)
        try:
            wait_until(lambda: tasks() == [], 90, interval=0.5)
        except AssertionError:
            states: dict[str, int] = {}
            for t in tasks() or []:
                k = f"{t['Status']['State']}/desired {t['DesiredState']}{'' if t.get('NodeID') else '/no node'}"
                states[k] = states.get(k, 0) + 1
            self.problems.append(f"IPAM probe: 90 s after `service rm {name}` its tasks are still listed: {states}")
            log(self.problems[-1])
        return seen[-1] if seen else -1

    def leader_or_any(self) -> ShoalNode:
        try:
            return self.c.leader(self.managers(), timeout=30)
        except AssertionError:
            return self.managers()[0]

    # --- churn --------------------------------------------------------------------------------------------

    def check_deaths(self) -> None:
        """A daemon that exited without a fault stopping it: its exit status (a signal's name when killed), the
        kernel's word on it (an OOM kill), and its log's last lines go into the problems at once."""
        for n in self.c.nodes:
            rc = n.proc.poll() if n.proc is not None else None
            if n.proc is None or rc is None:
                continue
            pid = n.proc.pid
            how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
            kernel = [ln for ln in sh("dmesg", check=False).stdout.splitlines()
                      if f"Killed process {pid} " in ln or f"pid={pid}," in ln
                      or ("segfault" in ln and f"[{pid}]" in ln)]
            tail = n.log_path.read_text(errors="replace").splitlines()[-15:] if n.log_path.exists() else []
            self.problems.append(f"{n.hostname} (pid {pid}) died unasked: {how}; kernel: {kernel or 'nothing'}")
            log(f"{n.hostname} (pid {pid}) died unasked: {how}; kernel: {kernel or 'nothing'}; its log ends:\n  "
                + "\n  ".join(tail))
            n.proc = None  # counted once; quiesce() restarts it

    def round(self) -> None:
        self.check_deaths()
        r = self.rng.random
        # services: create, update, roll back, remove (at most three live, so soak-small never fills)
        if len(self.live_services) < 3:
            name = self.name("svc")
            net = ["--network", "soak-small"] if r() < 0.5 else []
            if self.cli("service create", "service", "create", "-d", "--no-resolve-image", "--name", name,
                        "--replicas", "2", "--stop-grace-period", "1s", *net, IMAGE, *SLEEP):
                self.live_services.append(name)
        if self.live_services:
            name = self.rng.choice(self.live_services)
            self.cli("service update", "service", "update", "-d", "--env-add", f"ROUND={self.names}", name)
            if r() < 0.5:
                self.cli("service rollback", "service", "rollback", "-d", name)
        if len(self.live_services) >= 3 or (self.live_services and r() < 0.3):
            name = self.live_services.pop(0)
            self.cli("service rm", "service", "rm", name)
        # a job
        job = self.name("job")
        if self.cli("job create", "service", "create", "-d", "--no-resolve-image", "--name", job, "--mode",
                    "replicated-job", "--replicas", "2", IMAGE, "true"):
            self.cli("job rm", "service", "rm", job)
        # a secret given to a service
        sec = self.name("sec")
        if self.cli("secret create", "secret", "create", sec, "-", input_text=sec):
            svc = self.name("svs")
            if self.cli("service create (secret)", "service", "create", "-d", "--no-resolve-image", "--name", svc,
                        "--secret", sec, "--replicas", "1", "--stop-grace-period", "1s", IMAGE, *SLEEP):
                self.cli("service rm (secret)", "service", "rm", svc)
            self.secrets_to_remove.append(sec)
        # drain / activate
        self.cli("node update", "node", "update", "--availability", "drain" if self.names % 2 else "active", "w2")
        # the recorded workload
        for _ in range(4):
            n = self.pick()
            cfg = self.name("cfg")
            hist.create_config(self.h, f"c-{n.hostname}", n, cfg)
            self.configs.append(cfg)
            hist.read_config(self.h, f"r-{n.hostname}", self.pick(), self.rng.choice(self.configs))
        n = self.pick()
        hist.write_label(self.h, f"w-{n.hostname}", n, self.register_service, str(self.names))
        hist.read_label(self.h, f"r-{n.hostname}", self.pick(), self.register_service)
        # secrets of earlier rounds, once no task uses them any more
        for s in list(self.secrets_to_remove[:-1]):
            n = self.pick()
            if n.docker("secret", "rm", s, check=False).returncode == 0:
                self.secrets_to_remove.remove(s)

    configs: list[str]
    secrets_to_remove: list[str]

    # --- faults ---------------------------------------------------------------------------------------------

    def kill_leader(self) -> None:
        lead = self.leader_or_any()
        log(f"fault: kill -9 of the leader {lead.hostname}")
        t0 = time.monotonic()
        lead.kill9()
        others = [n for n in self.c.managers_named() if n is not lead]
        try:
            new = self.c.leader(others, timeout=60)
            self.figure(f"leader kill -9: new leader {new.hostname} after {time.monotonic() - t0:.1f} s")
        except AssertionError:
            self.problems.append(f"no new leader within 60 s after kill -9 of {lead.hostname}")
        self.round()
        lead.start()
        self.wait_caught_up(lead, 60, "the killed leader")

    def kill_worker(self) -> None:
        w = self.c.by_name["w1"]
        log("fault: kill -9 of worker w1")
        w.kill9()
        self.round()
        w.start()
        m = self.leader_or_any()
        try:
            wait_until(lambda: self.c.node_ls(m)["w1"]["Status"]["State"] == "ready", 60, interval=0.5)
            self.figure("worker w1 ready again after kill -9 and restart")
        except (AssertionError, KeyError) as e:
            self.problems.append(f"w1 not ready 60 s after its restart: {e}")

    def manager_down_bulk_write(self) -> None:
        lead = self.leader_or_any()
        down = next(n for n in (self.c.by_name["m2"], self.c.by_name["m1"]) if n is not lead)  # a follower
        mib = 40 if self.quick else 500
        size = 400 * 1024
        count = mib * 1024 * 1024 // size
        log(f"fault: {down.hostname} (a follower) stopped with SIGTERM while {count} configs of 400 KiB ({mib} MiB) "
            "are written")
        down.terminate()
        payload = base64.b64encode(os.urandom(size)).decode()
        acked, refused, t0 = [], 0, time.monotonic()
        for i in range(count):
            name = f"bulk{i}"
            for _attempt in range(40):  # through an election: 503 until there is a leader again
                n = self.pick()
                status, body = self.api(n, "POST", "/configs/create", {"Name": name, "Data": payload})
                if status in (201, 409):  # 409: an earlier attempt that timed out went through
                    acked.append(name)
                    break
                refused += 1
                if refused % 20 == 1:
                    log(f"bulk write {name} on {n.hostname}: {status} {str(body)[:200]}")
                time.sleep(0.25)  # back-off between retries of a refused write
        took = time.monotonic() - t0
        self.figure(f"bulk write with {down.hostname} down: {len(acked)}/{count} configs of 400 KiB acknowledged in "
                    f"{took:.0f} s ({len(acked) * size / took / 1e6:.1f} MB/s of payload), {refused} refusals retried")
        down.start()
        t1 = time.monotonic()
        if self.wait_caught_up(down, 120, f"{down.hostname} after the bulk write"):
            self.figure(f"{down.hostname} caught up {time.monotonic() - t1:.1f} s after its restart")
        status_on_leader = self.c.manager_status(self.leader_or_any()).get(down.hostname)
        self.figure(f"{down.hostname} shown as {status_on_leader!r} by the leader")
        for c in acked:  # free the store again (the log keeps them until a snapshot)
            self.api(self.pick(), "DELETE", f"/configs/{c}")

    def fill_disk(self) -> None:
        m3 = self.c.by_name["m3"]
        filler = m3.data_dir / "soak-filler"
        log("fault: m3's data dir (tmpfs) filled to the last byte")
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
        st = os.statvfs(m3.data_dir)
        self.figure(f"m3 disk filled: {st.f_bavail * st.f_frsize} bytes free")
        before = dict(self.counts)
        t0 = time.monotonic()
        while time.monotonic() - t0 < (10 if self.quick else 60):  # churn goes on while m3's disk is full
            self.round()
        failed = {k: v - before.get(k, 0) for k, v in self.counts.items() if "failed" in k and v > before.get(k, 0)}
        self.figure(f"while m3's disk was full ({time.monotonic() - t0:.0f} s): failed operations {failed or 'none'}")
        status, body = self.api(m3, "GET", "/info")
        self.figure(f"m3 while full: /info {status}, swarm {body.get('Swarm', {}).get('LocalNodeState')!r}"
                    if isinstance(body, dict) else f"m3 while full: {status} {str(body)[:200]}")
        st3 = self.c.raft(m3)
        self.figure(f"m3 while full: applied {st3.get('applied')}, leader {st3.get('leader')}, "
                    f"is_leader {st3.get('is_leader')}")
        alive = self.c.alive(m3)
        filler.unlink()
        log(f"m3 freed (daemon {'running' if alive else 'exited: ' + str(m3.proc.returncode if m3.proc else '')})")
        if not alive:  # it chose to exit: its supervisor (here, the soak) restarts it
            self.figure("m3 exited on the full disk; restarted by the soak")
            m3.proc = None
            m3.start()
        if self.wait_caught_up(m3, 60, "m3 after its disk was freed"):
            hist.create_config(self.h, "c-m3", m3, self.name("cfg-after-disk"))
        # What m3 wrote while full must have reached its disk, or come back from the leader: kill -9, restart.
        m3.kill9()
        try:
            m3.start()
        except Exception as e:
            self.problems.append(f"m3 does not restart on its data dir after the disk-full episode: {e}")
            return
        self.wait_caught_up(m3, 60, "m3 after kill -9 and restart following the disk-full episode")

    def wait_caught_up(self, n: ShoalNode, timeout: float, what: str) -> bool:
        t0 = time.monotonic()

        def level() -> bool:  # its applied index at the leader's commit and as many configs in its store
            lead = [m for m in self.managers() if self.c.raft(m).get("is_leader")]
            if len(lead) != 1:
                return False
            mine, theirs = self.c.raft(n), self.c.raft(lead[0])
            return (mine.get("applied", -1) >= theirs.get("commit", 0) > 0
                    and mine.get("objects", {}).get("config") == theirs.get("objects", {}).get("config"))

        try:
            wait_until(level, timeout, interval=0.5, what=what)
            log(f"{what}: level with the leader after {time.monotonic() - t0:.1f} s")
            return True
        except AssertionError:
            leads = [m for m in self.managers() if self.c.raft(m).get("is_leader")]
            if len(leads) != 1:
                self.problems.append(f"{what}: after {timeout:.0f} s the managers still have no leader ({len(leads)} "
                                     f"claim to lead; {n.hostname} applied {self.c.raft(n).get('applied')})")
            else:
                mine, theirs = self.c.raft(n), self.c.raft(leads[0])
                self.problems.append(
                    f"{what}: not level with the leader {leads[0].hostname} after {timeout:.0f} s (applied "
                    f"{mine.get('applied')} against commit {theirs.get('commit')}, "
                    f"{mine.get('objects', {}).get('config')} configs against "
                    f"{theirs.get('objects', {}).get('config')})")
            log(self.problems[-1])
            return False

    # --- the run ------------------------------------------------------------------------------------------

    def run(self) -> int:
        self.configs, self.secrets_to_remove = ["cfg-none"], []
        self.setup()
        before = self.audit()
        log("audit at the start: " + json.dumps(before))
        term0 = self.c.raft(self.leader_or_any()).get("term", 0)
        faults: list[tuple[float, Callable[[], None]]] = [
            (0.15, self.kill_leader), (0.3, self.kill_worker), (0.45, self.manager_down_bulk_write),
            (0.65, self.fill_disk)]
        t0 = time.monotonic()
        total = self.minutes * 60
        rounds = 0
        while True:
            elapsed = time.monotonic() - t0
            while faults and elapsed >= faults[0][0] * total:
                _, fault = faults.pop(0)
                try:
                    fault()
                except Exception as e:
                    self.problems.append(f"{fault.__name__} failed: {type(e).__name__}: {e}")
                    traceback.print_exc()
            if elapsed >= total and not faults:
                break
            try:
                self.round()
            except Exception as e:
                self.problems.append(f"round {rounds} failed: {type(e).__name__}: {e}")
                traceback.print_exc()
            rounds += 1
        self.figure(f"{rounds} churn rounds in {(time.monotonic() - t0) / 60:.1f} min; Raft term {term0} -> "
                    f"{self.c.raft(self.leader_or_any()).get('term', 0)} (one kill -9 of the leader is one election)")
        self.quiesce()
        self.final_reads()
        after = self.audit()
        self.compare(before, after)
        return self.verdict(before, after)

    def quiesce(self) -> None:
        for n in self.c.nodes:  # every daemon back (a fault may have left one down)
            if not self.c.alive(n):
                self.problems.append(f"{n.hostname} was not running at the end of the churn")
                n.proc = None
                with contextlib.suppress(Exception):
                    n.start()
        m = self.leader_or_any()
        m.docker("node", "update", "--availability", "active", "w2", check=False)
        for svc in self.live_services:
            m.docker("service", "rm", svc, check=False)
        status, services = self.api(m, "GET", "/services")
        for s in services if status == 200 else []:
            if s["Spec"]["Name"] != self.register_service:
                m.docker("service", "rm", s["ID"], check=False)
        for s in self.secrets_to_remove:
            m.docker("secret", "rm", s, check=False)
        try:
            wait_until(lambda: self.api(m, "GET", "/tasks")[1] == [] and not self.container_pids(), 90, interval=1,
                       what="every task and container to go")
        except AssertionError as e:
            log(f"after 90 s: {e}")

    def final_reads(self) -> None:
        acked = sorted({op.key.split("/", 1)[1] for op in self.h.operations()
                        if op.kind == "create" and op.outcome.value == "ok" and op.result is True})
        lost: dict[str, list[str]] = {}
        unanswered: dict[str, list[str]] = {}
        for n in self.c.managers_named():
            for name in acked:
                for _attempt in range(10):  # a read refused during an election is asked again
                    status = hist.read_config(self.h, f"final-{n.hostname}", n, name)
                    if status in (200, 404):
                        break
                    time.sleep(0.5)  # back-off before asking again
                if status == 404:
                    lost.setdefault(n.hostname, []).append(name)
                elif status != 200:
                    unanswered.setdefault(n.hostname, []).append(f"{name}: {status}")
        self.figure(f"{len(acked)} acknowledged config creates read through each of the 3 managers")
        for host, names in lost.items():
            self.problems.append(f"{host}: {len(names)} acknowledged configs not readable (404): {names[:5]}")
        for host, names in unanswered.items():
            self.problems.append(f"{host}: reads of {len(names)} configs not answered after 10 tries: {names[:5]}")
        # Reads are answered by the leader (a follower forwards them), so each manager's own store is checked
        # too: as many configs as the leader's, and its applied index at the leader's commit.
        lead = self.leader_or_any()

        def level() -> list[str]:
            want = self.c.raft(lead)
            behind = []
            for n in self.c.managers_named():
                st = self.c.raft(n)
                have, need = st.get("objects", {}).get("config", -1), want.get("objects", {}).get("config", 0)
                if have != need or st.get("applied", -1) < want.get("commit", 0):
                    behind.append(f"{n.hostname}: {have} configs against the leader's {need}, applied "
                                  f"{st.get('applied')} against commit {want.get('commit')}")
            return behind

        seen: list[list[str]] = []
        with contextlib.suppress(AssertionError):
            wait_until(lambda: seen.append(level()) or not seen[-1], 60, interval=1)
        for b in seen[-1] if seen else []:
            self.problems.append(f"acknowledged writes missing from a manager's store (60 s after the churn): {b}")
        if seen and not seen[-1]:
            self.figure(f"every manager's store level with the leader {lead.hostname}'s (configs, applied index)")
        started = time.monotonic()
        result = check(self.h, hist.model(), budget=Budget(max_seconds=120))
        ops = self.h.operations()
        self.figure(f"history: {len(ops)} operations ({sum(o.outcome.value == 'info' for o in ops)} info), "
                    f"checked in {time.monotonic() - started:.1f} s: {result.verdict.name}")
        if not result.ok:
            self.problems.append(f"history not linearizable:\n{result.explain()}")

    def compare(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        print("\nleak audit (start -> end, allowance):", flush=True)
        for key in sorted(set(before) | set(after)):
            b, a = before.get(key), after.get(key)
            allowance = allowed_growth(key, b)
            flag = ""
            if isinstance(a, int | float) and isinstance(b, int | float):
                if key == "ipam probe addresses":
                    if a < b:
                        flag = "LEAK"
                elif a - b > allowance:
                    flag = "LEAK"
            print(f"  {key:28s} {b!s:>8} -> {a!s:>8}   (+{allowance}) {flag}", flush=True)
            if flag:
                self.leaks.append(f"{key}: {b} -> {a}")

    def verdict(self, before: dict[str, Any], after: dict[str, Any]) -> int:
        print("\nfigures:", flush=True)
        for f in self.figures:
            print(f"  {f}", flush=True)
        print("operations (ok / failed):", flush=True)
        for k in sorted(self.counts):
            print(f"  {k}: {self.counts[k]}", flush=True)
        for p in self.problems:
            print(f"PROBLEM: {p}", flush=True)
        for leak in self.leaks:
            print(f"LEAK: {leak}", flush=True)
        lost = [p for p in self.problems if "not readable" in p or "not linearizable" in p or "missing" in p]
        print(f"verdict: {len(lost)} lost-write problems, {len(self.leaks)} leaks, "
              f"{len(self.problems) - len(lost)} other problems", flush=True)
        if lost:
            return 1
        return 2 if self.leaks else 0


# A manager's RSS may grow by what it holds by design: the Raft log, bounded by the entries applied since the last
# snapshot (taken once DEFAULT_SNAPSHOT_BYTES were applied) plus the catch-up tail kept below it
# (DEFAULT_CATCHUP_BYTES). The snapshot's data is not held (read from its file to send it). On top of that,
# allocator and cache noise.
RAFT_LOG_HELD_MIB = (DEFAULT_SNAPSHOT_BYTES + DEFAULT_CATCHUP_BYTES) / (1 << 20)
RSS_NOISE_MIB = 60.0


def allowed_growth(key: str, before: Any) -> float:
    """What a figure may grow by without being called a leak (RSS: the Raft log held by design, plus noise)."""
    if key.endswith("rss MiB"):
        return round(RAFT_LOG_HELD_MIB + RSS_NOISE_MIB)
    if key.endswith("fds"):
        return 20
    return 0


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="churn time (default 30)")
    ap.add_argument("--quick", action="store_true", help="40 MiB instead of 500 MiB of bulk writes, smaller tmpfs")
    ap.add_argument("--seed", type=int, default=15)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/soak needs root (network namespace, private dockerd, tmpfs)", file=sys.stderr)
        return 3
    # kill/timeout: raise SystemExit so that the finally-block stops the daemons and removes the namespaces
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    soak = Soak(args.minutes, args.quick, args.seed)
    log(f"soak: {args.minutes} min{' (quick)' if args.quick else ''}, seed {args.seed}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}")
    try:
        return soak.run()
    except Exception:
        traceback.print_exc()
        for p in soak.problems:
            print(f"PROBLEM: {p}", flush=True)
        return 3
    finally:
        keep = Path("/tmp/shoal-soak-logs")
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        for n in soak.cluster.nodes if soak.cluster else []:
            if n.log_path.exists():
                shutil.copy(n.log_path, keep / f"{n.hostname}.log")
                errs = [ln for ln in n.log_path.read_text(errors="replace").splitlines()
                        if re.search(r" (ERROR|CRITICAL) ", ln)]
                last = f", last: {errs[-1][:300]}" if errs else ""
                print(f"{n.hostname}: {len(errs)} ERROR lines in its log{last}")
        print(f"daemon logs kept in {keep}")
        soak.teardown()


if __name__ == "__main__":
    from bench import procs

    with procs.guarded():  # SIGTERM, SIGHUP, Ctrl-C: the clean-up runs and nothing started is left
        rc = main()
    sys.exit(rc)
