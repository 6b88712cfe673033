"""What users read and what stack files create, compared with dockerd: the stock CLI's `service ls/ps/inspect
--pretty`, `node ls`, `stack ps`, and `docker stack deploy --resolve-image never` of the stack files in
../shared/stacks/ (the services, networks, secrets and configs each one creates: specs, not running state).

The default run deploys two stacks (one public, `voting-app`, and `coverage-extras`, which covers the deploy
keys no public file uses); SHOAL_DIFF_ALL=1 deploys all of them."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import pytest

from tests.differential.harness import Answer, Pair, Side, cleanup, run_all
from tests.e2e.dockerd import TEST_IMAGE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

STACKS = Path(__file__).resolve().parents[2] / ".." / "shared" / "stacks"
STACKS = STACKS if STACKS.is_dir() else Path("/work/shared/stacks")
DEFAULT_STACKS = ("voting-app", "coverage-extras")


def _running(s: Side, name: str, n: int) -> bool:
    _, tasks, _ = s.request("GET", "/tasks", query={"filters": {"service": [name], "desired-state": ["running"]}})
    return sum(t["Status"]["State"] == "running" for t in tasks) >= n


def _cli(s: Side) -> list[Answer]:
    r = s.cli("service", "create", "--detach", "--no-resolve-image", "--name", "dcli", "--replicas", "2",
              "--label", "a=b", "--env", "X=1", "--limit-memory", "64M", "--restart-condition", "on-failure",
              TEST_IMAGE, "sleep", "600")
    out = [Answer("docker service create", r.returncode, {"stderr": r.stderr.splitlines()})]
    with cleanup(s, "/services/dcli"):
        deadline = time.monotonic() + 60
        while not _running(s, "dcli", 2) and time.monotonic() < deadline:
            time.sleep(0.3)  # polling interval of a bounded poll
        for args in (("service", "ls"), ("service", "ps", "dcli"), ("service", "ps", "--no-trunc", "dcli"),
                     ("service", "inspect", "--pretty", "dcli"), ("node", "ls"), ("secret", "ls"),
                     ("network", "ls", "--filter", "driver=overlay"), ("service", "ps", "missing"),
                     ("service", "inspect", "missing"), ("node", "inspect", "--pretty", "self"),
                     ("service", "scale", "--detach", "dcli=0"), ("service", "ls")):
            out.append(s.cli_answer("docker " + " ".join(args), *args))
    return out


def test_cli_output(pair: Pair) -> None:
    pair.check(_cli, cli=True)


_SMALL_STACK = f"""version: "3.8"
services:
  web:
    image: {TEST_IMAGE}
    command: ["sleep", "600"]
    deploy:
      replicas: 2
      labels: {{diff: "yes"}}
