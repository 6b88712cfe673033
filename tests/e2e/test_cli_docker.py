"""The stock `docker` CLI and docker-py against `shoal daemon --executor docker` on a real, private dockerd.

Each test runs its own Shoal node (tests/e2e/shoal_docker.py) on the session's dockerd. What the tests
see through the Shoal socket (`docker service ...`, and `docker ps/exec/logs`, which Shoal proxies to the
engine) is checked against the engine itself through docker-py on the dockerd socket. Several Shoal nodes
(xdist workers) share the dockerd: engine-side queries always filter on this node's labels.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.shoal_docker import ShoalDocker
from tests.support.managers import free_port
from tests.support.wait import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SERVICE_ID = "com.docker.swarm.service.id"
NAME_RE = re.compile(r"^(?P<service>[\w-]+)\.(?P<slot>\d+)\.(?P<task>[0-9a-z]{25})$")


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture
def engine(dockerd: str) -> Iterator[docker.DockerClient]:
    """docker-py on the engine itself (not through Shoal)."""
    c = docker.DockerClient(base_url=dockerd, timeout=60)
    yield c
    c.close()


@pytest.fixture
def shoal(dockerd: str, test_image: str, engine: docker.DockerClient) -> Iterator[ShoalDocker]:
    """A running Shoal node (inactive: not yet in a swarm)."""
    base = Path(tempfile.mkdtemp(prefix="sd", dir="/tmp"))
    node = ShoalDocker(base, dockerd, hostname="node1")
    node.start()
    node_ids: set[str] = set()
    node.seen_node_ids = node_ids  # type: ignore[attr-defined]
    try:
        yield node
    finally:
        if node.alive():
            info = node.docker("info", "--format", "{{.Swarm.NodeID}}", check=False).stdout.strip()
            if info:
                node_ids.add(info)
            node.docker("swarm", "leave", "--force", check=False)
        node.stop()
        # Whatever a failed test left behind on the shared engine.
        for nid in node_ids:
            for c in engine.containers.list(all=True, filters={"label": f"com.shoal.node.id={nid}"}):
                c.remove(force=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def swarm(shoal: ShoalDocker) -> ShoalDocker:
    """A Shoal node that is the single manager of a new swarm."""
    init(shoal)
    return shoal


# --- helpers ------------------------------------------------------------------------------------------


def init(node: ShoalDocker) -> str:
    node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")
    nid = node.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    assert nid
    node.seen_node_ids.add(nid)  # type: ignore[attr-defined]
    return nid


def service_id(node: ShoalDocker, name: str) -> str:
    return node.docker("service", "inspect", "--format", "{{.ID}}", name).stdout.strip()


def containers(engine: docker.DockerClient, *labels: str) -> list[Any]:
    """Containers on the engine (running or not) carrying all `labels` (`key=value`)."""
    out = []
    for summary in engine.api.containers(all=True, filters={"label": list(labels)}):
        try:
            out.append(engine.containers.get(summary["Id"]))
        except docker.errors.NotFound:
            continue  # removed between the list and the inspect
    return out


def running(engine: docker.DockerClient, sid: str) -> list[Any]:
    return [c for c in containers(engine, f"{SERVICE_ID}={sid}") if c.status == "running"]


def wait_running(engine: docker.DockerClient, sid: str, n: int, timeout: float = 60) -> list[Any]:
    def ok() -> list[Any] | None:
        cs = running(engine, sid)
        return cs if len(cs) == n else None

    return wait_until(ok, timeout, what=f"{n} running containers of service {sid}")


def tasks(node: ShoalDocker, service: str, *extra: str) -> list[dict[str, str]]:
    out = node.docker("service", "ps", "--no-trunc", "--format", "{{json .}}", *extra, service).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def ps_names(node: ShoalDocker, service: str) -> set[str]:
    """Names of the service's running containers listed by `docker ps` through the Shoal socket (proxied
    to the engine). Filtered by service ID: other tests' nodes may run a service of the same name."""
    out = node.docker("ps", "--filter", f"label=com.docker.swarm.service.id={service_id(node, service)}",
                      "--filter", f"label=com.docker.swarm.service.name={service}",
                      "--format", "{{.Names}}").stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def one_container(engine: docker.DockerClient, node: ShoalDocker, service: str) -> Any:
    sid = service_id(node, service)
    (c,) = wait_running(engine, sid, 1)
    return c


