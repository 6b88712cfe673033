"""Times the Raft core alone: committed entries per second in a 3-node group, in memory, no fsync, no network.

Run: python bench/raft_core.py [--quick]. Three `RaftCore`s exchange messages through a list; each Ready is
written to a `MemoryStorage` (whose `sync` costs nothing) and applied. Proposals come in batches (the
store batches one transaction's changes into one entry; many clients mean many entries per Ready), with
64-byte payloads. This is the ceiling the asyncio shell, sqlite fsync and gRPC then divide; `run(quick)`
returns records for bench/run.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoal.manager.raft.core import Message, RaftConfig, RaftCore, Role
from shoal.manager.raft.storage import MemoryStorage, bootstrap, persist_ready


def _case(total: int, batch: int) -> dict[str, object]:
    ids = [1, 2, 3]
    storages = {i: MemoryStorage() for i in ids}
    for st in storages.values():
        bootstrap(st, ids)
    cores = {i: RaftCore(RaftConfig(id=i, max_inflight=256, max_entries_per_msg=1024), storages[i],
                         random.Random(i)) for i in ids}
    inbox: list[Message] = []
    applied = dict.fromkeys(ids, 0)

    def process(i: int) -> None:
        core = cores[i]
        while core.has_ready():
            rd = core.ready()
            persist_ready(storages[i], rd)
            inbox.extend(rd.messages)
            applied[i] += len(rd.committed_entries)
            core.advance(rd)

    def pump() -> None:
        while True:
            for i in ids:
                process(i)
            if not inbox:
                return
            batch_msgs = inbox[:]
            inbox.clear()
            for m in batch_msgs:
                cores[m.dst].step(m)

    cores[1].campaign()
    pump()
    leader = cores[1]
    assert leader.role == Role.LEADER
    payload = b"x" * 64
    start_commit = leader.commit
    t0 = time.perf_counter()
    done = 0
    while done < total:
        for _ in range(batch):
            leader.propose(payload)
        done += batch
        pump()
    elapsed = time.perf_counter() - t0
    committed = leader.commit - start_commit
    assert committed >= total
    return {"benchmark": "raft_core", "case": f"3_nodes_batch_{batch}", "metric": "committed_entries_per_s",
            "value": committed / elapsed, "unit": "entries/s"}


def run(quick: bool) -> list[dict[str, object]]:
    total = 20_000 if quick else 200_000
    return [_case(total if b > 1 else total // 10, b) for b in (1, 16, 256)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    for r in run(args.quick):
        print(f"{r['case']:<40} {r['value']:>12,.0f} {r['unit']}")


if __name__ == "__main__":
    main()
