"""SqliteStorage: the Raft core's storage on sqlite + snapshot files (reopen = what a restart reads)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from shoal.manager.raft.core import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    RaftConfig,
    RaftCore,
    Snapshot,
    SnapshotMeta,
)
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.storage import bootstrap


def ents(lo: int, hi: int, term: int) -> list[Entry]:
    return [Entry(i, term, EntryType.NORMAL, f"e{i}t{term}".encode()) for i in range(lo, hi + 1)]


def snap(index: int, term: int, data: bytes = b"state") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, frozenset({1, 2, 3})), data)


def test_reopen_reads_back_hard_state_entries_and_snapshot(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path)
    bootstrap(st, [1, 2, 3])
    st.append(ents(4, 10, 2))
    st.set_hard_state(HardState(term=2, vote=3, commit=8))
    st.sync()
    st.save_snapshot(snap(6, 2, b"app@6"))
    st.sync()
    st.close()

    st = SqliteStorage(tmp_path)
    init = st.load()
    assert init.hard_state == HardState(term=2, vote=3, commit=8)
    assert init.snapshot == snap(6, 2, b"app@6")
    assert [e.index for e in init.entries] == [7, 8, 9, 10]
    assert init.entries[0] == Entry(7, 2, EntryType.NORMAL, b"e7t2")
    assert (st.first_index(), st.last_index(), st.term(6), st.term(9), st.term(5), st.term(11)) == \
        (7, 10, 2, 2, None, None)
    # A core starts from it.
    core = RaftCore(RaftConfig(id=1), st, random.Random(1))
    assert (core.first_index, core.last_index, core.commit, core.voters) == (7, 10, 8, frozenset({1, 2, 3}))
    st.close()


def test_bootstrap_entries_are_conf_changes(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path)
    bootstrap(st, [2, 1])
    st.close()
    init = SqliteStorage(tmp_path).load()
    assert [ConfChange.decode(e.data) for e in init.entries] == [
        ConfChange(ConfChangeType.ADD_VOTER, 1), ConfChange(ConfChangeType.ADD_VOTER, 2)]
    assert init.hard_state.commit == 2


def test_unsynced_writes_are_lost_on_crash(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path)
    st.append(ents(1, 3, 1))
    st.set_hard_state(HardState(1, 1, 2))
    st.sync()
    st.append(ents(4, 5, 1))
    st.set_hard_state(HardState(2, 0, 2))
    st.close()  # no sync: like kill -9 before the fsync
    init = SqliteStorage(tmp_path).load()
    assert [e.index for e in init.entries] == [1, 2, 3]
    assert init.hard_state == HardState(1, 1, 2)


def test_a_flushed_commit_index_is_kept_by_a_process_crash_without_an_fsync(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path)
    st.append(ents(1, 3, 1))
    st.set_hard_state(HardState(1, 1, 1))
    st.sync()
    fsyncs: list[float] = []
    st.on_fsync = fsyncs.append
    syncs = st.syncs
    st.set_hard_state(HardState(1, 1, 3))  # the commit index alone moved: the core's must_sync is false
    st.flush()
    assert fsyncs == [] and st.syncs == syncs
    # Read by another connection while the first is still open (its process killed, its WAL left as it is).
    assert SqliteStorage(tmp_path).load().hard_state == HardState(1, 1, 3)
    # The next synced write goes on as usual, and a flush with entries pending syncs them.
    st.append(ents(4, 4, 1))
    st.set_hard_state(HardState(1, 1, 4))
    st.flush()
    assert len(fsyncs) == 1
    st.close()
    init = SqliteStorage(tmp_path).load()
    assert [e.index for e in init.entries] == [1, 2, 3, 4] and init.hard_state == HardState(1, 1, 4)


def test_conflicting_suffix_is_replaced(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path)
    st.append(ents(1, 6, 1))
    st.append(ents(4, 5, 2))  # a new leader's entries from index 4 on
    st.sync()
    assert [(e.index, e.term) for e in st.entries(1, 100)] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert st.last_index() == 5
    with pytest.raises(ValueError, match="gap"):
        st.append(ents(8, 8, 2))
    st.close()
    assert [(e.index, e.term) for e in SqliteStorage(tmp_path).load().entries][-2:] == [(4, 2), (5, 2)]


def test_compaction_keeps_the_tail_and_one_snapshot_file(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path)
    st.append(ents(1, 20, 1))
    st.save_snapshot(snap(10, 1, b"at10"))
    st.sync()
    st.save_snapshot(snap(15, 1, b"at15"))
    st.sync()
    st.save_snapshot(snap(12, 1, b"older"))  # older than what we have: ignored
    st.sync()
    assert st.first_index() == 16 and st.last_index() == 20
    assert st.entries(1, 100)[0].index == 16
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == [f"snap-{15:016d}-1.snap"]
    st.append(ents(14, 14, 1) + ents(15, 16, 1))  # entries under the snapshot are skipped
    st.sync()
    st.close()
    init = SqliteStorage(tmp_path).load()
    assert init.snapshot is not None and init.snapshot.data == b"at15"
    assert [e.index for e in init.entries] == [16]


def test_a_catch_up_tail_below_the_snapshot_survives_a_reopen_and_is_not_applied_again(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path)
    st.append(ents(1, 20, 1))
    st.set_hard_state(HardState(term=1, vote=0, commit=17))
    st.save_snapshot(snap(15, 1, b"at15"), compact_index=10)  # keep 11..15 for followers slightly behind
    st.sync()
    assert (st.first_index(), st.last_index(), st.term(12), st.term(10)) == (11, 20, 1, None)
    st.append(ents(13, 17, 1))  # entries the snapshot holds are never rewritten; 16 and 17 replace the suffix
    st.sync()
    st.close()
    st = SqliteStorage(tmp_path)
    init = st.load()
    assert [e.index for e in init.entries] == list(range(11, 18))
    core = RaftCore(RaftConfig(id=1), st, random.Random(1))
    # The tail's first entry is the log's offset; the core starts applied at the snapshot, so the first Ready
    # applies only what follows it.
    assert (core.first_index, core.applied, core.commit, core.log_term(12)) == (12, 15, 17, 1)
    assert [e.index for e in core.ready().committed_entries] == [16, 17]
    # A snapshot from the leader still replaces the whole log, the tail included.
    st.apply_snapshot(snap(30, 2, b"leader"))
    st.sync()
    assert (st.first_index(), st.last_index(), st.entries(1, 100)) == (31, 30, [])
    st.close()


def test_applying_a_received_snapshot_drops_the_whole_log(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path)
    st.append(ents(1, 30, 1))  # a diverged log, longer than the snapshot
    st.sync()
    st.apply_snapshot(snap(20, 3, b"leader"))
    st.set_hard_state(HardState(3, 0, 20))
    st.sync()
    assert (st.first_index(), st.last_index(), st.entries(1, 100)) == (21, 20, [])
    st.close()
    init = SqliteStorage(tmp_path).load()
    assert init.entries == () and init.snapshot == snap(20, 3, b"leader")


def test_crash_before_snapshot_commit_keeps_the_old_one(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path)
    st.append(ents(1, 30, 1))
    st.save_snapshot(snap(5, 1, b"at5"))
    st.sync()
    st.apply_snapshot(snap(40, 3, b"leader"))  # file written and fsync'd, transaction not committed
    st.close()
    st = SqliteStorage(tmp_path)
    init = st.load()
    assert init.snapshot == snap(5, 1, b"at5")
    assert [e.index for e in init.entries] == list(range(6, 31))
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == [f"snap-{5:016d}-1.snap"]  # orphan removed