# --- swarm init / leave ---------------------------------------------------------------------------------


def test_init_leave_init_cycles_remove_task_containers(
    shoal: ShoalDocker, engine: docker.DockerClient, test_image: str
) -> None:
    assert shoal.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "inactive"
    previous = ""
    for _ in range(2):
        nid = init(shoal)
        assert nid != previous
        previous = nid
        assert shoal.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "active"
        assert shoal.docker("service", "ls", "-q").stdout.strip() == ""
        shoal.docker("service", "create", "-d", "--name", "web", "--replicas", "2", "--no-resolve-image",
                     test_image, "sleep", "1000")
        wait_running(engine, service_id(shoal, "web"), 2)
        assert len(containers(engine, f"com.shoal.node.id={nid}")) == 2
        out = shoal.docker("swarm", "leave", "--force")
        assert "Node left the swarm." in out.stdout
        # dockerd removes a node's task containers when it leaves.
        assert containers(engine, f"com.shoal.node.id={nid}") == []
        assert shoal.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "inactive"
        res = shoal.docker("service", "ls", check=False)
        assert res.returncode != 0
        assert "This node is not a swarm manager" in res.stderr


# --- create: names, labels, image resolution -----------------------------------------------------------


@pytest.mark.parametrize("resolve", [False, True], ids=["no-resolve-image", "resolve-image"])
def test_service_create_names_and_labels(
    swarm: ShoalDocker, engine: docker.DockerClient, test_image: str, resolve: bool
) -> None:
    args = ["service", "create", "-d", "--name", "web", "--replicas", "3"]
    if not resolve:
        args.append("--no-resolve-image")
    res = swarm.docker(*args, test_image, "sleep", "1000")
    if resolve:
        # No registry: the CLI warns and proceeds with the tag; the local image must be used.
        assert "could not be accessed on a registry" in res.stderr
    sid = res.stdout.strip()
    assert sid == service_id(swarm, "web")
    nid = swarm.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    cs = wait_running(engine, sid, 3)

    task_ids = {t["ID"] for t in tasks(swarm, "web")}
    slots = set()
    for c in cs:
        m = NAME_RE.match(c.name)
        assert m, c.name
        assert m["service"] == "web"
        assert m["task"] in task_ids
        slots.add(int(m["slot"]))
        labels = c.labels
        assert labels["com.docker.swarm.service.name"] == "web"
        assert labels["com.docker.swarm.service.id"] == sid
        assert labels["com.docker.swarm.task.id"] == m["task"]
        assert labels["com.docker.swarm.task.name"] == c.name
        assert labels["com.docker.swarm.node.id"] == nid
        assert "com.docker.swarm.task" in labels
        assert c.attrs["Config"]["Image"].startswith(test_image)
        assert c.attrs["Config"]["Cmd"] == ["sleep", "1000"]
    assert slots == {1, 2, 3}
    # `docker ps` through the Shoal socket is the engine's own list.
    assert ps_names(swarm, "web") == {c.name for c in cs}
    # service ls reports running/desired.
    ls = swarm.docker("service", "ls", "--format", "{{.Name}} {{.Replicas}}").stdout.split("\n")
    assert "web 3/3" in ls


# --- exec, logs, secrets and configs ---------------------------------------------------------------------


