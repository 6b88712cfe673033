"""Scenario tests of the deterministic Raft core: a few cores wired by a synchronous in-test network."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from shoal.manager.raft.core import (
    ConfChange,
    ConfChangePending,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RaftCore,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    UnsupportedFormat,
)
from shoal.manager.raft.storage import MemoryStorage, bootstrap, persist_ready


def seeded(voters: list[int], log: list[Entry], hs: HardState) -> MemoryStorage:
    """A storage whose founding configuration is a snapshot at index 0, followed by `log`."""
    st = MemoryStorage()
    st.save_snapshot(Snapshot(SnapshotMeta(0, 0, frozenset(voters)), b""))
    st.append(log)
    st.set_hard_state(hs)
    st.sync()
    return st


class Net:
    """Cores plus a FIFO network; `isolated` nodes neither send nor receive."""

    def __init__(self, n: int, **cfg: object) -> None:
        self.ids = list(range(1, n + 1))
        self.cfg = cfg
        self.storages: dict[int, MemoryStorage] = {}
        self.cores: dict[int, RaftCore] = {}
        self.apps: dict[int, list[bytes]] = {}
        self.installed: dict[int, list[int]] = {}
        self.reads: dict[int, list[ReadState]] = {}
        self.inbox: list[Message] = []
        self.isolated: set[int] = set()
        self.drop: set[tuple[int, int]] = set()
        for i in self.ids:
            st = MemoryStorage()
            bootstrap(st, self.ids)
            self.storages[i] = st
            self.start(i)

    def start(self, i: int) -> None:
        st = self.storages[i]
        self.cores[i] = RaftCore(RaftConfig(id=i, **self.cfg), st, random.Random(i))  # type: ignore[arg-type]
        snap = st.load_snapshot()
        self.apps[i] = snap.data.split(b"\n") if snap is not None and snap.data else []
        self.installed.setdefault(i, [])
        self.reads.setdefault(i, [])

    def add_node(self, i: int) -> None:
        self.storages[i] = MemoryStorage()
        self.ids.append(i)
        self.start(i)

    def process(self, i: int) -> None:
        core = self.cores[i]
        while core.has_ready():
            rd = core.ready()
            persist_ready(self.storages[i], rd)
            self.inbox.extend(rd.messages)
            if rd.snapshot is not None:
                self.installed[i].append(rd.snapshot.meta.index)
                self.apps[i] = rd.snapshot.data.split(b"\n") if rd.snapshot.data else []
            for e in rd.committed_entries:
                if e.type == EntryType.NORMAL and e.data:
                    self.apps[i].append(e.data)
            self.reads[i].extend(rd.read_states)
            core.advance(rd)

    def deliver_all(self) -> int:
        n = 0
        while self.inbox:
            m = self.inbox.pop(0)
            if m.src in self.isolated or m.dst in self.isolated or (m.src, m.dst) in self.drop:
                continue
            if m.dst in self.cores:
                self.cores[m.dst].step(m)
                self.process(m.dst)
                n += 1
        return n

    def round(self) -> None:
        """Deliver the messages in flight now, not the ones they cause."""
        batch, self.inbox = self.inbox, []
        for m in batch:
            if m.src in self.isolated or m.dst in self.isolated or (m.src, m.dst) in self.drop:
                continue
            if m.dst in self.cores:
                self.cores[m.dst].step(m)
        for i in self.ids:
            self.process(i)

    def stabilize(self) -> None:
        for _ in range(1000):
            for i in self.ids:
                self.process(i)
            if not self.inbox:
                return
            self.deliver_all()
        raise AssertionError("network did not stabilize")

    def tick(self, i: int, n: int = 1) -> None:
        for _ in range(n):
            self.cores[i].tick()
            self.process(i)

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for i in self.ids:
                self.tick(i)
            self.stabilize()

    def elect(self, i: int) -> RaftCore:
        self.cores[i].campaign()
        self.stabilize()
        assert self.cores[i].role == Role.LEADER
        return self.cores[i]

    def leader(self) -> RaftCore:
        leaders = [c for c in self.cores.values() if c.role == Role.LEADER]
        assert len(leaders) == 1
        return leaders[0]


# --- election ------------------------------------------------------------------------------------


def test_single_node_elects_itself_and_commits() -> None:
    net = Net(1)
    net.tick(1, 20)
    core = net.cores[1]
    assert core.role == Role.LEADER and core.term == 2  # bootstrap entries are of term 1
    eid = core.propose(b"a")
    net.process(1)
    assert core.commit == eid.index == 3  # 1: bootstrap conf change, 2: the leader's empty entry
    assert net.apps[1] == [b"a"]


def test_three_nodes_elect_exactly_one_leader_by_timeout() -> None:
    net = Net(3)
    net.tick_all(40)
    ld = net.leader()
    assert ld.term >= 1
    for c in net.cores.values():
        assert c.leader == ld.id and c.term == ld.term
        assert c.commit == ld.last_index  # the leader's empty entry is committed everywhere


def test_campaign_with_pre_vote_then_vote() -> None:
    net = Net(3)
    c1 = net.cores[1]
    c1.campaign()
    assert c1.role == Role.PRE_CANDIDATE and c1.term == 1  # pre-vote does not touch the term
    rd = c1.ready()
    assert {m.type for m in rd.messages} == {MsgType.PRE_VOTE}
    assert all(m.term == 2 for m in rd.messages)
    c1.advance(rd)
    net.inbox.extend(rd.messages)
    net.stabilize()
    assert c1.role == Role.LEADER and c1.term == 2


def test_pre_vote_keeps_a_partitioned_node_from_disrupting_the_leader() -> None:
    net = Net(3)
    ld = net.elect(1)
    term = ld.term
    net.isolated = {3}
    for _ in range(100):
        net.tick(3)
        net.tick(1)
        net.tick(2)
        net.stabilize()
    assert net.cores[3].term == term  # pre-votes went nowhere and did not bump the term
    assert net.cores[3].role == Role.PRE_CANDIDATE
    net.isolated = set()
    net.tick_all(30)
    assert net.leader() is ld and ld.term == term
    assert net.cores[3].leader == 1


def test_without_pre_vote_a_rejoining_node_forces_a_new_term() -> None:
    net = Net(3, pre_vote=False, check_quorum=False)
    ld = net.elect(1)
    term = ld.term
    net.isolated = {3}
    net.tick(3, 50)
    assert net.cores[3].term > term + 1
    net.isolated = set()
    net.tick_all(30)
    assert net.leader().term > term  # the disruption pre-vote prevents


def test_leader_lease_ignores_vote_requests_from_a_node_that_missed_heartbeats() -> None:
    net = Net(3)
    ld = net.elect(1)
    net.cores[3].campaign(force=True)  # a real vote at a higher term, as if pre-vote were off
    net.inbox = [m for m in net.cores[3].ready().messages if m.type == MsgType.VOTE]
    net.inbox = [replace(m, force=False) for m in net.inbox]
    net.deliver_all()
    assert ld.role == Role.LEADER and net.cores[2].leader == 1


def test_check_quorum_leader_steps_down_when_cut_off() -> None:
    net = Net(3)
    ld = net.elect(1)
    net.isolated = {2, 3}
    net.tick(1, 2 * ld.cfg.election_ticks + 1)
    assert ld.role == Role.FOLLOWER and ld.leader == 0
    with pytest.raises(NotLeader):
        ld.propose(b"x")


def test_leader_with_a_majority_keeps_leading() -> None:
    net = Net(3)
    ld = net.elect(1)
    net.isolated = {3}
    for _ in range(5 * ld.cfg.election_ticks):
        net.tick(1)
        net.tick(2)
        net.stabilize()
    assert ld.role == Role.LEADER


# --- replication -----------------------------------------------------------------------------------


def test_log_replication_and_commit() -> None:
    net = Net(3)
    ld = net.elect(1)
    for k in range(10):
        ld.propose(f"v{k}".encode())
    net.stabilize()
    for i in net.ids:
        assert net.apps[i] == [f"v{k}".encode() for k in range(10)]
        assert net.cores[i].commit == ld.last_index


def test_commit_needs_a_majority() -> None:
    net = Net(3)
    ld = net.elect(1)
    net.isolated = {2, 3}
    eid = ld.propose(b"x")
    net.stabilize()
    assert ld.commit < eid.index
    net.isolated = {3}
    net.tick_all(3)
    assert ld.commit >= eid.index and net.apps[2] == [b"x"]


def test_proposal_on_follower_names_the_leader() -> None:
    net = Net(3)
    net.elect(2)
    with pytest.raises(NotLeader) as exc:
        net.cores[1].propose(b"x")
    assert exc.value.leader == 2
    fresh = Net(3)
    with pytest.raises(NotLeader) as exc:
        fresh.cores[1].propose(b"x")
    assert exc.value.leader == 0


def test_batching_and_pipelining_limits() -> None:
    net = Net(2, max_entries_per_msg=4, max_inflight=2)
    ld = net.elect(1)
    net.stabilize()
    for k in range(20):
        ld.propose(f"v{k}".encode())
    net.process(1)
    appends = [m for m in net.inbox if m.type == MsgType.APPEND and m.entries]
    assert len(appends) == 2  # the inflight window
    assert all(len(m.entries) <= 4 for m in appends)
    net.stabilize()
    assert len(net.apps[2]) == 20


def test_conflicting_follower_log_is_truncated() -> None:
    # n3 was leader of term 2 and wrote entries nobody else has; n1 then led term 3.
    common = [Entry(1, 1, EntryType.NORMAL, b"a")]
    logs = {
        1: [*common, Entry(2, 3, EntryType.NORMAL, b"from-3")],
        2: [*common, Entry(2, 3, EntryType.NORMAL, b"from-3")],
        3: [*common, Entry(2, 2, EntryType.NORMAL, b"stale-1"), Entry(3, 2, EntryType.NORMAL, b"stale-2"),
            Entry(4, 2, EntryType.NORMAL, b"stale-3")],
    }
    net = Net(3)
    for i, log in logs.items():
        net.storages[i] = seeded([1, 2, 3], log, HardState(term=3, vote=0, commit=1))
        net.start(i)
    ld = net.elect(1)
    ld.propose(b"new")
    net.stabilize()
    assert net.cores[3].log_entries(1, 100) == ld.log_entries(1, 100)
    assert net.apps[3] == [b"a", b"from-3", b"new"]
    assert [e.data for e in net.storages[3].entries(1, 100)] == [e.data for e in ld.log_entries(1, 100)]


def test_fast_backtracking_skips_a_whole_term_per_round_trip() -> None:
    net = Net(2)
    net.storages[2] = seeded([1, 2], [Entry(1, 1)] + [Entry(i, 2, EntryType.NORMAL, b"x") for i in range(2, 60)],
                             HardState(term=5))
    net.start(2)
    net.storages[1] = seeded([1, 2], [Entry(1, 1)] + [Entry(i, 3, EntryType.NORMAL, b"y") for i in range(2, 10)],
                             HardState(term=5))
    net.start(1)
    net.elect(1)
    rejects = 0
    for _ in range(50):
        for i in net.ids:
            net.process(i)
        if not net.inbox:
            break
        rejects += sum(1 for m in net.inbox if m.type == MsgType.APPEND_RESP and m.reject)
        net.deliver_all()
    assert net.cores[2].log_entries(1, 100) == net.cores[1].log_entries(1, 100)
    assert rejects <= 2


def test_old_term_entries_commit_only_with_a_current_term_entry() -> None:
    """Figure 8 of the Raft paper: an entry of an earlier term stored on a majority is not committed by
    counting replicas; it commits once an entry of the leader's own term does."""
    net = Net(3)
    for i in (1, 2, 3):
        net.storages[i] = seeded([1, 2, 3], [Entry(1, 1)] + ([Entry(2, 2, EntryType.NORMAL, b"old")] if i == 1 else []),
                                 HardState(term=3, commit=1))
        net.start(i)
    ld = net.cores[1]
    ld.campaign(force=True)
    net.process(1)
    votes = [m for m in net.inbox if m.type == MsgType.VOTE]
    net.inbox = []
    for m in votes:
        net.cores[m.dst].step(m)
        net.process(m.dst)
    resps = net.inbox
    net.inbox = []
    for m in resps:
        ld.step(m)
    net.process(1)
    assert ld.role == Role.LEADER and ld.term == 4
    net.inbox = []  # drop the appends: we play follower 2 by hand
    ld.step(Message(MsgType.APPEND_RESP, 2, 1, 4, index=2))  # n2 now stores the term-2 entry
    net.process(1)
    assert ld.commit == 1, "an old-term entry must not be committed by counting replicas"
    ld.step(Message(MsgType.APPEND_RESP, 2, 1, 4, index=3))  # ... and the leader's term-4 entry
    net.process(1)
    assert ld.commit == 3


