"""How long a manager takes to restart after a long history: the Raft log it replays is bounded by snapshots.

Run: python bench/raft_restart.py [--mb 200] [--entry-kb 300] [--no-size-snapshots]. One manager's Raft node
(sqlite storage, fsync on, no network) and its store take `--mb` megabytes of writes (configs of `--entry-kb`
created, each removed ten writes later: a long history, a small store), then it is stopped and opened again on
the same data dir; the restart (open the storage, restore the snapshot, replay the entries after it into the store,
until everything is applied) is timed; `tail_entries` are those kept below the snapshot for slow followers (not
replayed). `--no-size-snapshots` takes snapshots by entry count only (every 10,000 entries), as before issue 15:
the whole history is then replayed.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoal.clock import SystemClock
from shoal.manager.raft import DEFAULT_SNAPSHOT_BYTES
from shoal.manager.raft.node import RaftNode
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.storage import bootstrap
from shoal.manager.raft.transport import NullTransport
from shoal.model.objects import Annotations, Config, ConfigSpec
from shoal.store.memory import MemoryStore, Tx


async def _open(path: Path, snapshot_bytes: int) -> tuple[RaftNode, MemoryStore, SqliteStorage]:
    storage = SqliteStorage(path)
    clock = SystemClock()
    node = RaftNode(1, storage, NullTransport(), clock, rng=random.Random(1), snapshot_bytes=snapshot_bytes,
                    snapshot_in_thread=True)
    sm = MemoryStore(node, clock)
    node.attach(sm)
    await node.start()
    await node.wait_applied(node.core.commit)
    return node, sm, storage


async def _run(mb: int, entry_kb: int, snapshot_bytes: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="shoal-raft-restart-") as tmp:
        path = Path(tmp)
        st = SqliteStorage(path)
        bootstrap(st, [1])
        st.close()
        node, sm, storage = await _open(path, snapshot_bytes)
        await node.leader_event.wait()
        payload = random.Random(1).randbytes(entry_kb << 10)
        n = (mb << 20) // len(payload)
        t0 = time.monotonic()
        for i in range(n):
            def step(tx: Tx, i: int = i) -> None:
                tx.create(Config(id=f"c{i}", spec=ConfigSpec(annotations=Annotations(name=f"c{i}"), data=payload)))
                if i >= 10:
                    tx.delete("config", f"c{i - 10}")

            await sm.update(step)
        write_s = time.monotonic() - t0
        await node.stop()
        storage.close()
        log_files = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        first = SqliteStorage(path)
        snap = first.load_snapshot()
        snap_index = snap.meta.index if snap is not None else 0
        # A restart replays what follows the snapshot; the catch-up tail below it is kept for followers only.
        replayed = first.last_index() - max(snap_index, first.first_index() - 1)
        tail = max(0, snap_index - first.first_index() + 1)
        first.close()
        t0 = time.monotonic()
        node2, sm2, storage2 = await _open(path, snapshot_bytes)
        restart_s = time.monotonic() - t0
        assert sm2.view().get("config", f"c{n - 1}") is not None
        await node2.stop()
        storage2.close()
        return {"written_mb": mb, "entries": n, "write_s": round(write_s, 1),
                "data_dir_mb": round(log_files / 2**20, 1), "replayed_entries": replayed, "tail_entries": tail,
                "restart_s": round(restart_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--entry-kb", type=int, default=300)
    ap.add_argument("--no-size-snapshots", action="store_true")
    a = ap.parse_args()
    limit = 1 << 62 if a.no_size_snapshots else DEFAULT_SNAPSHOT_BYTES
    print(asyncio.run(_run(a.mb, a.entry_kb, limit)))


if __name__ == "__main__":
    from bench import procs

    with procs.guarded():  # SIGTERM, SIGHUP, Ctrl-C: the clean-up runs and nothing started is left
        main()