def test_exec_logs_secrets_and_configs(swarm: ShoalDocker, engine: docker.DockerClient, test_image: str) -> None:
    swarm.docker("secret", "create", "s1", "-", input=b"top-secret-value")
    swarm.docker("config", "create", "c1", "-", input=b"key=value\n")
    swarm.docker(
        "service", "create", "-d", "--name", "web", "--no-resolve-image",
        "--secret", "source=s1,target=s1,mode=0400",
        "--config", "source=c1,target=/etc/c1.conf,mode=0440",
        test_image, "sh", "-c", "echo hello-stdout; echo hello-stderr >&2; exec sleep 1000",
    )
    c = one_container(engine, swarm, "web")

    assert swarm.docker("exec", c.name, "cat", "/run/secrets/s1").stdout == "top-secret-value"
    assert swarm.docker("exec", c.name, "cat", "/etc/c1.conf").stdout == "key=value\n"
    modes = swarm.docker("exec", c.name, "stat", "-c", "%a %n", "/run/secrets/s1", "/etc/c1.conf").stdout
    assert modes.split("\n")[:2] == ["400 /run/secrets/s1", "440 /etc/c1.conf"]
    # Hijacked stdin through the Shoal socket.
    assert swarm.docker("exec", "-i", c.name, "tr", "a-z", "A-Z", input=b"piped in\n").stdout == "PIPED IN\n"
    # Read-only inside the container.
    assert swarm.docker("exec", c.name, "sh", "-c", "echo x > /run/secrets/s1", check=False).returncode != 0

    logs = swarm.docker("logs", c.name)
    assert logs.stdout == "hello-stdout\n"
    assert logs.stderr == "hello-stderr\n"

    def service_logs() -> str | None:
        out = swarm.docker("service", "logs", "--no-task-ids", "web")
        text = out.stdout + out.stderr
        return text if "hello-stdout" in text and "hello-stderr" in text else None

    text = wait_until(service_logs, 20, what="service logs")
    for line in filter(None, text.splitlines()):
        assert re.match(r"^web\.1@node1\s+\| hello-std(out|err)$", line), line
    (task,) = tasks(swarm, "web")
    by_task = swarm.docker("service", "logs", "--raw", task["ID"])
    assert (by_task.stdout, by_task.stderr) == ("hello-stdout\n", "hello-stderr\n")
    raw = swarm.docker("service", "logs", "--raw", "web")
    assert raw.stdout == "hello-stdout\n"
    assert raw.stderr == "hello-stderr\n"

    # A secret in use cannot be removed (dockerd's message).
    res = swarm.docker("secret", "rm", "s1", check=False)
    assert res.returncode != 0
    assert "is in use by the following service: web" in res.stderr


def test_container_settings_translated(swarm: ShoalDocker, engine: docker.DockerClient, test_image: str) -> None:
    swarm.docker(
        "service", "create", "-d", "--name", "cfg", "--no-resolve-image",
        "-e", "FOO=bar", "--env", "EMPTY=",
        "--workdir", "/tmp", "--user", "65534:65534",
        "--limit-memory", "64m", "--limit-cpu", "0.5", "--reserve-memory", "32m",
        "--stop-grace-period", "2s", "--stop-signal", "SIGUSR1",
        "--health-cmd", "test -d /tmp", "--health-interval", "1s", "--health-timeout", "3s",
        "--health-retries", "2", "--health-start-period", "1s",
        "--hostname", "svc-host", "--label", "svc=label", "--container-label", "ctr=label",
        test_image, "sh", "-c", "exec sleep 1000",
    )
    c = one_container(engine, swarm, "cfg")
    cfg, host = c.attrs["Config"], c.attrs["HostConfig"]
    assert "FOO=bar" in cfg["Env"] and "EMPTY=" in cfg["Env"]
    assert cfg["WorkingDir"] == "/tmp"
    assert cfg["User"] == "65534:65534"
    assert cfg["Cmd"] == ["sh", "-c", "exec sleep 1000"]
    assert cfg["Hostname"] == "svc-host"
    assert cfg["StopTimeout"] == 2
    assert cfg["StopSignal"] == "SIGUSR1"
    assert cfg["Labels"]["ctr"] == "label"
    assert "svc" not in cfg["Labels"]  # service labels stay on the service
    assert cfg["Healthcheck"] == {
        "Test": ["CMD-SHELL", "test -d /tmp"],
        "Interval": 1_000_000_000,
        "Timeout": 3_000_000_000,
        "StartPeriod": 1_000_000_000,
        "Retries": 2,
    }
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["MemoryReservation"] == 32 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    # Inside: the process runs as that user, in that directory, with that environment.
    out = swarm.docker("exec", c.name, "sh", "-c", "id -u; pwd; echo $FOO; hostname").stdout.split()
    assert out == ["65534", "/tmp", "bar", "svc-host"]

    def healthy() -> bool:
        c.reload()
        return c.attrs["State"].get("Health", {}).get("Status") == "healthy"

    wait_until(healthy, 30, what="container healthy")
    # The task is running only once its container is healthy.
    wait_until(lambda: swarm.docker("service", "ps", "--format", "{{.CurrentState}}", "cfg").stdout
               .startswith("Running"), 10, what="task running")