# --- snapshots -------------------------------------------------------------------------------------


def test_snapshot_installed_on_a_lagging_follower() -> None:
    net = Net(3)
    ld = net.elect(1)
    net.isolated = {3}
    for k in range(30):
        ld.propose(f"v{k}".encode())
    net.stabilize()
    assert ld.applied == ld.last_index
    snap = ld.compact(ld.applied, b"\n".join(net.apps[1]))
    net.storages[1].save_snapshot(snap)
    net.storages[1].sync()
    assert ld.first_index == ld.applied + 1
    ld.propose(b"after")
    net.isolated = set()
    net.tick_all(3)
    assert net.installed[3] == [snap.meta.index]
    assert net.apps[3] == net.apps[1] and net.apps[3][-1] == b"after"
    # the follower restarts from its storage with the snapshot
    net.storages[3].crash()
    net.start(3)
    assert net.cores[3].first_index == snap.meta.index + 1
    net.stabilize()
    net.tick_all(2)
    assert net.apps[3] == net.apps[1]


def test_compaction_keeps_the_tail_and_restart_replays_it() -> None:
    net = Net(1)
    ld = net.elect(1)
    for k in range(5):
        ld.propose(f"v{k}".encode())
    net.process(1)
    snap = ld.compact(5, b"\n".join(net.apps[1][:3]))  # 1: bootstrap, 2: empty entry, 3..5: v0..v2
    net.storages[1].save_snapshot(snap)
    net.storages[1].sync()
    net.start(1)
    net.process(1)
    assert net.apps[1] == [b"v0", b"v1", b"v2", b"v3", b"v4"]


