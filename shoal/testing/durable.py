"""A durable store as a one-manager swarm keeps it: a `RaftNode` of one voter over `SqliteStorage`.

    async with raft_store(directory, clock) as store:
        await store.update(fn)

The directory is bootstrapped with this manager as the only voter when it holds no Raft state yet (as
`docker swarm init` does), otherwise the store is restored from its snapshot and log, as a restarted manager's
is. On exit the node stops and the storage closes, so the same directory can be opened again.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

from shoal.clock import Clock
from shoal.manager.raft.node import RaftNode
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.storage import bootstrap
from shoal.manager.raft.transport import NullTransport
from shoal.store.memory import MemoryStore

RAFT_ID = 1


@contextlib.asynccontextmanager
async def raft_store(directory: Path, clock: Clock, *,
                     snapshot_interval: int = 10_000) -> AsyncIterator[MemoryStore]:
    """The store of a one-voter Raft group kept in `directory`, leading and caught up with what was committed."""
    storage = SqliteStorage(directory)
    try:
        if storage.last_index() == 0 and storage.load_snapshot() is None:
            bootstrap(storage, [RAFT_ID])
        node = RaftNode(RAFT_ID, storage, NullTransport(), clock, rng=random.Random(RAFT_ID),
                        snapshot_interval=snapshot_interval)
        store = MemoryStore(node, clock)
        node.attach(store)
        await node.start()
        try:
            await node.leader_event.wait()
            yield store
        finally:
            await node.stop()
    finally:
        storage.close()