def test_unhealthy_container_fails_the_task_and_is_replaced(
    swarm: ShoalDocker, engine: docker.DockerClient, test_image: str
) -> None:
    swarm.docker("service", "create", "-d", "--name", "sick", "--no-resolve-image", "--health-cmd", "false",
                 "--health-interval", "300ms", "--health-retries", "1", "--stop-grace-period", "1s",
                 "--restart-delay", "100ms", test_image, "sleep", "1000")

    def failed() -> list[dict[str, str]] | None:
        ts = [t for t in tasks(swarm, "sick") if t["CurrentState"].startswith("Failed")]
        return ts or None

    t = wait_until(failed, 30, what="a failed task")[0]
    assert t["Error"] == '"task: non-zero exit (137): dockerexec: unhealthy container"'
    # Replaced in the same slot; the failed task's container is kept (task history), stopped.
    sid = service_id(swarm, "sick")
    wait_until(lambda: len(containers(engine, f"{SERVICE_ID}={sid}")) >= 2, 30, what="a replacement container")
    old = engine.containers.get(f"sick.1.{t['ID']}")
    assert old.status == "exited"


# --- scale, update, remove ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_scale_update_start_first_and_remove(
    swarm: ShoalDocker, engine: docker.DockerClient, test_image: str
) -> None:
    swarm.docker("service", "create", "-d", "--name", "web", "--replicas", "2", "--no-resolve-image",
                 "--stop-grace-period", "1s", test_image, "sleep", "1000")
    sid = service_id(swarm, "web")
    wait_running(engine, sid, 2)

    swarm.docker("service", "scale", "-d", "web=4")
    cs = wait_running(engine, sid, 4)
    assert sorted(int(NAME_RE.match(c.name)["slot"]) for c in cs) == [1, 2, 3, 4]  # type: ignore[index]

    swarm.docker("service", "scale", "-d", "web=3")

    def scaled_down() -> bool:
        return len(containers(engine, f"{SERVICE_ID}={sid}")) == 3 and len(running(engine, sid)) == 3

    wait_until(scaled_down, 60, what="3 containers after scaling down")
    before = {c.id: c.name for c in running(engine, sid)}

    swarm.docker("service", "update", "-d", "--update-order", "start-first", "--update-parallelism", "2",
                 "--env-add", "VERSION=2", "web")

    def updated() -> list[Any] | None:
        cs = running(engine, sid)
        new = [c for c in cs if "VERSION=2" in (c.attrs["Config"]["Env"] or [])]
        return new if len(new) == 3 and len(cs) == 3 else None

    new = wait_until(updated, 90, what="3 updated containers")
    assert not {c.id for c in new} & set(before)
    # start-first: in every slot, the new container was running before the old one stopped.
    old_by_slot = {}
    for cid in before:
        old = engine.containers.get(cid)
        old_by_slot[old.labels["com.docker.swarm.task.name"].split(".")[1]] = old
    for c in new:
        slot = NAME_RE.match(c.name)["slot"]  # type: ignore[index]
        old = old_by_slot[slot]
        assert old.status == "exited"
        assert c.attrs["State"]["StartedAt"] < old.attrs["State"]["FinishedAt"], (slot, c.attrs["State"],
                                                                                   old.attrs["State"])
    swarm.docker("service", "rm", "web")
    wait_until(lambda: containers(engine, f"{SERVICE_ID}={sid}") == [], 60, what="containers removed")
    assert swarm.docker("service", "ls", "-q").stdout.strip() == ""


