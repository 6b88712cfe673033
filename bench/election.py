"""Election after a leader's loss, in Shoal's Raft core on a simulated network: how long three managers with one
killed take to elect a new leader, with and without the retry of a split vote within the jitter.

Each trial is three `RaftCore`s (the code the managers run) on a discrete-event network: ticks of 100 ms at a
random phase per node (the managers' defaults: election timeout 10 ticks plus 0-4 of jitter, heartbeat every
tick, pre-vote and check-quorum on), messages delivered after a uniformly drawn latency, a leader elected, then
killed at a random moment 2-3 s later; the figure is the time from the kill to a survivor leading. The latency
ranges span loopback to a loaded two-core host running three managers in Python (where the managers' own
failover benchmark sees its tail). The reference is the same core with `split_vote_retry` off, in the same run
on the same seeds. Virtual time: the figures do not depend on the machine's speed.
"""

from __future__ import annotations

import heapq
import random
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import conditions, median, percentile, record
from shoal.manager.raft.core import Message, RaftConfig, RaftCore, Role
from shoal.manager.raft.storage import MemoryStorage, bootstrap, persist_ready

B = "election"
TICK = 0.1
JITTER = 5  # shoal.node.replica.ELECTION_JITTER_TICKS
LATENCIES = [(0.0005, 0.003), (0.005, 0.03), (0.01, 0.08)]


def trial(seed: int, latency: tuple[float, float], retry: bool) -> float | None:
    """Seconds from the leader's kill to a new leader, or None when none within 30 s of virtual time."""
    rng = random.Random(seed)
    cores: dict[int, tuple[RaftCore, MemoryStorage]] = {}
    for i in (1, 2, 3):
        st = MemoryStorage()
        bootstrap(st, [1, 2, 3])
        cfg = RaftConfig(id=i, election_jitter_ticks=JITTER, split_vote_retry=retry)
        cores[i] = (RaftCore(cfg, st, random.Random(rng.getrandbits(64))), st)
    events: list[tuple[float, int, int, Message | None]] = []  # (time, seq, node or -1, message)
    seq = 0

    def push(t: float, node: int, msg: Message | None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, node, msg))

    def flush(i: int, now: float) -> None:
        core, st = cores[i]
        while core.has_ready():
            rd = core.ready()
            persist_ready(st, rd)
            for m in rd.messages:
                push(now + rng.uniform(*latency), -1, m)
            core.advance(rd)

    for i in cores:
        push(rng.uniform(0, TICK), i, None)
    cores[1][0].campaign(force=True)
    flush(1, 0.0)
    kill_at = rng.uniform(2.0, 3.0)
    dead = 0
    killed_at = 0.0
    while events:
        t, _, node, msg = heapq.heappop(events)
        if not dead and t >= kill_at:
            dead = next(i for i, (c, _) in cores.items() if c.role == Role.LEADER)
            killed_at = t
        if msg is None:
            if node == dead:
                continue
            cores[node][0].tick()
            flush(node, t)
            push(t + TICK, node, None)
        else:
            if dead in (msg.src, msg.dst):
                continue
            cores[msg.dst][0].step(msg)
            flush(msg.dst, t)
        if dead and any(c.role == Role.LEADER for i, (c, _) in cores.items() if i != dead):
            return t - killed_at
        if t > kill_at + 30:
            return None
    return None


def run(quick: bool, trials: int | None = None) -> list[dict[str, Any]]:
    n = trials or (300 if quick else 2000)
    cond = (f"Shoal's Raft core, 3 managers, one killed; simulated network, tick {TICK * 1000:.0f} ms at a random "
            f"phase per node, election timeout 10 + 0..{JITTER - 1} ticks, pre-vote and check-quorum; {n:,} "
            "trials per case, the same seeds with and without the split-vote retry; virtual time")
    conditions(B, cond)
    recs: list[dict[str, Any]] = []
    for lat in LATENCIES:
        case = f"message latency {lat[0] * 1000:g}-{lat[1] * 1000:g} ms"
        got: dict[bool, list[float]] = {}
        for retry in (True, False):
            xs = [x for x in (trial(s, lat, retry) for s in range(n)) if x is not None]
            got[retry] = xs
            print(f"  {case}, split-vote retry {'on' if retry else 'off'}: median {median(xs):.3f} s, "
                  f"p99 {percentile(xs, 99):.3f} s, max {max(xs):.3f} s, over 2 s {sum(x > 2 for x in xs)} "
                  f"of {len(xs)}, no leader {n - len(xs)}", flush=True)
        ref = "the same core without the split-vote retry"
        for stat, fn in (("median", median), ("p99", lambda xs: percentile(xs, 99)), ("worst", max)):
            recs.append(record(B, case, f"kill to new leader ({stat})", fn(got[True]), "s",
                               reference=f"{ref} ({stat})", reference_value=fn(got[False]), conditions=cond))
    return recs


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    run(a.quick, a.trials)