# --- membership --------------------------------------------------------------------------------------


def test_add_a_voter_then_remove_one_one_at_a_time() -> None:
    net = Net(3)
    ld = net.elect(1)
    ld.propose(b"before")
    net.stabilize()
    net.add_node(4)
    assert net.cores[4].voters == frozenset()  # knows nothing until the leader reaches it
    ld.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    with pytest.raises(ConfChangePending):
        ld.propose_conf_change(ConfChange(ConfChangeType.REMOVE_VOTER, 3))
    net.stabilize()
    net.tick_all(2)
    assert ld.voters == {1, 2, 3, 4}
    assert net.cores[4].voters == {1, 2, 3, 4} and net.apps[4] == [b"before"]
    ld.propose_conf_change(ConfChange(ConfChangeType.REMOVE_VOTER, 3))
    net.stabilize()
    assert ld.voters == {1, 2, 4} and ld.quorum == 2
    net.isolated = {3}
    ld.propose(b"after")
    net.stabilize()
    assert net.apps[4][-1] == b"after"
    assert net.cores[3].promotable is False or net.cores[3].voters == {1, 2, 3, 4}


def test_a_new_leader_refuses_conf_changes_until_its_first_entry_is_applied() -> None:
    net = Net(3)
    ld = net.cores[1]
    ld.campaign(force=True)
    net.process(1)
    net.round()  # votes arrive, responses queued
    net.round()  # leader elected, appends queued (not yet delivered)
    assert ld.role == Role.LEADER
    with pytest.raises(ConfChangePending):
        ld.propose_conf_change(ConfChange(ConfChangeType.REMOVE_VOTER, 3))
    net.stabilize()
    ld.propose_conf_change(ConfChange(ConfChangeType.REMOVE_VOTER, 3))


