"""Setups shared by the Raft tests of issue 15: a leader with a follower left behind (on the in-memory `Net` of
tests/unit/test_raft_core.py), and a single-manager RaftNode on a sqlite data directory with a store on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shoal.clock import Clock
from shoal.manager.raft.core import RaftCore
from shoal.manager.raft.node import RaftNode
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.storage import bootstrap
from shoal.model.objects import Annotations, Config, ConfigSpec
from shoal.store.memory import MemoryStore, Tx
from tests.unit.test_raft_core import Net

BIG = b"x" * 2048  # a 2 KB config, as in the issue


def leader_with_lagging_follower(net: Net, entries: int) -> RaftCore:
    """Node 1 elected leader, then `entries` BIG entries written and committed while node 3 is cut off."""
    ld = net.elect(1)
    net.isolated = {3}
    for k in range(entries):
        ld.propose(b"%d:" % k + BIG)
    net.stabilize()
    return ld


def restart_and_rejoin(net: Net, i: int) -> None:
    """Node `i` restarted on its storage (at its old index), back on the network, and a few rounds ticked."""
    net.storages[i].crash()
    net.start(i)
    net.isolated = set()
    net.tick_all(5)


def bootstrap_dir(path: Path) -> None:
    """A sqlite data directory for a one-manager cluster (member 1)."""
    first = SqliteStorage(path)
    bootstrap(first, [1])
    first.close()


async def started_store(node: RaftNode, clock: Clock) -> MemoryStore:
    """A store on `node`, once the node has started and leads."""
    store = MemoryStore(node, clock)
    node.attach(store)
    await node.start()
    await node.leader_event.wait()
    return store


def create_config(name: str) -> Callable[[Tx], Config]:
    """A store update creating config `name` (100 bytes of data)."""
    return lambda tx: tx.create(Config(id=name, spec=ConfigSpec(annotations=Annotations(name=name), data=b"x" * 100)))
