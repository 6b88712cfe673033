"""A leader asks its followers for slack in proportion to its own recent stalls (RaftNode._note_stall)."""

from __future__ import annotations

import random

from shoal.manager.raft.core import Message, MsgType
from shoal.manager.raft.node import SLACK_FACTOR, SLACK_WINDOW, RaftNode
from shoal.manager.raft.storage import MemoryStorage, bootstrap
from shoal.manager.raft.transport import NullTransport
from shoal.testing.clock import VirtualClock


async def test_slack_follows_the_worst_recent_stall_and_is_capped_when_sent() -> None:
    clock = VirtualClock()
    st = MemoryStorage()
    bootstrap(st, [1, 2])
    node = RaftNode(1, st, NullTransport(), clock, tick_interval=0.1, rng=random.Random(1), max_slack=3.0)
    node._note_stall(0.02)  # on time: no slack
    assert node.core.slack == 0
    node._note_stall(0.4)  # under half the election timeout (1 s): it costs no election, and asks nothing
    assert node.core.slack == 0
    node._note_stall(1.0)  # the loop stalled 1 s
    assert node.core.slack == round(SLACK_FACTOR * 1.0 / 0.1)
    node._note_stall(0.5)  # a smaller one later does not lower it
    assert node.core.slack == round(SLACK_FACTOR * 1.0 / 0.1)
    node._note_stall(2.5)
    assert node.core.slack == round(SLACK_FACTOR * 2.5 / 0.1)  # 50 ticks asked; 30 (3 s) is the most sent
    # What goes out while it leads: capped at max_slack (3 s: 30 ticks).
    node.core.campaign(force=True)
    node.core.step(Message(MsgType.VOTE_RESP, 2, 1, node.core.term))
    assert node.core.role.value == "leader"
    node.core.ready()
    node.core.tick()  # a heartbeat tick
    sent = [m for m in node.core.ready().messages if m.type == MsgType.HEARTBEAT]
    assert sent and {m.slack for m in sent} == {30}
    await clock.advance(SLACK_WINDOW + 1)  # a minute without a stall
    node._note_stall(0.0)
    assert node.core.slack == 0