# --- placement -------------------------------------------------------------------------------------------------


def test_constraints_and_preferences(swarm: ShoalDocker, engine: docker.DockerClient, test_image: str) -> None:
    swarm.docker("service", "create", "-d", "--name", "here", "--no-resolve-image",
                 "--constraint", "node.hostname==node1", "--constraint", "node.role==manager",
                 "--placement-pref", "spread=node.labels.zone", test_image, "sleep", "1000")
    swarm.docker("service", "create", "-d", "--name", "nowhere", "--no-resolve-image",
                 "--constraint", "node.hostname==other", test_image, "sleep", "1000")
    one_container(engine, swarm, "here")
    spec = json.loads(swarm.docker("service", "inspect", "here").stdout)[0]["Spec"]["TaskTemplate"]["Placement"]
    assert spec["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]

    def pending() -> dict[str, str] | None:
        ts = tasks(swarm, "nowhere")
        return ts[0] if ts and ts[0]["Error"] else None

    t = wait_until(pending, 30, what="a pending task with an error")
    assert t["CurrentState"].startswith("Pending")
    assert t["Error"] == '"no suitable node (scheduling constraints not satisfied on 1 node)"'
    assert containers(engine, f"{SERVICE_ID}={service_id(swarm, 'nowhere')}") == []

    # Once the constraint can be met, the task is placed.
    swarm.docker("service", "update", "-d", "--constraint-rm", "node.hostname==other",
                 "--constraint-add", "node.hostname!=other", "nowhere")
    one_container(engine, swarm, "nowhere")


# --- stacks --------------------------------------------------------------------------------------------------------


COMPOSE = """\
version: "3.8"
services:
  front:
    image: {image}
    command: ["sh", "-c", "cat /run/secrets/token; echo; exec sleep 1000"]
    stop_grace_period: 1s
    environment:
      ROLE: front
    secrets:
      - source: token
        mode: 0400
    deploy:
      replicas: 2
      update_config:
        parallelism: 2
        order: start-first
      resources:
        limits:
          memory: 32M
  back:
    image: {image}
    command: ["sleep", "1000"]
    stop_grace_period: 1s
    configs:
      - source: settings
        target: /etc/back.conf
    deploy:
      placement:
        constraints: [node.role == manager]
secrets:
  token:
    file: ./token.txt
configs:
  settings:
    file: ./settings.conf
"""


@pytest.mark.slow
def test_stack_deploy_services_ps_rm(
    swarm: ShoalDocker, engine: docker.DockerClient, test_image: str, tmp_path: Path
) -> None:
    (tmp_path / "token.txt").write_text("stack-token")
    (tmp_path / "settings.conf").write_text("setting=1\n")
    (tmp_path / "compose.yml").write_text(COMPOSE.format(image=test_image))
    out = swarm.docker("stack", "deploy", "-c", "compose.yml", "--resolve-image", "never", "app", cwd=tmp_path)
    assert "Creating service app_front" in out.stdout
    assert "Creating service app_back" in out.stdout

    front, back = service_id(swarm, "app_front"), service_id(swarm, "app_back")
    fronts = wait_running(engine, front, 2)
    (b,) = wait_running(engine, back, 1)
    assert all(c.labels["com.docker.stack.namespace"] == "app" for c in [*fronts, b])
    assert swarm.docker("exec", fronts[0].name, "cat", "/run/secrets/token").stdout == "stack-token"
    assert swarm.docker("exec", b.name, "cat", "/etc/back.conf").stdout == "setting=1\n"
    assert fronts[0].attrs["HostConfig"]["Memory"] == 32 * 1024 * 1024
    assert "ROLE=front" in fronts[0].attrs["Config"]["Env"]
    wait_until(lambda: swarm.docker("logs", fronts[0].name).stdout == "stack-token\n", 10, what="docker logs")

    ls = swarm.docker("stack", "ls", "--format", "{{.Name}} {{.Services}}").stdout.split("\n")
    assert "app 2" in ls

    def services() -> bool:
        rows = swarm.docker("stack", "services", "--format", "{{.Name}} {{.Mode}} {{.Replicas}}", "app").stdout
        return sorted(rows.split("\n")[:2]) == ["app_back replicated 1/1", "app_front replicated 2/2"]

    wait_until(services, 30, what="stack services 2/2 and 1/1")
    ps = swarm.docker("stack", "ps", "--format", "{{.Name}} {{.CurrentState}}", "app").stdout.splitlines()
    assert sorted(line.split()[0] for line in ps) == ["app_back.1", "app_front.1", "app_front.2"]
    assert all(line.split()[1] == "Running" for line in ps)
    assert swarm.docker("secret", "ls", "--format", "{{.Name}}").stdout.split() == ["app_token"]
    assert swarm.docker("config", "ls", "--format", "{{.Name}}").stdout.split() == ["app_settings"]

    out = swarm.docker("stack", "rm", "app")
    assert "Removing service app_front" in out.stdout
    nid = swarm.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    wait_until(lambda: containers(engine, "com.docker.stack.namespace=app", f"com.shoal.node.id={nid}") == [],
               60, what="stack containers removed")
    assert swarm.docker("service", "ls", "-q").stdout.strip() == ""
    assert swarm.docker("secret", "ls", "-q").stdout.strip() == ""
    assert swarm.docker("config", "ls", "-q").stdout.strip() == ""


# --- restart -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_during_scale_up_converges_without_duplicates(
    swarm: ShoalDocker, engine: docker.DockerClient, test_image: str
) -> None:
    swarm.docker("secret", "create", "s1", "-", input=b"kept-across-restarts")
    swarm.docker("service", "create", "-d", "--name", "web", "--replicas", "2", "--no-resolve-image",
                 "--secret", "s1", test_image, "sleep", "1000")
    sid = service_id(swarm, "web")
    first = {c.id for c in wait_running(engine, sid, 2)}

    swarm.docker("service", "scale", "-d", "web=6")
    swarm.kill()
    at_kill = len(running(engine, sid))
    swarm.start()

    def converged() -> list[Any] | None:
        cs = containers(engine, f"{SERVICE_ID}={sid}")
        if len(cs) != 6 or any(c.status != "running" for c in cs):
            return None
        states = [t["CurrentState"].split()[0] for t in tasks(swarm, "web", "--filter", "desired-state=running")]
        return cs if states == ["Running"] * 6 else None

    cs = wait_until(converged, 90, what="6 running containers, 6 running tasks")
    slots = sorted(int(NAME_RE.match(c.name)["slot"]) for c in cs)  # type: ignore[index]
    assert slots == [1, 2, 3, 4, 5, 6]
    assert len({c.labels["com.docker.swarm.task.id"] for c in cs}) == 6
    assert first <= {c.id for c in cs}, "the containers running before the kill were adopted, not replaced"
    print(f"running containers when the daemon was killed: {at_kill} of 6")
    for c in cs:  # the tasks started after the restart got their secret too
        assert swarm.docker("exec", c.name, "cat", "/run/secrets/s1").stdout == "kept-across-restarts"
    # The same again through the Shoal socket, and after another crash with nothing in flight.
    assert len(ps_names(swarm, "web")) == 6
    swarm.kill()
    swarm.start()
    again = wait_until(converged, 60, what="still 6 after a second restart")
    assert {c.id for c in again} == {c.id for c in cs}
    # Leaving after the restarts still removes every task container (adopted ones included).
    nid = swarm.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    swarm.docker("swarm", "leave", "--force")
    assert containers(engine, f"com.shoal.node.id={nid}") == []