def test_removing_the_leader_makes_it_step_down() -> None:
    net = Net(3)
    ld = net.elect(1)
    ld.propose_conf_change(ConfChange(ConfChangeType.REMOVE_VOTER, 1))
    net.stabilize()
    assert ld.role == Role.FOLLOWER and not ld.promotable
    net.tick_all(40)
    new = [c for c in net.cores.values() if c.role == Role.LEADER]
    assert len(new) == 1 and new[0].id in (2, 3) and new[0].voters == {2, 3}


def test_conf_change_errors() -> None:
    net = Net(3)
    ld = net.elect(1)
    with pytest.raises(ProposalDropped):
        ld.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 2))
    with pytest.raises(ProposalDropped):
        ld.propose_conf_change(ConfChange(ConfChangeType.REMOVE_VOTER, 9))


# --- reads, transfer, crash ---------------------------------------------------------------------------


def test_read_index_on_leader_and_follower() -> None:
    net = Net(3)
    ld = net.elect(1)
    ld.propose(b"x")
    net.stabilize()
    ld.read_index(b"r1")
    net.stabilize()
    assert net.reads[1] == [ReadState(ld.commit, b"r1")]
    net.cores[2].read_index(b"r2")
    net.stabilize()
    assert net.reads[2] == [ReadState(ld.commit, b"r2")]


