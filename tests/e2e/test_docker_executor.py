"""The docker executor against a real, private dockerd (see tests/e2e/dockerd.py and conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from aiodocker.exceptions import DockerError

from shoal.agent.exec.docker import DockerController, DockerExecutor
from shoal.agent.exec.protocol import ExitStatus
from shoal.api.logs import LogLine, LogOptions
from shoal.errors import FatalError, TemporaryError
from shoal.model.objects import (
    SECOND,
    Annotations,
    Config,
    ConfigReference,
    ConfigSpec,
    ContainerSpec,
    FileTarget,
    HealthConfig,
    Secret,
    SecretReference,
    SecretSpec,
    Task,
    TaskSpec,
)
from tests.support.wait import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def new_id() -> str:
    return secrets.token_hex(13)[:25]


class Deps:
    def __init__(self, secrets_: list[Secret] = (), configs: list[Config] = ()) -> None:  # type: ignore[assignment]
        self.secrets = {s.id: s for s in secrets_}
        self.configs = {c.id: c for c in configs}

    def secret(self, secret_id: str) -> Secret | None:
        return self.secrets.get(secret_id)

    def config(self, config_id: str) -> Config | None:
        return self.configs.get(config_id)


@pytest.fixture
def node_id() -> str:
    return new_id()


@pytest.fixture
def client(dockerd: str) -> Iterator[docker.DockerClient]:
    c = docker.DockerClient(base_url=dockerd)
    yield c
    c.close()


@pytest.fixture
async def executor(
    dockerd: str, tmp_path: Path, node_id: str, client: docker.DockerClient
) -> AsyncIterator[DockerExecutor]:
    ex = DockerExecutor(engine_host=dockerd, root=tmp_path / "node", node_id=node_id)
    yield ex
    await ex.close()
    for cont in client.containers.list(all=True, filters={"label": f"com.shoal.node.id={node_id}"}):
        cont.remove(force=True)
    _unmount_leftovers(tmp_path / "node")


def _unmount_leftovers(root: Path) -> None:
    """A test that failed before remove() leaves its secrets tmpfs mounted."""
    for task_dir in (root / "tasks").glob("*"):
        if (task_dir / "secrets").is_mount():
            subprocess.run(["umount", str(task_dir / "secrets")], check=False)


@pytest.fixture
def make_task(test_image: str, node_id: str) -> Callable[..., Task]:
    def make(image: str | None = None, service: str = "svc", slot: int = 1, **spec: Any) -> Task:
        return Task(
            id=new_id(),
            service_id=new_id(),
            service_annotations=Annotations(name=service),
            slot=slot,
            node_id=node_id,
            spec=TaskSpec(container=ContainerSpec(image=image or test_image, **spec)),
        )

    return make


async def run(ctl: DockerController) -> ExitStatus:
    await ctl.prepare()
    await ctl.start()
    return await ctl.wait()


async def collect(ctl: DockerController, **opts: Any) -> list[LogLine]:
    return [line async for line in ctl.logs(LogOptions(**opts))]


async def text(ctl: DockerController, **opts: Any) -> str:
    return b"".join(line.data for line in await collect(ctl, **opts)).decode()


async def test_exit_codes(executor: DockerExecutor, make_task: Callable[..., Task]) -> None:
    ok = executor.controller(make_task(command=("sh", "-c", "exit 0")), Deps())
    assert await run(ok) == ExitStatus(exit_code=0, message="")
    bad = executor.controller(make_task(command=("sh", "-c", "exit 3")), Deps())
    assert await run(bad) == ExitStatus(exit_code=3, message="task: non-zero exit (3)")
    st = await bad.inspect()
    assert st.exists and not st.running and st.exit_code == 3 and st.container_id and st.healthy is None
    # start is idempotent and never restarts an exited container
    await bad.start()
    assert (await bad.inspect()).exit_code == 3
    await bad.remove()
    assert not (await bad.inspect()).exists
    await bad.remove()  # idempotent


async def test_names_labels_and_list(
    executor: DockerExecutor,
    make_task: Callable[..., Task],
    client: docker.DockerClient,
    node_id: str,
    dockerd: str,
    tmp_path: Path,
) -> None:
    task = make_task(service="web", slot=2, command=("sleep", "1000"), labels={"mine": "yes"})
    ctl = executor.controller(task, Deps())
    await ctl.prepare()
    c = client.containers.get(f"web.2.{task.id}")
    assert c.labels == {
        "mine": "yes",
        "com.docker.swarm.task": "",
        "com.docker.swarm.task.id": task.id,
        "com.docker.swarm.task.name": f"web.2.{task.id}",
        "com.docker.swarm.node.id": node_id,
        "com.docker.swarm.service.id": task.service_id,
        "com.docker.swarm.service.name": "web",
        "com.shoal.node.id": node_id,
    }
    assert c.status == "created"
    glob = make_task(service="mon", slot=0, command=("true",))
    await executor.controller(glob, Deps()).prepare()
    client.containers.get(f"mon.{node_id}.{glob.id}")

    assert {task.id, glob.id} <= await executor.list_task_ids()
    other = DockerExecutor(engine_host=dockerd, root=tmp_path / "other", node_id=new_id())
    try:
        assert not ({task.id, glob.id} & await other.list_task_ids())
    finally:
        await other.close()


async def test_env_workdir_command_args(executor: DockerExecutor, make_task: Callable[..., Task]) -> None:
    ctl = executor.controller(
        make_task(
            command=("sh", "-c", 'echo "A=$A"; pwd; echo "$0 $1"'),
            args=("x", "y"),
            env=("A=hello",),
            dir="/tmp",
        ),
        Deps(),
    )
    assert (await run(ctl)).exit_code == 0
    assert await text(ctl) == "A=hello\n/tmp\nx y\n"
    # args alone replace the image's Cmd (the test image has Cmd ["sh"] and no entrypoint)
    ctl2 = executor.controller(make_task(args=("echo", "from-args")), Deps())
    assert (await run(ctl2)).exit_code == 0
    assert await text(ctl2) == "from-args\n"


async def test_secret_and_config_files(
    executor: DockerExecutor, make_task: Callable[..., Task], tmp_path: Path
) -> None:
    sec = Secret(id=new_id(), spec=SecretSpec(annotations=Annotations(name="pw"), data=b"s3cret"))
    cfg = Config(id=new_id(), spec=ConfigSpec(annotations=Annotations(name="app.conf"), data=b"k=v\n"))
    script = (
        "stat -c '%a %u %g' /run/secrets/pw; cat /run/secrets/pw; echo; "
        "stat -c '%a' /etc/app.conf; cat /etc/app.conf; cat /app.conf; echo x > /run/secrets/pw || echo ro"
    )
    task = make_task(
        command=("sh", "-c", script),
        secrets=(
            SecretReference(
                secret_id=sec.id,
                secret_name="pw",
                file=FileTarget(name="pw", uid="1000", gid="1001", mode=0o400),
            ),
        ),
        configs=(
            ConfigReference(config_id=cfg.id, config_name="app.conf", file=FileTarget(name="/etc/app.conf")),
            ConfigReference(config_id=cfg.id, config_name="app.conf", file=FileTarget(name="app.conf")),
        ),
    )
    ctl = executor.controller(task, Deps([sec], [cfg]))
    assert (await run(ctl)).exit_code == 0
    assert await text(ctl, stderr=False) == "400 1000 1001\ns3cret\n444\nk=v\nk=v\nro\n"
    assert "Read-only file system" in await text(ctl, stdout=False)
    task_dir = tmp_path / "node" / "tasks" / task.id
    assert (task_dir / "secrets").is_dir()
    await ctl.remove()
    assert not task_dir.exists()


async def test_missing_secret_is_fatal(executor: DockerExecutor, make_task: Callable[..., Task]) -> None:
    task = make_task(
        secrets=(SecretReference(secret_id="nope", secret_name="pw", file=FileTarget(name="pw")),)
    )
    with pytest.raises(FatalError, match="secret nope not found"):
        await executor.controller(task, Deps()).prepare()


async def test_shutdown_with_grace(executor: DockerExecutor, make_task: Callable[..., Task]) -> None:
    # handles SIGTERM: stops long before the grace period
    polite = executor.controller(
        make_task(command=("sh", "-c", "trap 'exit 3' TERM; while true; do sleep 0.1; done")), Deps()
    )
    await polite.prepare()
    await polite.start()
    await eventually(lambda: _running(polite), what="the polite container running")
    t0 = time.monotonic()
    await polite.shutdown(20)
    assert time.monotonic() - t0 < 15
    assert await polite.wait() == ExitStatus(exit_code=3, message="task: non-zero exit (3)")

    # PID 1 ignores SIGTERM: killed once the grace period is over
    stubborn = executor.controller(make_task(command=("sleep", "1000")), Deps())
    await stubborn.prepare()
    await stubborn.start()
    t0 = time.monotonic()
    await stubborn.shutdown(1)
    assert time.monotonic() - t0 >= 0.9
    assert (await stubborn.wait()).exit_code == 137
    await stubborn.shutdown(1)  # idempotent on a stopped container


async def _running(ctl: DockerController) -> bool:
    return (await ctl.inspect()).running


async def test_terminate(executor: DockerExecutor, make_task: Callable[..., Task]) -> None:
    ctl = executor.controller(make_task(command=("sleep", "1000")), Deps())
    await ctl.prepare()
    await ctl.start()
    waiter = asyncio.create_task(ctl.wait())
    await ctl.terminate()
    assert (await waiter).exit_code == 137
    await ctl.terminate()  # idempotent


async def test_unhealthy_fails_the_task(executor: DockerExecutor, make_task: Callable[..., Task]) -> None:
    hc = HealthConfig(test=("CMD-SHELL", "exit 1"), interval=SECOND // 10, timeout=SECOND, retries=1)
    ctl = executor.controller(
        make_task(command=("sleep", "1000"), healthcheck=hc, stop_grace_period=0), Deps()
    )
    await ctl.prepare()
    await ctl.start()
    with pytest.raises(FatalError) as err:
        await ctl.wait()
    assert err.value.message == "task: non-zero exit (137): dockerexec: unhealthy container"
    st = await ctl.inspect()
    assert st.healthy is False and not st.running


async def test_healthy(executor: DockerExecutor, make_task: Callable[..., Task]) -> None:
    # Three failures in a row to be unhealthy: one probe slowed past its timeout on a loaded host, or one that
    # races the kill below, must not turn the container unhealthy.
    hc = HealthConfig(test=("CMD-SHELL", "true"), interval=SECOND // 10, timeout=5 * SECOND, retries=3)
    ctl = executor.controller(make_task(command=("sleep", "1000"), healthcheck=hc), Deps())
    await ctl.prepare()
    await ctl.start()

    async def healthy() -> bool:
        return (await ctl.inspect()).healthy is True

    await eventually(healthy, what="the container healthy")
    waiter = asyncio.create_task(ctl.wait())
    await ctl.terminate()
    assert (await waiter).exit_code == 137


async def test_logs(executor: DockerExecutor, make_task: Callable[..., Task]) -> None:
    t0 = time.time()
    ctl = executor.controller(
        make_task(
            command=("sh", "-c", "for i in 1 2 3 4 5; do echo out$i; done; echo err1 >&2; printf partial")
        ),
        Deps(),
    )
    assert (await run(ctl)).exit_code == 0
    lines = await collect(ctl)
    assert [(ln.stream, ln.data) for ln in lines if ln.stream == "stdout"] == [
        ("stdout", b"out1\n"),
        ("stdout", b"out2\n"),
        ("stdout", b"out3\n"),
        ("stdout", b"out4\n"),
        ("stdout", b"out5\n"),
        ("stdout", b"partial"),
    ]
    assert [ln.data for ln in lines if ln.stream == "stderr"] == [b"err1\n"]
    assert all(t0 - 5 < ln.timestamp < time.time() + 5 for ln in lines)
    # the last two lines written, whatever their stream (dockerd copies stdout and stderr separately,
    # so the order of err1 among the last stdout lines is not fixed)
    tail = [ln.data for ln in await collect(ctl, tail=2)]
    assert len(tail) == 2 and b"partial" in tail and set(tail) <= {b"out5\n", b"err1\n", b"partial"}
    assert await collect(ctl, tail=0) == []
    assert [ln.data for ln in await collect(ctl, stdout=False)] == [b"err1\n"]
    assert await collect(ctl, since=time.time() + 3600) == []
    assert await collect(ctl, until=t0 - 3600) == []


async def test_logs_follow(executor: DockerExecutor, make_task: Callable[..., Task]) -> None:
    ctl = executor.controller(make_task(command=("sh", "-c", "echo a; sleep 0.3; echo b")), Deps())
    await ctl.prepare()
    await ctl.start()
    got = await collect(ctl, follow=True)  # ends when the container exits
    assert [ln.data for ln in got] == [b"a\n", b"b\n"]
    assert (await ctl.wait()).exit_code == 0
    mid = (got[0].timestamp + got[1].timestamp) / 2
    assert [ln.data for ln in await collect(ctl, since=mid)] == [b"b\n"]
    assert [ln.data for ln in await collect(ctl, until=mid)] == [b"a\n"]


async def test_adoption(
    executor: DockerExecutor,
    make_task: Callable[..., Task],
    dockerd: str,
    tmp_path: Path,
    node_id: str,
    client: docker.DockerClient,
) -> None:
    task = make_task(command=("sleep", "1000"))
    first = executor.controller(task, Deps())
    await first.prepare()
    await first.start()
    cid = (await first.inspect()).container_id

    again = DockerExecutor(engine_host=dockerd, root=tmp_path / "node", node_id=node_id)
    try:
        assert task.id in await again.list_task_ids()
        ctl = again.controller(task, Deps())
        await ctl.prepare()  # adopts, no second container
        await ctl.start()  # already running: no-op
        assert (await ctl.inspect()).container_id == cid
        found = client.containers.list(all=True, filters={"label": f"com.docker.swarm.task.id={task.id}"})
        assert [c.id for c in found] == [cid]
        waiter = asyncio.create_task(ctl.wait())
        await ctl.terminate()
        assert (await waiter).exit_code == 137
        # after a restart the agent cleans up with a bare Task(id=...): found by its task ID label
        bare = again.controller(Task(id=task.id), Deps())
        assert (await bare.inspect()).container_id == cid
        await bare.remove()
        assert (
            client.containers.list(all=True, filters={"label": f"com.docker.swarm.task.id={task.id}"}) == []
        )
        assert task.id not in await again.list_task_ids()
    finally:
        await again.close()


async def test_image_resolution(
    executor: DockerExecutor, make_task: Callable[..., Task], test_image: str, client: docker.DockerClient
) -> None:
    with pytest.raises(FatalError, match=r"^No such image: localhost:1/nope:latest$"):
        await executor.controller(make_task(image="localhost:1/nope"), Deps()).prepare()
    # the CLI pins a digest; the plain tag present locally is used instead
    task = make_task(image=f"{test_image}@sha256:{'0' * 64}", command=("true",))
    ctl = executor.controller(task, Deps())
    assert (await run(ctl)).exit_code == 0
    assert client.containers.get(ctl.name).attrs["Config"]["Image"] == test_image


async def test_describe(executor: DockerExecutor, client: docker.DockerClient) -> None:
    d = await executor.describe()
    info = client.info()
    assert d.hostname == info["Name"]
    assert d.platform.os == "linux"
    assert d.platform.architecture == info["Architecture"]  # x86_64, as dockerd reports the node
    assert d.resources.nano_cpus == info["NCPU"] * SECOND
    assert d.resources.memory_bytes == info["MemTotal"]
    assert d.engine.engine_version == info["ServerVersion"]
    assert {"Type": "Volume", "Name": "local"} in d.engine.plugins


async def test_unreachable_engine_is_temporary(tmp_path: Path) -> None:
    ex = DockerExecutor(engine_host=f"unix://{tmp_path}/no.sock", root=tmp_path)
    try:
        with pytest.raises(TemporaryError):
            await ex.describe()
        with pytest.raises(TemporaryError):
            await ex.list_task_ids()
    finally:
        await ex.close()


async def test_prepare_and_start_cancelled_midway_are_joined_not_repeated(
    executor: DockerExecutor, make_task: Callable[..., Task], client: docker.DockerClient
) -> None:
    """A step cancelled while its request is with the engine (the engine carries on: the name is reserved,
    the container gets created and started) must not make the next prepare()/start() fail with a name
    conflict or start twice: they join the operation under way. Cancelled after delays spread over a
    request's round trip, so some cancellations land while the request is with the engine."""
    for k in (0.0, 0.002, 0.004, 0.006, 0.008, 0.012, 0.016, 0.024):
        task = make_task(command=("sleep", "100"))
        ctl = executor.controller(task, Deps())
        for op in (ctl.prepare, ctl.start):
            fut = asyncio.ensure_future(op())
            await asyncio.sleep(k)  # where the cancellation lands, not a synchronisation
            fut.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fut
            await op()  # joins or repeats harmlessly; never a 409 or a second container
        found = client.containers.list(all=True, filters={"label": f"com.docker.swarm.task.id={task.id}"})
        assert len(found) == 1, k
        assert (await ctl.inspect()).running, k
        await ctl.remove()
        await ctl.close()



