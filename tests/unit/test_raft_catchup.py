"""Issue 15 §2: a manager that fell behind (stopped, restarted on its data dir) catches up.

The cause found on real processes: while a restarted follower had not yet answered the leader's probe append,
every heartbeat answer from it made the leader send the whole probe again (up to 256 entries, ten times a
second); the gRPC transport put all the copies in one stream write, past the receiver's message limit, so the
stream failed, its queue was dropped, and the same happened again for ever: the follower received nothing.
These tests pin each layer: the core resends an unanswered probe without entries, the transport bounds a write
in bytes (a single message larger than the bound still goes, alone).
"""

from __future__ import annotations

from shoal.manager.raft.core import Message, MsgType, ProgressState
from tests.unit.test_raft_core import Net

BIG = b"x" * 2048  # a 2 KB config, as in the issue


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
    ld = net.elect(1)
    net.isolated = {3}
    for k in range(250):
        ld.propose(b"%d:" % k + BIG)
    net.stabilize()
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
    net.storages[3].crash()
    net.start(3)  # restarted on its data dir, at its old index
    net.isolated = set()
    net.tick_all(5)
    assert net.cores[3].applied == ld.applied and net.apps[3] == net.apps[1]


def test_a_follower_behind_the_compacted_log_gets_a_snapshot_then_the_tail() -> None:
    net = Net(3)
    ld = net.elect(1)
    net.isolated = {3}
    for k in range(100):
        ld.propose(b"%d:" % k + BIG)
    net.stabilize()
    snap = ld.compact(ld.applied, b"\n".join(net.apps[1]))
    net.storages[1].save_snapshot(snap)
    net.storages[1].sync()
    for k in range(20):
        ld.propose(b"tail%d" % k)
    net.stabilize()
    net.storages[3].crash()
    net.start(3)
    net.isolated = set()
    net.tick_all(5)
    assert net.installed[3] == [snap.meta.index]
    assert net.apps[3] == net.apps[1] and net.apps[3][-1] == b"tail19"


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