"""


def _stack_ps(s: Side) -> list[Answer]:
    r = s.cli("stack", "deploy", "--resolve-image", "never", "-c", "-", "dsmall", input=_SMALL_STACK)
    out = [Answer("docker stack deploy (small)", r.returncode, {"stdout": sorted(r.stdout.splitlines()),
                                                                "stderr": r.stderr.splitlines()}, cli=True)]
    try:
        deadline = time.monotonic() + 60
        while not _running(s, "dsmall_web", 2) and time.monotonic() < deadline:
            time.sleep(0.3)  # polling interval of a bounded poll
        for args in (("stack", "ps", "dsmall"), ("stack", "ps", "--no-trunc", "--format", "{{.Name}} {{.Image}} "
                                                 "{{.DesiredState}} {{.CurrentState}} {{.Error}}", "dsmall"),
                     ("stack", "services", "dsmall"), ("stack", "ps", "missing")):
            out.append(s.cli_answer("docker " + " ".join(args), *args))
    finally:
        _stack_rm(s, "dsmall")
    return out


def test_stack_ps(pair: Pair) -> None:
    pair.check(_stack_ps)


def _stack_tasks(s: Side, name: str) -> list[Any]:
    """The tasks left of stack `name` (its services' tasks linger after the services, using their networks)."""
    _, tasks, _ = s.request("GET", "/tasks")
    return [t for t in tasks if isinstance(tasks, list)
            and ((t.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels", {}).get(
                "com.docker.stack.namespace") == name]


def _stack_rm(s: Side, name: str) -> None:
    """`docker stack rm`, then wait until its networks and tasks are gone, so that the next scenario's network
    lists do not depend on how far a removal got, and an external network the stack used can be removed."""
    s.cli("stack", "rm", name)
    ns = {"label": [f"com.docker.stack.namespace={name}"]}
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and (s.request("GET", "/networks", query={"filters": ns})[1]
                                           or s.request("GET", "/services", query={"filters": ns})[1]
                                           or _stack_tasks(s, name)):
        time.sleep(0.3)  # polling interval of a bounded poll


def _externals(folder: Path) -> list[list[str]]:
    path = folder / "externals"
    if not path.exists():
        return []
    return [shlex.split(ln) for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _stack_env(folder: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    if (folder / "vars.env").exists():
        for ln in (folder / "vars.env").read_text().splitlines():
            if "=" in ln and not ln.startswith("#"):
                k, v = ln.split("=", 1)
                env[k.strip()] = v.strip()
    return env


def _allocated(svc: dict[str, Any]) -> bool:
    """The allocator has filled in the service's Endpoint (asynchronous on both sides)."""
    spec, ep = svc["Spec"], svc.get("Endpoint") or {}
    if spec.get("EndpointSpec", {}).get("Ports") and not ep.get("Ports"):
        return False
    nets = spec.get("TaskTemplate", {}).get("Networks") or spec.get("Networks")
    vip = spec.get("EndpointSpec", {}).get("Mode", "vip") == "vip"
    return not (nets and vip and not ep.get("VirtualIPs"))


def _stack(folder: Path) -> Any:
    name = "d" + folder.name.replace("-", "")[:10]

    def scenario(s: Side) -> list[Answer]:
        made: list[str] = []
        for kind, obj, *opts in _externals(folder):
            if kind == "network":
                s.cli("network", "create", *opts, obj)
                made.append(f"/networks/{obj}")
            else:
                s.request("POST", f"/{kind}s/create", {"Name": obj, "Data": "ZHVtbXk="})
                made.append(f"/{kind}s/{obj}")
        with cleanup(s, *made):
            r = s.cli("stack", "deploy", "--resolve-image", "never", "-c", "docker-stack.yml", name,
                      cwd=folder, env=_stack_env(folder))
            out = [Answer(f"docker stack deploy {folder.name}", r.returncode,
                          {"stdout": sorted(r.stdout.splitlines()), "stderr": r.stderr.splitlines()})]
            try:
                ns = {"label": [f"com.docker.stack.namespace={name}"]}
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not all(
                        _allocated(x) for x in s.request("GET", "/services", query={"filters": ns})[1]):
                    time.sleep(0.3)  # polling interval: the allocator fills Endpoint after the create
                for kind in ("services", "networks", "secrets", "configs"):
                    status, objs, _ = s.request("GET", f"/{kind}", query={"filters": ns})
                    if kind == "networks":  # the local-scope fields of a network list are not what a stack made
                        objs = [{k: v for k, v in o.items() if k not in ("Containers",)} for o in objs]
                    out.append(Answer(f"GET /{kind}?label=stack ({folder.name})", status, objs))
                # Not the REPLICAS column: running state, and these images never run (tasks are rejected).
                out.append(s.cli_answer(f"docker stack services {folder.name}", "stack", "services", "--format",
                                        "{{.Name}} {{.Mode}} {{.Image}} {{.Ports}}", name))
                out.append(s.cli_answer(f"docker stack ls ({folder.name})", "stack", "ls"))
            finally:
                _stack_rm(s, name)
        return out

    return scenario


@pytest.mark.parametrize("stack", sorted(p.name for p in STACKS.iterdir() if (p / "docker-stack.yml").exists()))
def test_stack_deploy(pair: Pair, stack: str) -> None:
    if stack not in DEFAULT_STACKS and not run_all():
        pytest.skip("SHOAL_DIFF_ALL=1 deploys every stack file; the default run deploys " + ", ".join(DEFAULT_STACKS))
    pair.check(_stack(STACKS / stack))