async def test_remove_while_prepare_is_under_way_leaves_nothing(
    executor: DockerExecutor, make_task: Callable[..., Task], client: docker.DockerClient
) -> None:
    """The agent removes a task whose prepare step it cancelled while a request was with the engine (the task
    left the node: its service was removed, or it went elsewhere while the node was away). The shielded
    operation carries on after remove() found nothing to remove; what it makes then (the container, the
    secrets tmpfs, the files) must not outlive the task. The image lookup is held at the engine's door until
    remove() has returned."""
    sec = Secret(id=new_id(), spec=SecretSpec(annotations=Annotations(name="s"), data=b"x"))
    task = make_task(command=("sleep", "100"),
                     secrets=(SecretReference(secret_id=sec.id, secret_name="s", file=FileTarget(name="s")),))
    ctl = executor.controller(task, Deps([sec]))
    engine = executor.client
    real = engine._query_json
    reached, gate = asyncio.Event(), asyncio.Event()

    async def query_json(path: str, *args: Any, **kwargs: Any) -> Any:
        if path.startswith("images/") and not gate.is_set():
            reached.set()
            await gate.wait()
        return await real(path, *args, **kwargs)

    engine._query_json = query_json  # type: ignore[method-assign]
    step = asyncio.ensure_future(ctl.prepare())
    await reached.wait()
    step.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await step
    await ctl.remove()
    gate.set()  # the engine now gets the request
    await ctl.close()  # waits for the operation under way
    assert client.containers.list(all=True, filters={"label": f"com.docker.swarm.task.id={task.id}"}) == []
    assert not ctl.task_dir.exists()
    assert await executor.list_task_ids() == set()


