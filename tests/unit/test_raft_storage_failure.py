"""Issue 15 §2: a manager whose disk fills stops for good and says so (`on_failure`; the daemon exits non-zero
for its supervisor to restart it), instead of living on with a dead Raft loop, answering "not the swarm leader"
to every call while `docker info` says active."""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest

from shoal.clock import SystemClock
from shoal.errors import Unavailable
from shoal.manager.raft import sqlite_storage
from shoal.manager.raft.node import RaftNode
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.transport import NullTransport
from tests.support.wait import eventually
from tests.unit.raft_support import bootstrap_dir, create_config, started_store


class FillingStorage(SqliteStorage):
    """Sqlite storage whose disk fills when `full` is set: its syncs fail with ENOSPC."""

    full = False

    def sync(self) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().sync()


@pytest.mark.parametrize("in_thread", [False, True])
async def test_a_storage_failure_stops_the_node_and_calls_on_failure_once(tmp_path: Path, in_thread: bool) -> None:
    bootstrap_dir(tmp_path)
    storage = FillingStorage(tmp_path)
    failures: list[BaseException] = []
    clock = SystemClock()
    node = RaftNode(1, storage, NullTransport(), clock, rng=random.Random(1), on_failure=failures.append,
                    persist_in_thread=in_thread)
    store = await started_store(node, clock)
    await store.update(create_config("before"))

    storage.full = True
    with pytest.raises(Unavailable):
        await store.update(create_config("lost"))
    assert len(failures) == 1 and isinstance(failures[0], OSError) and failures[0].errno == errno.ENOSPC
    assert node.failure is failures[0] and not node.is_leader
    with pytest.raises(Unavailable):  # not "not the leader" for ever: the node says it is down
        await node.propose(b"more")
    await node.stop()  # stopping a failed node is clean
    storage.close()

    # Restarted once the disk has room, everything acknowledged is there.
    again = SqliteStorage(tmp_path)
    node2 = RaftNode(1, again, NullTransport(), clock, rng=random.Random(1))
    store2 = await started_store(node2, clock)
    assert store2.view().get("config", "before") is not None
    await store2.update(create_config("after"))
    await node2.stop()
    again.close()


async def test_a_snapshot_that_cannot_be_written_stops_the_node(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap_dir(tmp_path)
    storage = SqliteStorage(tmp_path)
    failures: list[BaseException] = []
    clock = SystemClock()
    node = RaftNode(1, storage, NullTransport(), clock, rng=random.Random(1), on_failure=failures.append,
                    snapshot_in_thread=True, snapshot_interval=5)
    store = await started_store(node, clock)

    def no_space(fd: int) -> None:  # the snapshot file is written, its fsync finds the disk full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sqlite_storage.os, "fsync", no_space)  # sqlite's own fsync is C: the log still works
    for i in range(8):
        try:
            await store.update(create_config(f"c{i}"))
        except Unavailable:
            break
    await eventually(lambda: failures, 10, interval=0.01, what="the failed snapshot to stop the node")
    monkeypatch.undo()
    assert isinstance(failures[0], OSError) and failures[0].errno == errno.ENOSPC and not node.is_leader
    assert node.snapshots_taken == 0
    await node.stop()
    storage.close()
    assert list((tmp_path / "snapshots").iterdir()) == []  # no half-written file left on the full disk


@pytest.mark.parametrize(("exc", "said"), [("OSError(28, 'No space left on device')", "Raft storage failed"),
                                           ("ValueError('bad entry')", "Raft node failed")])
def test_exit_process_exits_with_status_1_and_says_why(exc: str, said: str) -> None:
    import subprocess
    import sys

    code = ("import logging; logging.basicConfig(); from shoal.manager.raft.node import exit_process; "
            f"exit_process({exc}); print('still here')")
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1, cp
    assert said in cp.stderr and "still here" not in cp.stdout
