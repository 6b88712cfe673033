"""End to end against real Swarm on the same engine build.

Two private dockerds (Debian's docker.io), each in its own network namespace with identical flags
(`--bridge=none --iptables=false --ip-masq=false`, own data-root, exec-root and socket) and the offline
test image `shoal-test/busybox:latest`:

- reference: the first dockerd in swarm mode (`docker swarm init --advertise-addr <its namespace's IP>`);
- Shoal: `shoal daemon --executor docker` driving the second dockerd, `docker swarm init` on Shoal's socket.

The same stock-CLI commands go to both (the default image-resolution path, no `--no-resolve-image`):

- create: `docker service create -d --replicas N ...` until N containers of the service are running;
- update: `docker service update -d --update-parallelism 10 --container-label-add bench.gen=2` until N
  running containers carry the new label and none without it runs;
- rm: `docker service rm` until no container of the service is left (any state).

Each time runs from just before the CLI command until the condition is seen by polling the *engine's*
container list (docker-py on the dockerd socket, label `com.docker.swarm.service.name`) every 0.1 s, so
both orchestrators are judged by the containers the engine actually runs. The task command exits on
SIGTERM at once (`trap "exit 0" TERM`), so the stop grace period does not dominate. Runs alternate Shoal,
Swarm, Shoal, Swarm...; the ratio Shoal/Swarm is taken pair by pair and the median of those is reported.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Netns,
    NsDockerd,
    conditions,
    docker_cli,
    ensure_debian,
    median,
    note,
    record,
)

POLL = 0.1
PHASE_TIMEOUT = 300.0
LABEL = "com.docker.swarm.service.name"
CMD = ["sh", "-c", 'trap "exit 0" TERM; sleep 100000 & wait']
BASE = Path("/run/shoalb-e2e")  # short: unix socket paths are limited to 107 bytes
DATA = Path("/var/tmp/shoalb-e2e")


class Side:
    def __init__(self, name: str, host: str, engine_url: str, cli_dir: Path) -> None:
        import docker  # type: ignore[import-untyped]

        self.name = name
        self.host = host  # where the CLI sends swarm commands
        self.api = docker.APIClient(base_url=engine_url, timeout=60)
        self.cli_dir = cli_dir
        cli_dir.mkdir(parents=True, exist_ok=True)

    def docker(self, *args: str) -> str:
        return docker_cli(self.host, *args, config_dir=self.cli_dir).stdout

    def containers(self, service: str, all_: bool = False) -> list[dict[str, Any]]:
        return self.api.containers(all=all_, filters={"label": f"{LABEL}={service}"})  # type: ignore[no-any-return]

    def wait(self, cond: Any, what: str) -> float:
        deadline = time.perf_counter() + PHASE_TIMEOUT
        while True:
            if cond():
                return time.perf_counter()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{self.name}: {what} not reached within {PHASE_TIMEOUT:.0f}s")
            time.sleep(POLL)  # bounded polling of the engine, interval stated in the output

    def one_run(self, n: int, tag: str) -> dict[str, float]:
        svc = f"bench{n}x{tag}"
        out: dict[str, float] = {}
        t0 = time.perf_counter()
        self.docker("service", "create", "-d", "-q", "--name", svc, "--replicas", str(n),
                    "shoal-test/busybox:latest", *CMD)
        t1 = self.wait(lambda: len(self.containers(svc)) >= n, f"{n} running")
        out["create"] = t1 - t0

        def updated() -> bool:
            cs = self.containers(svc)
            new = sum(1 for c in cs if (c.get("Labels") or {}).get("bench.gen") == "2")
            return new >= n and new == len(cs)

        t0 = time.perf_counter()
        self.docker("service", "update", "-d", "-q", "--update-parallelism", "10",
                    "--container-label-add", "bench.gen=2", svc)
        t1 = self.wait(updated, f"{n} updated")
        out["update"] = t1 - t0

        t0 = time.perf_counter()
        self.docker("service", "rm", svc)
        t1 = self.wait(lambda: not self.containers(svc, all_=True), "all containers gone")
        out["rm"] = t1 - t0
        return out


def run(quick: bool) -> list[dict[str, Any]]:
    why = ensure_debian(["docker.io"], ["/usr/sbin/dockerd", "docker"])
    if why:
        note("e2e", f"not run: {why}")
        return []
    if shutil.which("nsenter") is None:
        note("e2e", "not run: nsenter missing (util-linux)")
        return []
    from tests.e2e.dockerd import ensure_test_image
    from tests.e2e.shoal_docker import ShoalDocker

    sizes = [10, 50] if quick else [10, 50, 100]
    pairs = 2
    ns_sw = Netns("shoalb-sw", "10.213.1.2", host_ip="10.213.1.1")
    ns_sh = Netns("shoalb-sh", "10.213.2.2", host_ip="10.213.2.1")
    d_sw = NsDockerd(BASE / "sw", DATA / "sw", ns_sw)
    d_sh = NsDockerd(BASE / "sh", DATA / "sh", ns_sh)
    shoal = ShoalDocker(BASE / "shoal", d_sh.url, hostname="shoalb")
    shoal.data_dir = DATA / "shoal"  # on disk like the dockerds' (Swarm's Raft log), not on /run's tmpfs
    records: list[dict[str, Any]] = []
    try:
        for d in (d_sw, d_sh):
            d.cleanup()
            assert d.netns is not None
            d.netns.create()
            d.start()
            ensure_test_image(d.url)
        version = docker_cli(d_sw.url, "version", "--format", "{{.Server.Version}}",
                             config_dir=BASE / "cli-sw").stdout.strip()
        docker_cli(d_sw.url, "swarm", "init", "--advertise-addr", ns_sw.ns_ip, config_dir=BASE / "cli-sw")
        shutil.rmtree(shoal.base, ignore_errors=True)
        shutil.rmtree(shoal.data_dir, ignore_errors=True)
        shoal.start()
        docker_cli(shoal.host, "swarm", "init", "--advertise-addr", "127.0.0.1", config_dir=BASE / "cli-sh")
        sides = {"shoal": Side("Shoal", shoal.host, d_sh.url, BASE / "cli-sh"),
                 "swarm": Side("Swarm", d_sw.url, d_sw.url, BASE / "cli-sw")}
        cond = (f"1 node, 1 manager, dockerd {version} for both, --bridge=none --iptables=false, "
                f"each in its own netns; poll {POLL}s; {pairs} pairs (Shoal, Swarm alternating)")
        conditions("e2e", cond)
        # one unmeasured warm-up service on each side (first container start on a fresh engine)
        for s in sides.values():
            s.one_run(2, "warm")
        for n in sizes:
            got: dict[str, list[dict[str, float]]] = {"shoal": [], "swarm": []}
            for p in range(pairs):
                for key in ("shoal", "swarm"):
                    try:
                        t = sides[key].one_run(n, f"{p}")
                    except (TimeoutError, RuntimeError) as e:
                        note("e2e", f"{key} run N={n} pair {p} failed: {e}")
                        got[key].append({})
                        continue
                    got[key].append(t)
                    print(f"  e2e N={n:<4} pair {p} {key:<5} " +
                          "  ".join(f"{k} {v:6.2f}s" for k, v in t.items()), flush=True)
            for phase in ("create", "update", "rm"):
                pair_ratios = [a[phase] / b[phase] for a, b in zip(got["shoal"], got["swarm"], strict=False)
                               if phase in a and phase in b]
                sh_t = [a[phase] for a in got["shoal"] if phase in a]
                sw_t = [b[phase] for b in got["swarm"] if phase in b]
                case = {"create": f"service create --replicas {n} until {n} running",
                        "update": f"rolling update of {n} (parallelism 10) until converged",
                        "rm": f"service rm of {n} until every container is gone"}[phase]
                if sh_t and sw_t and pair_ratios:
                    records.append(record("e2e", case, "seconds (median)", median(sh_t), "s",
                                          reference=f"Docker Swarm {version}", reference_value=median(sw_t),
                                          ratio=median(pair_ratios), conditions=cond))
                elif sw_t:
                    note("e2e", f"{case}: Shoal did not complete; Swarm median {median(sw_t):.2f}s")
    finally:
        shoal.close()
        shutil.rmtree(shoal.data_dir, ignore_errors=True)
        for d in (d_sw, d_sh):
            d.cleanup()
            if d.netns is not None:
                d.netns.destroy()
    return records


if __name__ == "__main__":
    import argparse
    import json

    from bench import procs

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    with procs.guarded():  # SIGTERM, SIGHUP, Ctrl-C: the clean-up runs and nothing started is left
        print(json.dumps(run(ap.parse_args().quick), indent=1))