# --- docker-py ---------------------------------------------------------------------------------------------------


def test_docker_py_services_tasks_logs(swarm: ShoalDocker, engine: docker.DockerClient, test_image: str) -> None:
    client = swarm.client()
    try:
        secret = client.secrets.create(name="pysecret", data=b"from-docker-py")
        ref = docker.types.SecretReference(secret.id, "pysecret", filename="pysecret", mode=0o440)
        svc = client.services.create(
            test_image, ["sh", "-c", "cat /run/secrets/pysecret; echo; exec sleep 1000"],
            name="pysvc", secrets=[ref], env=["A=1"], stop_grace_period=1_000_000_000,
        )
        assert svc.name == "pysvc"

        def running_tasks() -> list[dict[str, Any]] | None:
            ts = svc.tasks(filters={"desired-state": "running"})
            return ts if len(ts) == 1 and ts[0]["Status"]["State"] == "running" else None

        (t,) = wait_until(running_tasks, 60, what="a running task")
        cid = t["Status"]["ContainerStatus"]["ContainerID"]
        c = engine.containers.get(cid)
        assert c.name == f"pysvc.1.{t['ID']}"
        assert c.labels["com.docker.swarm.service.id"] == svc.id
        assert client.containers.get(cid).name == c.name  # the Shoal socket proxies containers too

        def logs() -> bytes | None:
            data = b"".join(svc.logs(stdout=True, stderr=True))
            return data if b"from-docker-py" in data else None

        assert wait_until(logs, 20, what="service logs") .strip().endswith(b"from-docker-py")
        svc.scale(2)
        wait_running(engine, svc.id, 2)
        svc.remove()
        wait_until(lambda: containers(engine, f"{SERVICE_ID}={svc.id}") == [], 60, what="containers removed")
    finally:
        client.close()


