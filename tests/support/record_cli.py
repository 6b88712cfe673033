"""Record the request bodies the stock `docker` CLI sends, as test fixtures.

Run:  python tests/support/record_cli.py [--out tests/fixtures/cli_requests] [--only NAME ...]

A tiny aiohttp server on a unix socket plays a swarm manager just well enough for the CLI to send its
requests: `/_ping` announces API 1.47, list/inspect endpoints answer plausible objects (secrets and configs
are "found" under any name, so the CLI resolves `--secret foo` to ID `id-foo`), and every write request is
recorded. Each scenario below runs one CLI command and writes `<name>.json`:

    {"command": [...argv...], "requests": [{"method", "path", "query", "body"}, ...]}

where `requests` are the write requests (POST/PUT/DELETE) that command made, bodies parsed as JSON.
The fixtures are our own test data; re-record them when the CLI's version changes.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

API_VERSION = "1.47"

BASE_SERVICE_SPEC: dict[str, Any] = {
    "Name": "web",
    "Labels": {},
    "TaskTemplate": {
        "ContainerSpec": {
            "Image": "busybox:latest",
            "Args": ["sleep", "1000"],
            "Init": False,
            "StopGracePeriod": 10_000_000_000,
            "DNSConfig": {},
            "Isolation": "default",
        },
        "Resources": {"Limits": {}, "Reservations": {}},
        "RestartPolicy": {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0},
        "Placement": {},
        "ForceUpdate": 0,
        "Runtime": "container",
    },
    "Mode": {"Replicated": {"Replicas": 3}},
    "UpdateConfig": {
        "Parallelism": 1,
        "FailureAction": "pause",
        "Monitor": 5_000_000_000,
        "MaxFailureRatio": 0,
        "Order": "stop-first",
    },
    "RollbackConfig": {
        "Parallelism": 1,
        "FailureAction": "pause",
        "Monitor": 5_000_000_000,
        "MaxFailureRatio": 0,
        "Order": "stop-first",
    },
    "EndpointSpec": {"Mode": "vip"},
}

SVC = ["service", "create", "-d", "--no-resolve-image"]

# name -> CLI arguments (after `docker`)
SCENARIOS: dict[str, list[str]] = {
    "service_create_full": [
        *SVC,
        "--name",
        "web",
        "--replicas",
        "3",
        "--constraint",
        "node.role==manager",
        "--constraint",
        "node.labels.zone!=b",
        "--placement-pref",
        "spread=node.labels.zone",
        "--replicas-max-per-node",
        "2",
        "--secret",
        "s1",
        "--secret",
        "source=s2,target=/etc/s2.txt,uid=100,gid=101,mode=0400",
        "--config",
        "source=c1,target=/etc/c1.conf",
        "--update-parallelism",
        "2",
        "--update-delay",
        "10s",
        "--update-order",
        "start-first",
        "--update-failure-action",
        "rollback",
        "--update-max-failure-ratio",
        "0.25",
        "--update-monitor",
        "20s",
        "--rollback-parallelism",
        "3",
        "--rollback-order",
        "stop-first",
        "--health-cmd",
        "wget -q -O- localhost || exit 1",
        "--health-interval",
        "5s",
        "--health-retries",
        "3",
        "--health-timeout",
        "2s",
        "--health-start-period",
        "10s",
        "--limit-cpu",
        "0.5",
        "--limit-memory",
        "128m",
        "--reserve-cpu",
        "0.25",
        "--reserve-memory",
        "64m",
        "--limit-pids",
        "100",
        "--publish",
        "8080:80",
        "--publish",
        "published=53,target=53,protocol=udp,mode=host",
        "--env",
        "A=B",
        "--env",
        "C=D",
        "--label",
        "com.example=1",
        "--container-label",
        "ctr=yes",
        "--mount",
        "type=tmpfs,dst=/tmp",
        "--mount",
        "type=volume,src=data,dst=/data,volume-driver=local",
        "--mount",
        "type=bind,src=/etc/hostname,dst=/h,readonly",
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "3s",
        "--restart-max-attempts",
        "4",
        "--restart-window",
        "1m",
        "--stop-grace-period",
        "20s",
        "--stop-signal",
        "SIGINT",
        "--user",
        "nobody",
        "--workdir",
        "/w",
        "--hostname",
        "{{.Service.Name}}-{{.Task.Slot}}",
        "--host",
        "db:10.0.0.9",
        "--dns",
        "8.8.8.8",
        "--dns-search",
        "example.com",
        "--dns-option",
        "ndots:2",
        "--network",
        "net1",
        "--network",
        "name=net2,alias=web2",
        "--log-driver",
        "json-file",
        "--log-opt",
        "max-size=10m",
        "--cap-add",
        "NET_ADMIN",
        "--cap-drop",
        "MKNOD",
        "--sysctl",
        "net.core.somaxconn=1024",
        "--ulimit",
        "nofile=1024:2048",
        "--init",
        "--read-only",
        "--tty",
        "--group",
        "wheel",
        "--generic-resource",
        "gpu=1",
        "--entrypoint",
        "/bin/sh",
        "busybox",
        "-c",
        "sleep 1000",
    ],
    "service_create_minimal": [*SVC, "busybox"],
    "service_create_named_args": [*SVC, "--name", "web", "busybox", "sleep", "1000"],
    "service_create_global": [*SVC, "--name", "agent", "--mode", "global", "busybox", "top"],
    "service_create_replicated_job": [
        *SVC,
        "--name",
        "job",
        "--mode",
        "replicated-job",
        "--max-concurrent",
        "2",
        "--replicas",
        "5",
        "busybox",
        "true",
    ],
    "service_create_global_job": [*SVC, "--name", "gjob", "--mode", "global-job", "busybox", "true"],
    "service_create_dnsrr": [
        *SVC,
        "--name",
        "dns",
        "--endpoint-mode",
        "dnsrr",
        "--publish",
        "mode=host,target=80,published=8081",
        "busybox",
    ],
    "service_create_resolve_image": ["service", "create", "-d", "--name", "res", "busybox:1.36"],
    "service_create_no_healthcheck": [
        *SVC,
        "--name",
        "nohc",
        "--no-healthcheck",
        "--replicas",
        "0",
        "busybox",
    ],
    "service_create_credential_spec": [
        *SVC,
        "--name",
        "cs",
        "--credential-spec",
        "config://c1",
        "--config",
        "c1",
        "busybox",
    ],
    "service_update_image": [
        "service",
        "update",
        "-d",
        "--no-resolve-image",
        "--image",
        "busybox:1.37",
        "web",
    ],
    "service_update_force": ["service", "update", "-d", "--force", "web"],
    "service_update_rollback": ["service", "update", "-d", "--rollback", "web"],
    "service_update_replicas": ["service", "update", "-d", "--replicas", "5", "--env-add", "X=1", "web"],
    "service_scale": ["service", "scale", "-d", "web=7"],
    "service_rollback": ["service", "rollback", "-d", "web"],
    "secret_create": ["secret", "create", "--label", "env=prod", "s1", "@STDIN@"],
    "secret_create_driver": ["secret", "create", "--driver", "vault", "s2"],
    "secret_create_template": ["secret", "create", "--template-driver", "golang", "s3", "@STDIN@"],
    "config_create": ["config", "create", "--label", "k=v", "c1", "@STDIN@"],
    "config_create_template": ["config", "create", "--template-driver", "golang", "c2", "@STDIN@"],
    "network_create_overlay": [
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        "--subnet",
        "10.20.0.0/24",
        "--gateway",
        "10.20.0.1",
        "--label",
        "team=a",
        "--opt",
        "encrypted",
        "net1",
    ],
    "network_create_internal": ["network", "create", "-d", "overlay", "--internal", "--ipv6", "net2"],
    "network_create_ingress": ["network", "create", "-d", "overlay", "--ingress", "my-ingress"],
    "swarm_init": [
        "swarm",
        "init",
        "--advertise-addr",
        "127.0.0.1",
        "--default-addr-pool",
        "10.10.0.0/16",
        "--default-addr-pool",
        "10.20.0.0/16",
        "--default-addr-pool-mask-length",
        "26",
    ],
    "swarm_init_full": [
        "swarm",
        "init",
        "--advertise-addr",
        "127.0.0.1:2377",
        "--listen-addr",
        "0.0.0.0:2377",
        "--data-path-addr",
        "127.0.0.1",
        "--data-path-port",
        "7789",
        "--autolock",
        "--availability",
        "drain",
        "--task-history-limit",
        "3",
        "--cert-expiry",
        "48h",
        "--dispatcher-heartbeat",
        "10s",
        "--snapshot-interval",
        "5000",
        "--max-snapshots",
        "2",
    ],
    "swarm_update": ["swarm", "update", "--task-history-limit", "10", "--cert-expiry", "720h"],
    "node_update": [
        "node",
        "update",
        "--availability",
        "drain",
        "--label-add",
        "zone=a",
        "--label-add",
        "ssd",
        "node1",
    ],
    "node_promote": ["node", "promote", "node1"],
}


def _service(spec: dict[str, Any]) -> dict[str, Any]:
    prev = copy.deepcopy(spec)
    prev["TaskTemplate"]["ContainerSpec"]["Image"] = "busybox:1.35"
    return {
        "ID": "svc1",
        "Version": {"Index": 10},
        "CreatedAt": "2024-01-01T00:00:00.000000001Z",
        "UpdatedAt": "2024-01-01T00:00:00.000000001Z",
        "Spec": spec,
        "PreviousSpec": prev,
        "Endpoint": {"Spec": {"Mode": "vip"}},
    }


NODE = {
    "ID": "node1",
    "Version": {"Index": 9},
    "CreatedAt": "2024-01-01T00:00:00Z",
    "UpdatedAt": "2024-01-01T00:00:00Z",
    "Spec": {"Labels": {"old": "x"}, "Role": "worker", "Availability": "active"},
    "Description": {"Hostname": "vm", "Platform": {"Architecture": "x86_64", "OS": "linux"}},
    "Status": {"State": "ready", "Addr": "127.0.0.1"},
}

SWARM = {
    "ID": "cluster1",
    "Version": {"Index": 10},
    "CreatedAt": "2024-01-01T00:00:00Z",
    "UpdatedAt": "2024-01-01T00:00:00Z",
    "Spec": {
        "Name": "default",
        "Labels": {},
        "Orchestration": {"TaskHistoryRetentionLimit": 5},
        "Raft": {
            "SnapshotInterval": 10000,
            "KeepOldSnapshots": 0,
            "LogEntriesForSlowFollowers": 500,
            "ElectionTick": 10,
            "HeartbeatTick": 1,
        },
        "Dispatcher": {"HeartbeatPeriod": 5_000_000_000},
        "CAConfig": {"NodeCertExpiry": 7_776_000_000_000_000},
        "TaskDefaults": {},
        "EncryptionConfig": {"AutoLockManagers": False},
    },
    "TLSInfo": {},
    "RootRotationInProgress": False,
    "DefaultAddrPool": ["10.0.0.0/8"],
    "SubnetSize": 24,
    "DataPathPort": 4789,
    "JoinTokens": {"Worker": "SWMTKN-1-a-b", "Manager": "SWMTKN-1-a-c"},
}


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        parts = path.strip("/").split("/")
        if parts and parts[0].startswith("v1."):
            parts = parts[1:]
        route = "/" + "/".join(parts)
        raw = await request.read()
        if request.method not in ("GET", "HEAD"):
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
            self.requests.append(
                {"method": request.method, "path": route, "query": dict(request.query), "body": body}
            )
        return self.answer(request, route, parts)

    def answer(self, request: web.Request, route: str, parts: list[str]) -> web.StreamResponse:
        hdrs = {
            "API-Version": API_VERSION,
            "OSType": "linux",
            "Docker-Experimental": "false",
            "Swarm": "active/manager",
            "Server": "Docker/28.0.0 (linux)",
        }
        m = request.method
        if route == "/_ping":
            return web.Response(text="OK", headers=hdrs)
        if route == "/version":
            return web.json_response(
                {
                    "Version": "28.0.0",
                    "ApiVersion": API_VERSION,
                    "MinAPIVersion": "1.24",
                    "Os": "linux",
                    "Arch": "amd64",
                },
                headers=hdrs,
            )
        if route == "/info":
            return web.json_response(
                {
                    "ID": "x",
                    "Swarm": {
                        "NodeID": "node1",
                        "NodeAddr": "127.0.0.1",
                        "LocalNodeState": "active",
                        "ControlAvailable": True,
                        "Cluster": SWARM,
                    },
                },
                headers=hdrs,
            )
        if parts[:1] == ["distribution"]:
            return web.json_response({"message": "denied: no registry here"}, status=403, headers=hdrs)
        if route in ("/secrets", "/configs") and m == "GET":
            flt = json.loads(request.query.get("filters", "{}") or "{}")
            names = list(flt.get("names", flt.get("name", {})))
            return web.json_response(
                [{"ID": f"id-{n}", "Version": {"Index": 1}, "Spec": {"Name": n}} for n in names], headers=hdrs
            )
        if parts[:1] == ["networks"] and m == "GET" and len(parts) == 2:
            n = parts[1]
            return web.json_response(
                {"Name": n, "Id": f"id-{n}", "Scope": "swarm", "Driver": "overlay"}, headers=hdrs
            )
        if parts[:1] == ["services"] and m == "GET" and len(parts) == 2:
            return web.json_response(_service(copy.deepcopy(BASE_SERVICE_SPEC)), headers=hdrs)
        if route in ("/services", "/tasks", "/nodes", "/networks") and m == "GET":
            return web.json_response([], headers=hdrs)
        if route == "/services/create":
            return web.json_response({"ID": "svc1"}, status=201, headers=hdrs)
        if parts[:1] == ["services"] and parts[-1:] == ["update"]:
            return web.json_response({"Warnings": None}, headers=hdrs)
        if route in ("/secrets/create", "/configs/create"):
            return web.json_response({"ID": "obj1"}, status=201, headers=hdrs)
        if route == "/networks/create":
            return web.json_response({"Id": "net1", "Warning": ""}, status=201, headers=hdrs)
        if route == "/swarm/init":
            return web.json_response("node1", headers=hdrs)
        if route == "/swarm" and m == "GET":
            return web.json_response(SWARM, headers=hdrs)
        if route == "/swarm/unlockkey":
            return web.json_response({"UnlockKey": "SWMKEY-1-x"}, headers=hdrs)
        if route == "/swarm/update":
            return web.Response(status=200, headers=hdrs)
        if parts[:1] == ["nodes"] and m == "GET" and len(parts) == 2:
            return web.json_response(NODE, headers=hdrs)
        if parts[:1] == ["nodes"] and parts[-1:] == ["update"]:
            return web.Response(status=200, headers=hdrs)
        return web.json_response({"message": f"not recorded: {m} {route}"}, status=404, headers=hdrs)


async def run(out: Path, only: list[str]) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="shoal-rec-"))
    sock = tmp / "d.sock"
    rec = Recorder()
    runner = web.AppRunner(rec.app())
    await runner.setup()
    site = web.UnixSite(runner, str(sock))
    await site.start()
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(tmp / "cfg")}
    env.pop("DOCKER_CONTEXT", None)
    failures = 0
    try:
        for name, args in SCENARIOS.items():
            if only and name not in only:
                continue
            stdin = None
            argv = list(args)
            if "@STDIN@" in argv:
                argv[argv.index("@STDIN@")] = "-"
                stdin = b"s3cr3t data\n"
            rec.requests.clear()
            proc = await asyncio.create_subprocess_exec(
                "docker",
                *argv,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _so, se = await asyncio.wait_for(proc.communicate(stdin), 60)
            if not rec.requests:
                failures += 1
                print(
                    f"{name}: no write request recorded (rc={proc.returncode}): {se.decode()}",
                    file=sys.stderr,
                )
                continue
            doc = {"command": ["docker", *argv], "requests": rec.requests[:]}
            (out / f"{name}.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            print(f"{name}: rc={proc.returncode} {[r['path'] for r in rec.requests]}")
    finally:
        await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "fixtures" / "cli_requests"))
    ap.add_argument("--only", nargs="*", default=[])
    ns = ap.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(run(out, ns.only)))


if __name__ == "__main__":
    main()
