"""Issue 15 §2: a manager that fell behind (stopped, restarted on its data dir) catches up.

The cause found on real processes: while a restarted follower had not yet answered the leader's probe append,
every heartbeat answer from it made the leader send the whole probe again (up to 256 entries, ten times a
second); the gRPC transport put all the copies in one stream write, past the receiver's message limit, so the
stream failed, its queue was dropped, and the same happened again for ever: the follower received nothing.
These tests pin each layer: the core resends an unanswered probe without entries, the transport bounds a write
in bytes (a single message larger than the bound still goes, alone).
"""

from __future__ import annotations

from shoal.manager.raft.core import Message, MsgType, ProgressState, Role, Snapshot
from tests.unit.raft_support import BIG, Net, leader_with_lagging_follower, restart_and_rejoin


def deliver_holding_appends_to(net: Net, dst: int, held: list[Message]) -> None:
    """Deliver everything in flight and what it causes, except appends to `dst`: those are held."""
    while net.inbox:
        m = net.inbox.pop(0)
        if m.dst == dst and m.type == MsgType.APPEND:
            held.append(m)
        elif m.dst in net.cores:
            net.cores[m.dst].step(m)
            net.process(m.dst)


def test_an_unanswered_probe_is_resent_without_its_entries() -> None:
    net = Net(3)
    ld = leader_with_lagging_follower(net, 250)
    ld.report_unreachable(3)  # the transport's stream to the stopped manager failed
    net.isolated = set()
    # The restarted follower answers heartbeats, but has not answered the probe yet (it is still storing it, or
    # the stream carrying it is still being set up): ten heartbeat rounds.
    held: list[Message] = []
    for _ in range(10):
        net.tick(1)
        deliver_holding_appends_to(net, 3, held)
    assert len(held) >= 5  # it kept probing
    carried = sum(len(m.entries) for m in held)
    assert carried <= ld.cfg.max_entries_per_msg, f"{carried} entries resent to a follower that has not answered"
    payload = sum(len(e.data) for m in held for e in m.entries)
    assert payload <= ld.cfg.max_bytes_per_msg + len(BIG) + 16
    # Once the probes arrive, it catches up without any new write.
    net.inbox.extend(held)
    net.stabilize()
    net.tick_all(3)
    assert net.cores[3].applied == ld.applied
    assert net.apps[3] == net.apps[1]
    pr = ld.progress(3)
    assert pr is not None and pr.state == ProgressState.REPLICATE


def test_a_restarted_follower_catches_up_without_new_writes() -> None:
    net = Net(3)
    ld = net.elect(1)
    net.stabilize()
    net.isolated = {3}
    for k in range(300):
        ld.propose(b"%d:" % k + BIG)
    net.stabilize()
    restart_and_rejoin(net, 3)  # restarted on its data dir, at its old index
    assert net.cores[3].applied == ld.applied and net.apps[3] == net.apps[1]


def test_a_follower_behind_the_compacted_log_gets_a_snapshot_then_the_tail() -> None:
    net = Net(3)
    ld = leader_with_lagging_follower(net, 100)
    snap = ld.compact(ld.applied, b"\n".join(net.apps[1]))
    net.storages[1].save_snapshot(snap)
    net.storages[1].sync()
    for k in range(20):
        ld.propose(b"tail%d" % k)
    net.stabilize()
    restart_and_rejoin(net, 3)
    assert net.installed[3] == [snap.meta.index]
    assert net.apps[3] == net.apps[1] and net.apps[3][-1] == b"tail19"


def compact_with_tail(net: Net, i: int, keep_entries: int, keep_bytes: int | None = None) -> Snapshot:
    """The shell's snapshot on node i at its applied index, keeping a catch-up tail (as RaftNode does)."""
    core = net.cores[i]
    snap = core.compact(core.applied, b"\n".join(net.apps[i]), keep_entries=keep_entries, keep_bytes=keep_bytes)
    net.storages[i].save_snapshot(snap, compact_index=core.first_index - 1)
    net.storages[i].sync()
    return snap


def sent_snapshots(net: Net, dst: int) -> list[Message]:
    """Deliver everything (and what it causes) like Net.stabilize, recording snapshots sent to `dst`."""
    seen: list[Message] = []
    for _ in range(1000):
        for i in net.ids:
            net.process(i)
        if not net.inbox:
            return seen
        seen.extend(m for m in net.inbox if m.dst == dst and m.type == MsgType.SNAPSHOT)
        net.deliver_all()
    raise AssertionError("network did not stabilize")


