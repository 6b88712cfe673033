"""Secrets and configs of a process-executor task: the reference's uid, gid and mode, in directories no other
local user can enter (checked by reading them as `nobody` and as the task's own uid through setpriv).
The docker executor's side is tests/e2e/test_secret_perms_docker.py."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.agent.exec.process import ProcessExecutor
from shoal.model.objects import (
    Config,
    ConfigReference,
    ConfigSpec,
    ContainerSpec,
    FileTarget,
    Secret,
    SecretReference,
    SecretSpec,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.model.state import TaskState

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                 reason="needs root (to give files away) and setpriv (to read as another uid)")]

TASK_UID, NOBODY = 12345, 65534


class Deps:
    def secret(self, secret_id: str) -> Secret | None:
        return Secret(id=secret_id, spec=SecretSpec(data=f"secret-{secret_id}".encode()))

    def config(self, config_id: str) -> Config | None:
        return Config(id=config_id, spec=ConfigSpec(data=f"config-{config_id}".encode()))


def as_uid(uid: int, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
async def executor() -> AsyncIterator[ProcessExecutor]:
    # Under a directory every user can reach (pytest's tmp_path is not): only Shoal's own may stop others.
    base = Path(tempfile.mkdtemp(prefix="shoal-perms-"))
    base.chmod(0o755)
    ex = ProcessExecutor(base / "root", hostname="node-1")
    try:
        yield ex
    finally:
        for tid in await ex.list_task_ids():
            await ex.controller(Task(id=tid), Deps()).remove()
        shutil.rmtree(base, ignore_errors=True)


async def test_process_task_files_are_as_requested_and_closed_to_other_users(executor: ProcessExecutor) -> None:
    secrets = (SecretReference(secret_id="s1", secret_name="db",
                               file=FileTarget(name="db", uid=str(TASK_UID), gid="4242", mode=0o400)),
               SecretReference(secret_id="s2", secret_name="shared",
                               file=FileTarget(name="shared", uid="0", gid="0", mode=0o444)))
    configs = (ConfigReference(config_id="c1", config_name="app",
                               file=FileTarget(name="/etc/app.conf", uid="0", gid=str(TASK_UID), mode=0o440)),)
    spec = ContainerSpec(image="busybox", user=f"{TASK_UID}:{TASK_UID}", secrets=secrets, configs=configs,
                         command=("/bin/sh", "-c", 'cat "$SHOAL_SECRETS_DIR/db" "$SHOAL_SECRETS_DIR/shared" '
                                  '"$SHOAL_CONFIGS_DIR/etc/app.conf"'))
    task = Task(id="perm1", spec=TaskSpec(container=spec), status=TaskStatus(state=TaskState.ASSIGNED))
    ctlr = executor.controller(task, Deps())
    await ctlr.prepare()
    await ctlr.start()
    assert (await asyncio.wait_for(ctlr.wait(), 30)).exit_code == 0, "the task's own user cannot read them"
    d = executor.task_dir("perm1")
    expect = {d / "secrets" / "db": (TASK_UID, 4242, 0o400), d / "secrets" / "shared": (0, 0, 0o444),
              d / "configs" / "etc" / "app.conf": (0, TASK_UID, 0o440)}
    for path, want in expect.items():
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == want, path
        denied = as_uid(NOBODY, "cat", str(path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, f"nobody read {path}"
    for sub in ("secrets", "configs", "configs/etc"):
        assert as_uid(NOBODY, "ls", str(d / sub)).returncode != 0, f"nobody can list {sub}"
        st = os.stat(d / sub)
        assert st.st_uid == TASK_UID and stat.S_IMODE(st.st_mode) & 0o077 == 0, sub
    assert as_uid(TASK_UID, "cat", str(d / "secrets" / "shared")).stdout == "secret-s2"
    await ctlr.remove()
    assert not d.exists()


async def test_a_root_task_keeps_its_secrets_to_root(executor: ProcessExecutor) -> None:
    secrets = (SecretReference(secret_id="s1", secret_name="tok",
                               file=FileTarget(name="tok", uid="0", gid="0", mode=0o444)),)
    spec = ContainerSpec(image="busybox", secrets=secrets, command=("true",))
    task = Task(id="perm2", spec=TaskSpec(container=spec), status=TaskStatus(state=TaskState.ASSIGNED))
    ctlr = executor.controller(task, Deps())
    await ctlr.prepare()
    d = executor.task_dir("perm2") / "secrets"
    assert os.path.ismount(d), "secrets go on a tmpfs when the agent runs as root"
    assert as_uid(NOBODY, "cat", str(d / "tok")).returncode != 0, "nobody read a root task's secret"
    st = os.stat(d)
    assert (st.st_uid, stat.S_IMODE(st.st_mode) & 0o077) == (0, 0)
    await ctlr.remove()
