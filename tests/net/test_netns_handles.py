"""A container's namespace is held by a handle that a reused pid cannot redirect (shoal.net.containers).

Each scenario runs in a process of its own under `unshare --net --pid --mount --fork --mount-proc`: its network
namespace stands for the host's root namespace (whose nft ruleset must stay empty), and in its fresh pid
namespace nothing else forks, so writing `ns_last_pid` gives a chosen pid to the next process: the pid of a
"container" (a process in a network namespace of its own) that has exited and been reaped goes to a process in
the "host" namespace, as after pids wrapped on a busy host. The agent is the real one, fed from a store.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.net.netns import why_not

pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_not() is not None, reason=str(why_not()))]

NET, SVC = "net1", "s-web"


def _nft(ns: str | None = None) -> str:
    cmd = ["nft", "list", "ruleset"]
    if ns is not None:
        cmd = ["nsenter", f"--net={ns}", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout


def _container() -> subprocess.Popen[bytes]:
    """A process in a network namespace of its own, returned once it is in it."""
    own = os.readlink("/proc/self/ns/net")
    proc = subprocess.Popen(["unshare", "--net", "sleep", "1000"])
    for _ in range(2000):
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/net") != own:
                return proc
        except OSError:
            pass
        subprocess.run(["true"])  # a short pause that is not a sleep: another exec
    raise AssertionError("the container process never entered its namespace")


def _spawn_with_pid(pid: int) -> subprocess.Popen[bytes]:
    """A process in this ("host") namespace that gets `pid` (the previous holder must have been reaped)."""
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
    proc = subprocess.Popen(["sleep", "1000"])
    assert proc.pid == pid, f"pid {pid} was not reused (got {proc.pid})"
    return proc


async def _scenario(mode: str, root: Path) -> None:
    from shoal.host import ipcmd
    from shoal.model.objects import Task
    from shoal.model.state import TaskState
    from shoal.net.agent import NetworkAgent
    from shoal.net.state import LocalFeed
    from shoal.store.memory import Tx
    from shoal.testing.clock import VirtualClock
    from shoal.testing.sim import memory_store
    from tests.support.netobjects import network, service, task, update_task

    assert "table" not in _nft(), "the scenario's host namespace starts with rules"
    store = memory_store(VirtualClock())
    svc = service(SVC, "web", net=NET, vip="10.0.1.2/24")
    t1, t2, t3 = (task(f"t{i}", net=NET, addr=f"10.0.1.{i + 2}/24", svc=svc, slot=i) for i in (1, 2, 3))

    def populate(tx: Tx) -> None:
        tx.create(network(NET, "10.0.1.0/24"))
        tx.create(svc)
        tx.create(t1)

    await store.update(populate)
    agent = NetworkAgent("n1", "127.0.0.1", root, LocalFeed(store))
    await agent.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await agent.synced(store.version)
        ctr = _container()
        procs.append(ctr)
        pid = ctr.pid
        handle = agent.ns_dir / "c-t1"

        async def add(t: Task) -> None:
            await store.update(lambda tx: tx.create(t))
            await agent.synced(store.version)

        if mode == "race":
            # The container exits and its pid is reused between the engine's answer (the pid) and the
            # agent's check: the pidfd opened on the pid tells, and nothing is held or written.
            async def reused() -> bool:
                ctr.kill()
                ctr.wait()
                procs.append(_spawn_with_pid(pid))
                return True  # an engine answer from before the exit

            await agent.container_started(t1, pid, reused)
            assert not ipcmd.is_netns(handle), "a handle was made for a process that is not the container's"
            await add(t2)
            assert "shoal" not in _nft(), f"rules landed in the host namespace:\n{_nft()}"
            return

        await agent.container_started(t1, pid)
        assert "dnat to 10.0.1.3" in _nft(f"/proc/{pid}/ns/net"), "no VIP rules in the container"
        ctr.kill()
        ctr.wait()  # reaped: its pid is free
        procs.append(_spawn_with_pid(pid))
        assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
        # The task is still RUNNING as far as the agent knows (it has not heard of the exit yet) and the
        # VIP's backends change: its rules are rewritten, into its own namespace, not into the host's.
        await add(t2)
        assert "shoal" not in _nft(), f"rules landed in the host namespace:\n{_nft()}"
        if mode == "reuse":
            assert "10.0.1.4" in _nft(str(handle)), "the rules did not go to the task's own namespace"
            return
        assert mode == "ended"
        # The task ends: its sandbox is forgotten, the handle let go, its namespace never entered again.

        await store.update(lambda tx: update_task(tx, "t1", state=TaskState.COMPLETE))
        await agent.synced(store.version)
        assert not ipcmd.is_netns(handle) and not handle.exists(), "the ended task's namespace is still held"
        await add(t3)
        box = agent.sandbox("t1")
        assert box is not None
        assert box.nft_script == "", "the ended task's namespace was entered again"
        assert "shoal" not in _nft(), f"rules landed in the host namespace:\n{_nft()}"
        await agent.detach("t1")
        assert agent.sandbox("t1") is None
    finally:
        for p in procs:
            p.kill()
            p.wait()
        await agent.close()


def _run(mode: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), *sys.path])}
    r = subprocess.run(["unshare", "--net", "--pid", "--mount", "--fork", "--mount-proc", sys.executable, "-m",
                        "tests.net.test_netns_handles", mode, str(tmp_path)],
                       capture_output=True, text=True, timeout=60, env=env, cwd=Path(__file__).parents[2])
    assert r.returncode == 0, f"scenario {mode} failed:\n{r.stdout}\n{r.stderr}"


def test_rules_follow_the_task_after_its_pid_is_reused_in_the_host(tmp_path: Path) -> None:
    """Before: the agent entered /proc/<pid>/ns/net, by then the host's, and wrote `table ip shoal` there."""
    _run("reuse", tmp_path)


def test_a_pid_reused_before_the_namespace_is_held_is_not_taken(tmp_path: Path) -> None:
    _run("race", tmp_path)


def test_the_sandbox_of_an_ended_task_is_let_go(tmp_path: Path) -> None:
    _run("ended", tmp_path)


if __name__ == "__main__":
    asyncio.run(_scenario(sys.argv[1], Path(sys.argv[2])))
