"""The process executor, with real processes (/bin/sh, sleep, echo) under a temporary root."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.agent.exec.process import ProcessController, ProcessExecutor
from shoal.agent.exec.step import is_done, step
from shoal.api.logs import LogLine, LogOptions
from shoal.clock import SystemClock
from shoal.errors import FatalError
from shoal.model.objects import (
    SECOND,
    Config,
    ConfigReference,
    ConfigSpec,
    ContainerSpec,
    FileTarget,
    HealthConfig,
    ResourceRequirements,
    Resources,
    Secret,
    SecretReference,
    SecretSpec,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.model.state import TaskState

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


class Deps:
    def __init__(self, secrets: dict[str, bytes] | None = None,
                 configs: dict[str, bytes] | None = None) -> None:
        self.secrets = secrets or {}
        self.configs = configs or {}

    def secret(self, secret_id: str) -> Secret | None:
        data = self.secrets.get(secret_id)
        return None if data is None else Secret(id=secret_id, spec=SecretSpec(data=data))

    def config(self, config_id: str) -> Config | None:
        data = self.configs.get(config_id)
        return None if data is None else Config(id=config_id, spec=ConfigSpec(data=data))


def mktask(tid: str, *command: str, **container: object) -> Task:
    spec = ContainerSpec(image="busybox", command=tuple(command), **container)  # type: ignore[arg-type]
    return Task(id=tid, spec=TaskSpec(container=spec), status=TaskStatus(state=TaskState.ASSIGNED))


def read_text(p: Path) -> str:
    return p.read_text()


def ismount(p: Path) -> bool:
    return os.path.ismount(p)


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:].split()[0] != b"Z"


@pytest.fixture
async def executor(tmp_path: Path) -> AsyncIterator[ProcessExecutor]:
    ex = ProcessExecutor(tmp_path / "root", hostname="node-1")
    yield ex
    for tid in await ex.list_task_ids():  # kill leftovers, unmount tmpfs
        await ex.controller(Task(id=tid), Deps()).remove()


async def run(ctlr: ProcessController) -> int:
    await ctlr.prepare()
    await ctlr.start()
    return (await asyncio.wait_for(ctlr.wait(), 30)).exit_code


async def collect(ctlr: ProcessController, **opts: object) -> list[LogLine]:
    return [ln async for ln in ctlr.logs(LogOptions(**opts))]  # type: ignore[arg-type]


async def first_line(ctlr: ProcessController) -> bytes:
    async def go() -> bytes:
        async for ln in ctlr.logs(LogOptions(follow=True)):
            return ln.data
        return b""
    return await asyncio.wait_for(go(), 20)


async def test_step_end_to_end_completes(executor: ProcessExecutor) -> None:
    task = mktask("ok1", "echo", "hello")
    ctlr = executor.controller(task, Deps())
    clock = SystemClock()
    states = []
    while not is_done(task):
        st = await asyncio.wait_for(step(task, ctlr, clock), 30)
        states.append(st.state)
        task = dataclasses.replace(task, status=st)
    assert states == [TaskState.ACCEPTED, TaskState.PREPARING, TaskState.READY, TaskState.STARTING,
                      TaskState.RUNNING, TaskState.COMPLETE]
    assert task.status.message == "finished"
    assert task.status.container is not None and task.status.container.exit_code == 0
    assert task.status.container.container_id == "ok1"
    assert [ln.data for ln in await collect(ctlr)] == [b"hello\n"]
    assert await executor.list_task_ids() == {"ok1"}
    # Removal through the step.
    task = dataclasses.replace(task, desired_state=TaskState.REMOVE)
    st = await step(task, ctlr, clock)
    assert st.message == "removed"
    assert not executor.task_dir("ok1").exists()
    assert await executor.list_task_ids() == set()


async def test_non_zero_exit_fails_task(executor: ProcessExecutor) -> None:
    task = mktask("bad1", "/bin/sh", "-c", "echo oops >&2; exit 3")
    ctlr = executor.controller(task, Deps())
    clock = SystemClock()
    while not is_done(task):
        task = dataclasses.replace(task, status=await asyncio.wait_for(step(task, ctlr, clock), 30))
    assert task.status.state == TaskState.FAILED
    assert task.status.err == "task: non-zero exit (3)"
    assert task.status.container is not None and task.status.container.exit_code == 3
    rs = await ctlr.inspect()
    assert rs.exists and not rs.running and rs.exit_code == 3


async def test_missing_command_rejected(executor: ProcessExecutor) -> None:
    task = dataclasses.replace(mktask("nocmd"), status=TaskStatus(state=TaskState.PREPARING))
    st = await step(task, executor.controller(task, Deps()), SystemClock())
    assert st.state == TaskState.REJECTED and "needs a command" in st.err


async def test_image_as_executable(executor: ProcessExecutor) -> None:
    task = Task(id="img1", spec=TaskSpec(container=ContainerSpec(image="process:/bin/echo", args=("hi",))))
    ctlr = executor.controller(task, Deps())
    assert await run(ctlr) == 0
    assert [ln.data for ln in await collect(ctlr)] == [b"hi\n"]


async def test_exec_failure_is_fatal(executor: ProcessExecutor) -> None:
    ctlr = executor.controller(mktask("noexe", "/nonexistent/prog"), Deps())
    await ctlr.prepare()
    with pytest.raises(FatalError, match="executable file not found"):
        await ctlr.start()


async def test_env_and_workdir(executor: ProcessExecutor, tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    wd.mkdir()
    task = mktask("env1", "/bin/sh", "-c", 'echo "$FOO|$PWD|$HOSTNAME|$SHOAL_SECRETS_DIR"',
                  env=("FOO=bar baz",), dir=str(wd))
    ctlr = executor.controller(task, Deps())
    assert await run(ctlr) == 0
    out = (await collect(ctlr))[0].data.decode()
    assert out == f"bar baz|{wd}|node-1|{executor.task_dir('env1') / 'secrets'}\n"


async def test_default_workdir_is_task_dir(executor: ProcessExecutor) -> None:
    ctlr = executor.controller(mktask("wd2", "pwd"), Deps())
    assert await run(ctlr) == 0
    assert (await collect(ctlr))[0].data.decode().strip() == str(executor.task_dir("wd2"))


async def test_stop_with_term(executor: ProcessExecutor) -> None:
    ctlr = executor.controller(mktask("stop1", "/bin/sh", "-c", "echo ready; exec sleep 1000"), Deps())
    await ctlr.prepare()
    await ctlr.start()
    assert await first_line(ctlr) == b"ready\n"
    assert (await ctlr.inspect()).running
    t0 = time.monotonic()
    await ctlr.shutdown(10.0)
    assert time.monotonic() - t0 < 5
    assert (await asyncio.wait_for(ctlr.wait(), 10)).exit_code == 143
    assert not (await ctlr.inspect()).running


async def test_stop_escalates_to_sigkill_for_whole_group(executor: ProcessExecutor) -> None:
    script = "trap '' TERM; sleep 1000 & echo $! > child.pid; echo ready; wait"
    ctlr = executor.controller(mktask("stop2", "/bin/sh", "-c", script), Deps())
    await ctlr.prepare()
    await ctlr.start()
    assert await first_line(ctlr) == b"ready\n"
    child = int(read_text(executor.task_dir("stop2") / "child.pid"))
    t0 = time.monotonic()
    await ctlr.shutdown(0.5)
    assert time.monotonic() - t0 >= 0.5
    assert (await asyncio.wait_for(ctlr.wait(), 10)).exit_code == 137
    assert not alive(child)


async def test_custom_stop_signal(executor: ProcessExecutor) -> None:
    ctlr = executor.controller(mktask("stop3", "/bin/sh", "-c", "trap 'exit 7' INT; echo ready; "
                                      "while :; do sleep 0.05; done", stop_signal="SIGINT"), Deps())
    await ctlr.prepare()
    await ctlr.start()
    assert await first_line(ctlr) == b"ready\n"
    await ctlr.shutdown(10.0)
    assert (await asyncio.wait_for(ctlr.wait(), 10)).exit_code == 7


async def test_secrets_and_configs(executor: ProcessExecutor) -> None:
    secrets = (SecretReference(secret_id="s1", secret_name="db_pass",
                               file=FileTarget(name="db_pass", uid="0", gid="0", mode=0o400)),
               SecretReference(secret_id="s2", secret_name="other"))
    configs = (ConfigReference(config_id="c1", config_name="app",
                               file=FileTarget(name="/etc/app.conf", mode=0o640)),
               ConfigReference(config_id="c2", config_name="plain"))
    deps = Deps(secrets={"s1": b"hunter2", "s2": b"x"}, configs={"c1": b"port=80\n", "c2": b"p"})
    task = mktask("sec1", "/bin/sh", "-c", 'cat "$SHOAL_SECRETS_DIR/db_pass"; echo; '
                  'cat "$SHOAL_CONFIGS_DIR/etc/app.conf"', secrets=secrets, configs=configs)
    ctlr = executor.controller(task, deps)
    assert await run(ctlr) == 0
    assert [ln.data for ln in await collect(ctlr)] == [b"hunter2\n", b"port=80\n"]
    d = executor.task_dir("sec1")
    assert stat.S_IMODE(os.stat(d / "secrets" / "db_pass").st_mode) == 0o400
    assert stat.S_IMODE(os.stat(d / "secrets" / "other").st_mode) == 0o444
    assert stat.S_IMODE(os.stat(d / "configs" / "etc" / "app.conf").st_mode) == 0o640
    assert (d / "configs" / "plain").read_bytes() == b"p"
    if os.geteuid() == 0:
        assert ismount(d / "secrets"), "secrets should be on a tmpfs when running as root"
    else:
        assert stat.S_IMODE(os.stat(d / "secrets").st_mode) == 0o700
    await ctlr.remove()
    assert not d.exists()


async def test_missing_secret_rejects(executor: ProcessExecutor) -> None:
    task = dataclasses.replace(
        mktask("sec2", "true", secrets=(SecretReference(secret_id="nope", secret_name="n"),)),
        status=TaskStatus(state=TaskState.PREPARING))
    st = await step(task, executor.controller(task, Deps()), SystemClock())
    assert st.state == TaskState.REJECTED and st.err == "unable to get secret from secret store"


async def test_escaping_target_rejected(executor: ProcessExecutor) -> None:
    refs = (ConfigReference(config_id="c", config_name="c", file=FileTarget(name="../../evil")),)
    ctlr = executor.controller(mktask("esc", "true", configs=refs), Deps(configs={"c": b""}))
    with pytest.raises(FatalError, match="invalid file target"):
        await ctlr.prepare()


async def test_logs_tail_streams_timestamps(executor: ProcessExecutor) -> None:
    script = "echo one; echo two; echo err >&2; printf 'three'"
    ctlr = executor.controller(mktask("log1", "/bin/sh", "-c", script), Deps())
    before = time.time()
    assert await run(ctlr) == 0
    lines = await collect(ctlr)
    assert sorted(ln.data for ln in lines) == [b"err\n", b"one\n", b"three", b"two\n"]
    assert all(before <= ln.timestamp <= time.time() for ln in lines)
    assert [ln.data for ln in await collect(ctlr, stderr=False)] == [b"one\n", b"two\n", b"three"]
    assert [ln.data for ln in await collect(ctlr, stdout=False)] == [b"err\n"]
    assert [ln.data for ln in await collect(ctlr, stderr=False, tail=2)] == [b"two\n", b"three"]
    assert await collect(ctlr, tail=0) == []
    assert await collect(ctlr, since=time.time() + 60) == []
    assert await collect(ctlr, until=before - 60) == []


async def test_logs_follow_until_exit(executor: ProcessExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    script = f"echo a; while [ ! -e {gate} ]; do sleep 0.02; done; echo b"
    ctlr = executor.controller(mktask("log2", "/bin/sh", "-c", script), Deps())
    await ctlr.prepare()
    await ctlr.start()
    got: list[bytes] = []

    async def follow() -> None:
        async for ln in ctlr.logs(LogOptions(follow=True)):
            got.append(ln.data)
            if ln.data == b"a\n":
                gate.touch()  # only now let the process print its second line and exit

    await asyncio.wait_for(follow(), 20)
    assert got == [b"a\n", b"b\n"]
    assert (await ctlr.inspect()).exit_code == 0



async def test_logs_follow_ends_at_until_without_new_lines(executor: ProcessExecutor) -> None:
    ctlr = executor.controller(mktask("log3", "/bin/sh", "-c", "echo a; exec sleep 30"), Deps())
    await ctlr.prepare()
    await ctlr.start()
    try:
        until = time.time() + 0.5
        got = [ln.data async for ln in ctlr.logs(LogOptions(follow=True, until=until))]
        # the process is still running and prints nothing more: following stops at `until` anyway
        assert got == [b"a\n"] and until <= time.time() < until + 10  # not held until the process ends
        assert (await ctlr.inspect()).running
    finally:
        await ctlr.terminate()
        await ctlr.remove()

ADOPT_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from shoal.agent.exec.process import ProcessExecutor
    from shoal.model.objects import ContainerSpec, Task, TaskSpec

    class NoDeps:
        def secret(self, i): return None
        def config(self, i): return None

    async def main():
        ex = ProcessExecutor(Path(sys.argv[1]))
        task = Task(id="adopt1", spec=TaskSpec(container=ContainerSpec(
            command=("/bin/sh", "-c", "echo up; exec sleep 1000"))))
        c = ex.controller(task, NoDeps())
        await c.prepare()
        await c.start()
        print("started", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


async def test_adoption_after_agent_kill9(executor: ProcessExecutor) -> None:
    # An "agent" process starts the task, then is killed with SIGKILL.
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ADOPT_SCRIPT, str(executor.root), stdout=asyncio.subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert agent.stdout is not None
    try:
        line = await asyncio.wait_for(agent.stdout.readline(), 30)
        assert line == b"started\n"
    finally:
        agent.kill()
        await asyncio.wait_for(agent.wait(), 10)
    # A new executor instance adopts the running process.
    ex2 = ProcessExecutor(executor.root, hostname="node-1")
    assert await ex2.list_task_ids() == {"adopt1"}
    task = Task(id="adopt1", spec=TaskSpec(container=ContainerSpec(command=("/bin/sh", "-c", "x"))),
                status=TaskStatus(state=TaskState.RUNNING))
    ctlr = ex2.controller(task, Deps())
    rs = await ctlr.inspect()
    assert rs.exists and rs.running and rs.pid > 0
    state = json.loads(read_text(executor.task_dir("adopt1") / "state.json"))
    assert state["pid"] == rs.pid
    await ctlr.prepare()  # idempotent: nothing new is started
    await ctlr.start()
    assert json.loads(read_text(executor.task_dir("adopt1") / "state.json")) == state
    assert await first_line(ctlr) == b"up\n"
    waiting = asyncio.ensure_future(ctlr.wait())
    await ctlr.shutdown(5.0)
    assert (await asyncio.wait_for(waiting, 10)).exit_code == 143


async def test_health_check_failure_is_fatal(executor: ProcessExecutor) -> None:
    hc = HealthConfig(test=("CMD-SHELL", "exit 1"), interval=SECOND // 20, timeout=SECOND, retries=2)
    ctlr = executor.controller(mktask("hc1", "sleep", "1000", healthcheck=hc,
                                      stop_grace_period=SECOND), Deps())
    await ctlr.prepare()
    await ctlr.start()
    with pytest.raises(FatalError, match="unhealthy container") as ei:
        await asyncio.wait_for(ctlr.wait(), 20)
    assert str(ei.value) == "task: non-zero exit (143): dockerexec: unhealthy container"
    rs = await ctlr.inspect()
    assert rs.healthy is False and not rs.running


async def test_health_gates_running_in_step(executor: ProcessExecutor, tmp_path: Path) -> None:
    flag = tmp_path / "healthy"
    hc = HealthConfig(test=("CMD", "test", "-e", str(flag)), interval=SECOND // 20, retries=1000)
    task = dataclasses.replace(mktask("hc2", "/bin/sh", "-c", f"echo up; sleep 0.3; touch {flag}; "
                                      "exec sleep 1000", healthcheck=hc),
                               status=TaskStatus(state=TaskState.STARTING))
    ctlr = executor.controller(task, Deps())
    await ctlr.prepare()
    st = await asyncio.wait_for(step(task, ctlr, SystemClock()), 20)
    assert (st.state, st.message, st.healthy) == (TaskState.RUNNING, "started", True)
    assert flag.exists()
    await ctlr.shutdown(5.0)
    await ctlr.close()


async def test_health_probe_timeout_counts_as_failure(executor: ProcessExecutor) -> None:
    hc = HealthConfig(test=("CMD", "sleep", "10"), interval=SECOND // 20, timeout=SECOND // 10, retries=1)
    ctlr = executor.controller(mktask("hc3", "sleep", "1000", healthcheck=hc), Deps())
    await ctlr.prepare()
    await ctlr.start()
    with pytest.raises(FatalError, match="unhealthy container"):
        await asyncio.wait_for(ctlr.wait(), 20)


MEM_HOG = "b = bytearray(256 * 1024 * 1024); print('allocated')"


async def test_memory_limit_enforced_with_cgroups(executor: ProcessExecutor) -> None:
    if executor.cgroups.mode == "none":
        pytest.skip("no writable cgroup hierarchy (v2 or v1) on this host: "
                    "memory is only limited by RLIMIT_AS")
    limits = ResourceRequirements(limits=Resources(memory_bytes=64 << 20, nano_cpus=SECOND // 2))
    task = Task(id="mem1", spec=TaskSpec(container=ContainerSpec(command=(sys.executable, "-c", MEM_HOG)),
                                         resources=limits))
    ctlr = executor.controller(task, Deps())
    assert await run(ctlr) == 137  # OOM-killed
    assert b"allocated\n" not in [ln.data for ln in await collect(ctlr)]
    await ctlr.remove()
    assert all(not d.exists() for d in executor.cgroups.task_dirs("mem1"))


async def test_memory_limit_rlimit_fallback(executor: ProcessExecutor) -> None:
    executor.cgroups.mode = "none"
    limits = ResourceRequirements(limits=Resources(memory_bytes=128 << 20))
    task = Task(id="mem2", spec=TaskSpec(container=ContainerSpec(command=(sys.executable, "-c", MEM_HOG)),
                                         resources=limits))
    ctlr = executor.controller(task, Deps())
    assert await run(ctlr) == 1  # MemoryError
    assert any(b"MemoryError" in ln.data for ln in await collect(ctlr, stdout=False))


async def test_describe(executor: ProcessExecutor) -> None:
    d = await executor.describe()
    assert d.hostname == "node-1"
    assert d.platform.os == "linux" and d.platform.architecture == os.uname().machine
    assert d.resources.nano_cpus == (os.cpu_count() or 1) * SECOND
    assert d.resources.memory_bytes > 0
    assert d.engine.engine_version == "shoal-process"


@pytest.mark.parametrize("field, value, name", [
    ("mounts", ({"Type": "bind", "Source": "/tmp", "Target": "/x"},), "Mounts"),
    ("read_only", True, "ReadOnly"),
    ("capability_add", ("NET_ADMIN",), "CapabilityAdd"),
    ("tty", True, "TTY"),
])
async def test_container_only_settings_reject_the_task(executor: ProcessExecutor, field: str, value: object,
                                                       name: str) -> None:
    task = dataclasses.replace(mktask("unsup", "true", **{field: value}),
                               status=TaskStatus(state=TaskState.PREPARING))
    st = await step(task, executor.controller(task, Deps()), SystemClock())
    assert st.state == TaskState.REJECTED
    assert f"cannot honour {name}" in st.err
