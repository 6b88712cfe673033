"""Shared pieces of the benchmarks: records, notes, Debian installs, network namespaces, private dockerds.

A record is `{"benchmark", "case", "metric", "value", "unit"}` plus, where a side-by-side reference ran,
`"reference"`, `"reference_value"` and `"ratio"` (Shoal / reference), and `"conditions"` (a short text:
nodes, tasks, managers, fsync). A side that cannot be measured yet records nothing: `note()` prints why,
and bench/run repeats the notes under its table.

Private dockerds run in their own network namespace (`nsenter --net=`, not `ip netns exec`: the latter
remounts /sys in a new mount namespace, which hides the cgroup mounts dockerd needs). They use the same
flags as the e2e tests' dockerd (`--bridge=none --iptables=false --ip-masq=false`), their own data-root,
exec-root, pidfile and socket; a swarm-mode dockerd then has its swarm ports (2377, 7946, 4789) on its own
namespace's addresses and cannot clash with any other daemon on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.dockerd import DOCKERD, ping, stop_pid  # noqa: E402

NOTES: list[str] = []
CONDITIONS: dict[str, str] = {}


def note(benchmark: str, text: str) -> None:
    line = f"[{benchmark}] {text}"
    NOTES.append(line)
    print(line, flush=True)


def conditions(benchmark: str, text: str) -> None:
    CONDITIONS[benchmark] = text
    print(f"[{benchmark}] conditions: {text}", flush=True)


def record(benchmark: str, case: str, metric: str, value: float, unit: str, *, reference: str | None = None,
           reference_value: float | None = None, ratio: float | None = None,
           conditions: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"benchmark": benchmark, "case": case, "metric": metric,
                         "value": round(float(value), 4), "unit": unit}
    if reference is not None:
        r["reference"] = reference
        if reference_value is not None:
            r["reference_value"] = round(float(reference_value), 4)
        if ratio is None and reference_value:
            ratio = float(value) / float(reference_value)
        if ratio is not None:
            r["ratio"] = round(ratio, 4)
    if conditions:
        r["conditions"] = conditions
    return r


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


# --- setup ---------------------------------------------------------------------------------------------


def ensure_debian(packages: list[str], binaries: list[str]) -> str | None:
    """Install the Debian packages when one of `binaries` is missing and we are root; None when all the
    binaries are there afterwards, else the reason."""
    missing = [b for b in binaries if shutil.which(b) is None and not os.path.exists(b)]
    if not missing:
        return None
    if os.geteuid() != 0:
        return f"{', '.join(missing)} missing and not root (apt-get install {' '.join(packages)})"
    print(f"installing {' '.join(packages)} (missing {', '.join(missing)}) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    res = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *packages], env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        res = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *packages], env=env,
                             capture_output=True, text=True)
    still = [b for b in binaries if shutil.which(b) is None and not os.path.exists(b)]
    if still:
        return f"apt-get install {' '.join(packages)} failed: {res.stderr[-500:]}"
    return None


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


# --- network namespaces ----------------------------------------------------------------------------------


@dataclass
class Netns:
    """A network namespace `name` with a veth to the host: host side `host_ip`, namespace side `ns_ip`
    (/30 when standalone), or with its veth enslaved to a host bridge (a /24 shared by several)."""

    name: str
    ns_ip: str
    host_ip: str | None = None
    bridge: str | None = None
    prefix: int = 30

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def veth_host(self) -> str:
        return f"{self.name[:10]}-h"

    def create(self) -> Netns:
        self.destroy()
        sh("ip", "netns", "add", self.name)
        sh("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", "eth-b")
        sh("ip", "link", "set", "eth-b", "netns", self.name)
        if self.bridge:
            sh("ip", "link", "set", self.veth_host, "master", self.bridge)
        elif self.host_ip:
            sh("ip", "addr", "add", f"{self.host_ip}/{self.prefix}", "dev", self.veth_host)
        sh("ip", "link", "set", self.veth_host, "up")
        self.run("ip", "addr", "add", f"{self.ns_ip}/{self.prefix}", "dev", "eth-b")
        self.run("ip", "link", "set", "eth-b", "up")
        self.run("ip", "link", "set", "lo", "up")
        # No default route, on purpose: nothing is pulled from a registry, and an engine's registry
        # look-up (Swarm's agent tries a pull before each task) must fail at once with "network
        # unreachable" rather than hang on packets that go nowhere (that cost Swarm 11 s per task).
        return self

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("nsenter", f"--net={self.path}", *args, check=check)

    def destroy(self) -> None:
        sh("ip", "link", "del", self.veth_host, check=False)
        sh("ip", "netns", "del", self.name, check=False)


def _forward_rule(op: str, name: str) -> None:
    # With br_netfilter loaded, bridged frames go through iptables' FORWARD chain, whose policy is DROP
    # wherever a dockerd with iptables runs on the host: accept traffic within our bridge, and only that.
    if shutil.which("iptables"):
        sh("iptables", op, "FORWARD", "-i", name, "-o", name, "-j", "ACCEPT", check=False)


def make_bridge(name: str, ip_cidr: str) -> None:
    del_bridge(name)
    sh("ip", "link", "add", name, "type", "bridge")
    sh("ip", "addr", "add", ip_cidr, "dev", name)
    sh("ip", "link", "set", name, "up")
    _forward_rule("-I", name)


def del_bridge(name: str) -> None:
    while shutil.which("iptables") and sh("iptables", "-C", "FORWARD", "-i", name, "-o", name, "-j", "ACCEPT",
                                          check=False).returncode == 0:
        _forward_rule("-D", name)
    sh("ip", "link", "del", name, check=False)


# --- private dockerd in a namespace ----------------------------------------------------------------------


ENGINE_FLAGS = ("--bridge=none", "--iptables=false", "--ip-masq=false", "--shutdown-timeout=2",
                "--log-level=warn")


@dataclass
class NsDockerd:
    base: Path  # socket, exec-root, pidfile, log (short path: unix sockets are limited to 107 bytes)
    data_root: Path
    netns: Netns | None
    proc: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def socket(self) -> Path:
        return self.base / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> NsDockerd:
        self.base.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        args = [DOCKERD, f"--data-root={self.data_root}", f"--exec-root={self.base / 'exec'}",
                f"--pidfile={self.base / 'dockerd.pid'}", f"--host={self.url}", *ENGINE_FLAGS, *self.extra]
        if self.netns is not None:
            args = ["nsenter", f"--net={self.netns.path}", *args]
        with open(self.base / "dockerd.log", "ab") as logf:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ping(self.socket):
            if self.proc.poll() is not None:
                tail = (self.base / "dockerd.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer /_ping within {timeout}s")
            time.sleep(0.05)  # bounded readiness poll
        return self

    def kill9(self) -> None:
        """kill -9 of dockerd alone (its containerd and shims stay, as in a crash of the daemon)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        # containerd-shims and containerd left by a kill -9 run under our exec-root: end them by pid
        kill_under(str(self.base / "exec"))

    def cleanup(self) -> None:
        self.stop()
        for p in (self.base / "exec", self.data_root):
            sh("sh", "-c", f"grep -F ' {p}/' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r umount -l",
               check=False)
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.base, ignore_errors=True)


def kill_under(marker: str) -> None:
    """SIGKILL each process whose command line mentions `marker` (a path private to this benchmark)."""
    me = os.getpid()
    for pid_s in os.listdir("/proc"):
        if not pid_s.isdigit() or int(pid_s) == me:
            continue
        try:
            cmd = Path(f"/proc/{pid_s}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_s), 9)


def docker_cli(host: str, *args: str, config_dir: Path, check: bool = True,
               timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=host, DOCKER_CONFIG=str(config_dir), DOCKER_CLI_HINTS="false")
    res = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited {res.returncode}: {res.stderr.strip()[-800:]}")
    return res
