"""Tests of the Raft core that are not interactions: the storage a core restarts from, and the encodings.

The scenario tests (elections, replication, snapshots, membership, reads, transfer) are datadriven scripts in
tests/raft/testdata, run by tests/raft/test_interaction.py.
"""

from __future__ import annotations

import random

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
    UnsupportedFormat,
)
from shoal.manager.raft.storage import MemoryStorage, bootstrap


def test_unsynced_writes_are_lost_on_crash_and_synced_ones_survive() -> None:
    st = MemoryStorage()
    bootstrap(st, [1])
    st.append([Entry(1, 1, EntryType.NORMAL, b"a")])
    st.set_hard_state(HardState(1, 1, 1))
    st.sync()
    st.append([Entry(2, 1, EntryType.NORMAL, b"b")])
    st.set_hard_state(HardState(2, 1, 2))
    st.crash()
    state = st.load()
    assert [e.data for e in state.entries] == [b"a"] and state.hard_state == HardState(1, 1, 1)
    core = RaftCore(RaftConfig(id=1), st, random.Random(0))
    assert (core.term, core.vote, core.commit, core.last_index) == (1, 1, 1, 1)


def test_entry_conf_change_and_snapshot_encodings_round_trip() -> None:
    e = Entry(7, 3, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_VOTER, 42, b"10.0.0.2:4242").encode())
    back = Entry.decode(7, 3, e.encode())
    assert back == e
    assert ConfChange.decode(back.data) == ConfChange(ConfChangeType.ADD_VOTER, 42, b"10.0.0.2:4242")
    s = Snapshot(SnapshotMeta(100, 4, frozenset({1, 2, 3})), b"state")
    assert Snapshot.decode(100, 4, s.encode()) == s
    with pytest.raises(UnsupportedFormat):
        Entry.decode(1, 1, bytes((99, 0)) + b"future")
    with pytest.raises(UnsupportedFormat):
        ConfChange.decode(bytes((99, 0)))
