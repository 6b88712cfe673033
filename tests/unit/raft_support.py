"""Setups shared by the Raft tests of issue 15: `Net`, a few cores wired by a synchronous in-test network; a leader
with a follower left behind on it; and a single-manager RaftNode on a sqlite data directory with a store on it."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from shoal.clock import Clock
from shoal.manager.raft.core import (
    Entry,
    EntryType,
    HardState,
    Message,
    RaftConfig,
    RaftCore,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
)
from shoal.manager.raft.node import RaftNode
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.storage import MemoryStorage, bootstrap, persist_ready
from shoal.model.objects import Annotations, Config, ConfigSpec
from shoal.store.memory import MemoryStore, Tx

BIG = b"x" * 2048  # a 2 KB config, as in the issue


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