def test_a_follower_a_few_entries_behind_the_snapshot_gets_entries_not_the_snapshot() -> None:
    net = Net(3)
    ld = leader_with_lagging_follower(net, 30)
    behind = net.cores[3].applied
    snap = compact_with_tail(net, 1, keep_entries=50)
    assert ld.first_index <= behind < snap.meta.index  # the follower lacks entries the tail still holds
    net.isolated = set()
    ld.propose(b"after")
    seen: list[Message] = []
    for _ in range(3):
        net.tick(1)
        seen += sent_snapshots(net, 3)
    assert seen == [] and net.installed[3] == []
    assert net.apps[3] == net.apps[1] and net.apps[3][-1] == b"after"


def test_a_follower_behind_the_tail_gets_a_snapshot() -> None:
    net = Net(3)
    ld = leader_with_lagging_follower(net, 30)
    snap = compact_with_tail(net, 1, keep_entries=5)
    assert ld.first_index == snap.meta.index - 4 > net.cores[3].applied + 1
    net.isolated = set()
    ld.propose(b"after")
    net.tick_all(3)
    assert net.installed[3] == [snap.meta.index]
    assert net.apps[3] == net.apps[1] and net.apps[3][-1] == b"after"


def test_the_tail_is_the_smaller_of_its_entry_and_byte_bounds() -> None:
    net = Net(1)
    ld = net.elect(1)
    for k in range(40):
        ld.propose(b"%d:" % k + BIG)
    net.process(1)
    size = ld.log_entries(ld.applied, ld.applied + 1)[0].size()
    snap = compact_with_tail(net, 1, keep_entries=10)
    assert ld.first_index == snap.meta.index - 9  # 10 entries: the count binds
    for k in range(40):
        ld.propose(b"again%d:" % k + BIG)
    net.process(1)
    snap = compact_with_tail(net, 1, keep_entries=10, keep_bytes=3 * size + size // 2)
    assert ld.first_index == snap.meta.index - 2  # 3 entries: the bytes bind
    # An entry larger than the byte bound at the snapshot's index: no tail at all, and never below the old log.
    ld.propose(b"y" * (4 * size))
    net.process(1)
    snap = compact_with_tail(net, 1, keep_entries=10, keep_bytes=3 * size)
    assert ld.first_index == snap.meta.index + 1
    on_disk = net.storages[1]
    assert on_disk.first_index() == ld.first_index and on_disk.last_index() == ld.last_index


def test_a_restart_does_not_apply_the_tail_again_and_still_serves_it() -> None:
    net = Net(3)
    ld = net.elect(1)
    for k in range(10):
        ld.propose(b"v%d" % k)
    net.stabilize()
    net.isolated = {3}
    for k in range(10, 20):
        ld.propose(b"v%d" % k)
    net.stabilize()
    snap = compact_with_tail(net, 1, keep_entries=15)
    assert 1 < net.storages[1].first_index() < snap.meta.index  # a tail, not the whole log, is on disk
    expected = list(net.apps[1])
    # The leader restarts from its storage: the snapshot, then only the entries after it.
    net.storages[1].crash()
    net.start(1)
    restarted = net.cores[1]
    assert restarted.applied == snap.meta.index and restarted.first_index <= net.cores[3].applied + 1
    net.process(1)
    assert net.apps[1] == expected  # not v0..v19 twice
    # Leading again (2 is away and 3 lacks entries: only 1 can win), it catches the lagging follower up from the
    # tail it reloaded, without a snapshot.
    net.isolated = {2}
    for _ in range(100):
        if restarted.role == Role.LEADER:
            break
        net.tick_all(1)
    assert restarted.role == Role.LEADER
    restarted.propose(b"after")
    net.stabilize()
    net.tick_all(2)
    assert net.installed[3] == []
    assert net.apps[3] == net.apps[1] and net.apps[3][-1] == b"after"


def test_a_member_that_answers_heartbeats_but_takes_no_entries_is_not_following() -> None:
    net = Net(3)
    ld = net.elect(1)
    net.stabilize()
    window = 2 * ld.cfg.election_ticks
    assert ld.following(2, window) and ld.following(3, window)
    for k in range(10):
        ld.propose(b"v%d" % k)
    held: list[Message] = []
    for _ in range(window + 1):  # 3 answers heartbeats; its appends never arrive (the stuck follower)
        net.tick(1)
        deliver_holding_appends_to(net, 3, held)
    assert ld.following(2, window)
    assert not ld.following(3, window)
    net.inbox.extend(held)  # the appends arrive: it follows again
    net.stabilize()
    assert net.cores[3].applied == ld.applied and ld.following(3, window)
    # A member level with the leader and idle is following however long nothing is written.
    net.tick_all(window + 1)
    assert ld.following(3, window)
    assert net.cores[2].following(3, window)  # only the leader knows: elsewhere, no opinion