async def test_close_does_not_swallow_its_callers_cancellation(
    executor: DockerExecutor, make_task: Callable[..., Task]
) -> None:
    """close() waits for an engine operation under way; the agent calls it inside a session that ends by
    being cancelled, and a cancellation eaten there would leave the session running on without heartbeats."""
    ctl = executor.controller(make_task(), Deps())
    release = asyncio.Event()
    entered = asyncio.Event()

    async def op() -> None:
        entered.set()
        await release.wait()

    under_way = asyncio.ensure_future(ctl._once("prepare", op))
    await entered.wait()
    closing = asyncio.ensure_future(ctl.close())
    await asyncio.sleep(0)  # one turn of the loop: close() runs up to its wait for the operation
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    release.set()
    await under_way


async def test_files_of_a_task_without_a_container_are_listed_and_removed(
    dockerd: str, tmp_path: Path, node_id: str, make_task: Callable[..., Task]
) -> None:
    """A node killed after prepare wrote a task's secrets (a tmpfs when root) but before the container was
    created: the restarted agent knows the task only from what list_task_ids() reports, and removes what is
    not assigned to it any more; the files and the mount must be among it."""
    sec = Secret(id=new_id(), spec=SecretSpec(annotations=Annotations(name="s"), data=b"x"))
    task = make_task(command=("sleep", "100"),
                     secrets=(SecretReference(secret_id=sec.id, secret_name="s", file=FileTarget(name="s")),))
    before = DockerExecutor(engine_host=dockerd, root=tmp_path / "node", node_id=node_id)
    ctl = before.controller(task, Deps([sec]))
    real = before.client._query_json

    async def refuse_create(path: str, *args: Any, **kwargs: Any) -> Any:
        if path == "containers/create":
            raise DockerError(500, {"message": "the node went down here"})
        return await real(path, *args, **kwargs)

    before.client._query_json = refuse_create  # type: ignore[method-assign]
    try:
        with pytest.raises(FatalError):
            await ctl.prepare()
        assert ctl.task_dir.exists()
    finally:
        await before.close()
    after = DockerExecutor(engine_host=dockerd, root=tmp_path / "node", node_id=node_id)  # the restarted node
    try:
        assert task.id in await after.list_task_ids()
        orphan = after.controller(Task(id=task.id, node_id=node_id), Deps())
        await orphan.remove()
        await orphan.close()
        assert not ctl.task_dir.exists()
        assert task.id not in await after.list_task_ids()
    finally:
        await after.close()
        _unmount_leftovers(tmp_path / "node")