# --- bad input ----------------------------------------------------------------------------------------------------


def test_bad_input_answered_like_dockerd(swarm: ShoalDocker, engine: docker.DockerClient, test_image: str) -> None:
    swarm.docker("service", "create", "-d", "--name", "web", "--no-resolve-image", test_image, "sleep", "1000")
    dup = swarm.docker("service", "create", "-d", "--name", "web", "--no-resolve-image", test_image, "sleep", "1",
                       check=False)
    assert dup.returncode == 1
    assert dup.stderr.strip() == ("Error response from daemon: rpc error: code = AlreadyExists desc = name conflicts "
                                  "with an existing object: service web already exists")
    bad = swarm.docker("service", "create", "-d", "--name", "bad", "--constraint", "node.hostname=x",
                       "--no-resolve-image", test_image, "sleep", "1", check=False)
    assert bad.returncode == 1
    assert "constraint expected one operator from ==, !=" in bad.stderr
    missing = swarm.docker("service", "rm", "nope", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error response from daemon: service nope not found"
    assert swarm.docker("service", "ls", "--format", "{{.Name}}").stdout.split() == ["web"]

    client = swarm.client()
    try:
        svc = client.services.get("web")
        stale = svc.attrs["Version"]["Index"]
        svc.update(env=["A=1"])
        spec = docker.types.TaskTemplate(docker.types.ContainerSpec(test_image, ["sleep", "2"]))
        with pytest.raises(docker.errors.APIError) as exc:
            client.api.update_service(svc.id, stale, task_template=spec)
        assert exc.value.status_code == 500
        assert "update out of sequence" in str(exc.value.explanation)
        with pytest.raises(docker.errors.NotFound):
            client.services.get("nope")
    finally:
        client.close()
