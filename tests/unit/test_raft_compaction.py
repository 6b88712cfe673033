"""Issue 15 §2: restart time is bounded by snapshots, not by the log's length. A manager takes a snapshot once
`snapshot_bytes` of entries were applied (not only every `snapshot_interval` entries), so the log in the data dir,
the log the leader keeps in memory, and what a restart replays stay bounded however much was written. Below each
snapshot the log keeps a catch-up tail (at most `catchup_bytes`), so the log's bound is the snapshot bound plus the
tail's; a restart replays only what follows the snapshot, never the tail."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from shoal.clock import SystemClock
from shoal.manager.raft.node import RaftNode
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.transport import NullTransport
from shoal.manager.recovery import force_new_cluster
from tests.unit.raft_support import bootstrap_dir, create_config, started_store

BOUND = 256 << 10  # snapshot_bytes for the test
TAIL = 128 << 10  # catchup_bytes for the test: binds before catchup_entries (500) with entries of ENTRY bytes
ENTRY = 20 << 10
WRITES = 300  # ~6 MB: more than 20 times the bound


class Counter:
    """A state machine that remembers how many entries (and bytes) it holds and how many it replayed."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.applied_here = 0  # entries applied by this process (a restart's replay)

    def apply_entry(self, index: int, data: bytes) -> None:
        self.count += 1
        self.bytes += len(data)
        self.applied_here += 1

    def save(self) -> bytes:
        return f"{self.count} {self.bytes}".encode()

    def snapshot_source(self) -> Callable[[], bytes]:
        data = self.save()
        return lambda: data

    def restore(self, data: bytes, index: int) -> None:
        self.count, self.bytes = (int(x) for x in data.split())


def log_bytes(entries: list[object]) -> int:
    return sum(len(e.data) for e in entries)  # type: ignore[attr-defined]


async def open_node(path: Path, *, in_thread: bool, in_child: bool = False,
                    sm: Counter | None = None) -> tuple[RaftNode, Counter, SqliteStorage]:
    storage = SqliteStorage(path)
    node = RaftNode(1, storage, NullTransport(), SystemClock(), rng=random.Random(1), snapshot_bytes=BOUND,
                    catchup_bytes=TAIL, snapshot_in_thread=in_thread, snapshot_in_child=in_child)
    sm = sm if sm is not None else Counter()
    node.attach(sm)
    await node.start()
    await node.leader_event.wait()
    return node, sm, storage


async def written_node(path: Path, *, in_thread: bool, seed: int) -> tuple[RaftNode, SqliteStorage]:
    """A new one-manager node on `path` that has written WRITES random entries of ENTRY bytes."""
    bootstrap_dir(path)
    node, _sm, storage = await open_node(path, in_thread=in_thread)
    rng = random.Random(seed)
    for _ in range(WRITES):
        await node.propose(rng.randbytes(ENTRY))
    return node, storage


async def test_the_log_is_compacted_by_size_and_a_restart_replays_a_bounded_tail(tmp_path: Path) -> None:
    node, storage = await written_node(tmp_path, in_thread=False, seed=7)
    assert node.snapshots_taken >= WRITES * ENTRY // BOUND // 2
    # The leader's log in memory and the data dir's log hold at most the catch-up tail below the snapshot, the
    # bound past it, and one entry (the one that crossed the bound).
    assert node.core.first_index <= node.core.snapshot_meta.index  # a tail is kept
    in_memory = node.core.log_entries(node.core.first_index, node.core.last_index + 1)
    assert log_bytes(in_memory) <= TAIL + BOUND + ENTRY  # type: ignore[arg-type]
    on_disk = storage.entries(storage.first_index(), storage.last_index() + 1)
    assert log_bytes(on_disk) <= TAIL + BOUND + ENTRY  # type: ignore[arg-type]
    await node.stop()
    storage.close()
    files = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert files < 8 * BOUND + (8 << 20), f"{files} bytes in the data dir after {WRITES * ENTRY} written"

    node2, sm2, storage2 = await open_node(tmp_path, in_thread=False)
    assert sm2.count == WRITES  # everything is there once: the snapshot and what follows it, not the tail again
    # Only what follows the snapshot is replayed: the bound, not the bound plus the catch-up tail.
    assert sm2.applied_here * ENTRY <= BOUND + ENTRY, f"the restart replayed {sm2.applied_here} entries"
    await node2.stop()
    storage2.close()


async def test_snapshots_by_size_also_off_the_loop(tmp_path: Path) -> None:
    node, storage = await written_node(tmp_path, in_thread=True, seed=8)
    await node.stop()  # waits for a snapshot being written
    storage.close()
    node2, sm2, storage2 = await open_node(tmp_path, in_thread=True)
    assert sm2.count == WRITES
    # Off the loop, writes go on while a snapshot is encoded: the tail may grow by what came in meanwhile.
    assert sm2.applied_here * ENTRY <= 4 * BOUND, f"the restart replayed {sm2.applied_here} entries"
    await node2.stop()
    storage2.close()


async def test_force_new_cluster_reads_a_log_with_a_catch_up_tail(tmp_path: Path) -> None:
    # The tail below the snapshot is already in the snapshot: recovery restores the snapshot and applies only
    # what follows it, and the store comes back with every write exactly once.
    bootstrap_dir(tmp_path)
    storage = SqliteStorage(tmp_path)
    clock = SystemClock()
    node = RaftNode(1, storage, NullTransport(), clock, rng=random.Random(1), snapshot_interval=20)
    store = await started_store(node, clock)
    for i in range(50):
        await store.update(create_config(f"c{i}"))
    assert node.snapshots_taken >= 2 and node.core.first_index < node.core.snapshot_meta.index
    await node.stop()
    storage.close()

    index = await force_new_cluster(tmp_path, 1, "n1", clock)
    storage = SqliteStorage(tmp_path)
    node = RaftNode(1, storage, NullTransport(), clock, rng=random.Random(1))
    store = await started_store(node, clock)
    assert node.applied >= index
    assert sorted(c.id for c in store.view().all("config")) == sorted(f"c{i}" for i in range(50))
    await node.stop()
    storage.close()
