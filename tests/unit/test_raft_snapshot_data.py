"""Issue 15 §2: the leader does not keep the whole store in memory. The Raft core keeps only a snapshot's
metadata; its data (hundreds of MiB for a big store) is read back from storage when a follower needs it and
dropped once sent, on every manager, and the sqlite storage does not cache it either.

bytes cannot be weakly referenced, so "holds no reference" is checked with the object's reference count: after
the call, only the test's own names refer to the data.
"""

from __future__ import annotations

import sys
from pathlib import Path

from shoal.manager.raft.core import Message, MsgType, RaftCore, Ready, Snapshot, SnapshotMeta
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.storage import MemoryStorage, bootstrap
from tests.unit.raft_support import Net, leader_with_lagging_follower, restart_and_rejoin


def _copy(snap: Snapshot) -> Snapshot:
    return Snapshot(snap.meta, bytes(bytearray(snap.data)))


class FileLikeStorage(MemoryStorage):
    """MemoryStorage that, like a snapshot file, stores a copy of a snapshot's data and hands out a new copy on
    each read, counting the reads: what the core keeps is then visible in the data's reference count."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshot_reads = 0

    def save_snapshot(self, snap: Snapshot, *, compact_index: int | None = None) -> None:
        super().save_snapshot(_copy(snap), compact_index=compact_index)

    def apply_snapshot(self, snap: Snapshot) -> None:
        super().apply_snapshot(_copy(snap))

    def load_snapshot(self) -> Snapshot | None:
        snap = super().load_snapshot()
        if snap is None:
            return None
        self.snapshot_reads += 1
        return _copy(snap)


def file_like_net(n: int) -> tuple[Net, dict[int, FileLikeStorage]]:
    net = Net(n)
    storages: dict[int, FileLikeStorage] = {}
    for i in net.ids:
        st = FileLikeStorage()
        bootstrap(st, net.ids)
        storages[i] = st
        net.storages[i] = st
        net.start(i)
    return net, storages


def only_local_refs() -> int:
    """The reference count of an object only one local name refers to (as sys.getrefcount sees it)."""
    fresh = bytes(bytearray(b"fresh"))
    return sys.getrefcount(fresh)


def record_snapshot_sends(core: RaftCore) -> list[Message]:
    """The SNAPSHOT messages `core` hands out from now on."""
    sent: list[Message] = []
    ready = core.ready

    def recording() -> Ready:
        rd = ready()
        sent.extend(m for m in rd.messages if m.type == MsgType.SNAPSHOT)
        return rd

    setattr(core, "ready", recording)  # noqa: B010 (an instance attribute shadowing the method)
    return sent


def test_the_core_keeps_no_reference_to_a_snapshot_it_took_and_reads_it_once_per_send() -> None:
    net, storages = file_like_net(3)
    ld = leader_with_lagging_follower(net, 60)
    data = b"\n".join(net.apps[1])
    snap = ld.compact(ld.applied, data)
    storages[1].save_snapshot(snap, compact_index=ld.first_index - 1)
    storages[1].sync()
    index = snap.meta.index
    del snap
    assert sys.getrefcount(data) == only_local_refs(), "the core (or the storage) still refers to the snapshot data"
    assert ld.snapshot_meta.index == index
    reads = storages[1].snapshot_reads

    # The lagging follower still gets the snapshot, read from storage for each send, and catches up.
    sent = record_snapshot_sends(ld)
    restart_and_rejoin(net, 3)
    assert len(sent) >= 1 and all(m.dst == 3 for m in sent)
    assert storages[1].snapshot_reads - reads == len(sent)
    assert net.installed[3] == [index]
    assert net.apps[3] == net.apps[1]

    # The follower installed it and keeps no reference to the data it received either.
    got = sent[0].snapshot.data if sent[0].snapshot is not None else b""
    assert len(got) == len(data)
    sent.clear()  # (the recorder still holds the list)
    assert sys.getrefcount(got) == only_local_refs(), "the follower's core still refers to the snapshot it installed"
    assert net.cores[3].snapshot_meta.index == index


def test_no_snapshot_is_sent_until_storage_holds_the_one_the_core_took() -> None:
    net, storages = file_like_net(3)
    ld = leader_with_lagging_follower(net, 30)
    snap = ld.compact(ld.applied, b"\n".join(net.apps[1]))  # the shell has not stored it yet (written in a thread)
    net.isolated = set()
    net.tick_all(2)
    assert not net.installed[3]  # the core could not send what it no longer holds, and sent nothing stale
    storages[1].save_snapshot(snap, compact_index=ld.first_index - 1)
    storages[1].sync()
    net.tick_all(3)
    assert net.installed[3] == [snap.meta.index] and net.apps[3] == net.apps[1]


def test_sqlite_storage_reads_the_snapshot_from_its_file_and_keeps_no_reference(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "raft")
    data = bytes(bytearray(b"state:" + b"y" * 100_000))
    snap = Snapshot(SnapshotMeta(7, 2, frozenset({1, 2})), data)
    st.save_snapshot(snap)
    st.sync()
    del snap
    assert sys.getrefcount(data) == only_local_refs(), "SqliteStorage still refers to the snapshot data"
    reads = st.snapshot_reads
    got = st.load_snapshot()
    assert got is not None and got.data == data and got.meta == SnapshotMeta(7, 2, frozenset({1, 2}))
    assert st.snapshot_reads == reads + 1
    assert st.term(7) == 2 and st.first_index() == 8
    st.close()
    again = SqliteStorage(tmp_path / "raft")
    init = again.load()
    assert init.snapshot is not None and init.snapshot.data == data
    again.close()