def test_read_index_needs_a_quorum() -> None:
    net = Net(3)
    ld = net.elect(1)
    net.isolated = {2, 3}
    ld.read_index(b"r")
    net.stabilize()
    assert net.reads[1] == []
    net.isolated = set()
    net.tick_all(2)  # the periodic heartbeat carries the pending read's context
    assert [r.context for r in net.reads[1]] == [b"r"]


def test_a_read_waiting_for_a_member_that_is_removed_completes_in_the_smaller_group() -> None:
    net = Net(2)
    ld = net.elect(1)
    ld.propose_conf_change(ConfChange(ConfChangeType.REMOVE_VOTER, 2))
    net.process(1)  # the append carrying the removal leaves first
    ld.read_index(b"r")  # then the heartbeat carrying the read: 2's answer to it arrives after the removal committed
    net.stabilize()
    assert ld.voters == {1}
    assert [r.context for r in net.reads[1]] == [b"r"]


def test_leadership_transfer() -> None:
    net = Net(3)
    ld = net.elect(1)
    net.isolated = {3}
    ld.propose(b"x")
    net.stabilize()
    net.isolated = set()
    ld.transfer_leader(3)
    with pytest.raises(ProposalDropped):
        ld.propose(b"y")
    net.stabilize()
    assert net.cores[3].role == Role.LEADER and ld.role == Role.FOLLOWER
    assert net.cores[3].term == ld.term


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


# --- encodings ------------------------------------------------------------------------------------------


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


def test_a_new_voter_joins_from_a_snapshot_after_compaction() -> None:
    net = Net(3)
    ld = net.elect(1)
    for k in range(10):
        ld.propose(f"v{k}".encode())
    net.stabilize()
    snap = ld.compact(ld.applied, b"\n".join(net.apps[1]))
    net.storages[1].save_snapshot(snap)
    net.storages[1].sync()
    net.add_node(4)
    ld.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    net.stabilize()
    net.tick_all(3)
    assert net.installed[4] == [snap.meta.index]
    assert net.cores[4].voters == {1, 2, 3, 4}
    assert net.apps[4] == net.apps[1]
