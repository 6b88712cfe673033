"""A deterministic simulation of a Raft group: N `RaftCore`s, a hostile network and crashes, one seed.

Everything runs in one loop under virtual time (a heap of timed callbacks, no asyncio). One
`random.Random(seed)` decides every delay, drop, duplicate, partition, crash and client action, and seeds
each core's own RNG, so a seed replays exactly:

    python -m shoal.testing.raftsim --seed 42 --nodes 5 -v

Each node is a core + `MemoryStorage` + a tiny state machine (the list of applied writes), handled the way
the real shell must: persist the Ready (sync), then send its messages, then apply, then advance. A crash
drops everything not synced and restarts the core from storage after a while.

Checked after every event (`InvariantViolation` otherwise):
- election safety: at most one leader per term;
- log matching: an (index, term) pair names one entry with one predecessor term, in every log
  (incrementally, as entries are written) and, periodically, pairwise over the live logs;
- leader completeness: a node that becomes leader holds every entry committed so far;
- state-machine safety: no two nodes commit or apply different entries at one index; apply is gap-free;
- read index: a ReadState never points below a write acknowledged before the read was asked.
At the end, after healing the network, restarting every node and re-adding removed voters:
- liveness: a leader with an entry of its term committed appears within `heal_bound` virtual seconds;
- durability: every acknowledged write is in the state machine of every voter.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from shoal.manager.raft.core import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryId,
    EntryType,
    Message,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RaftCore,
    Role,
)
from shoal.manager.raft.storage import MemoryStorage, bootstrap, persist_ready


class InvariantViolation(AssertionError):
    pass


@dataclass(frozen=True, slots=True)
class SimConfig:
    nodes: int = 3
    fault_time: float = 3.0  # seconds of faults before healing
    tick: float = 0.01
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    drop: float = 0.05
    duplicate: float = 0.03
    delay: tuple[float, float] = (0.001, 0.030)
    partition_every: float = 0.8  # mean seconds between partitions
    partition_for: tuple[float, float] = (0.1, 1.0)
    crash_every: float = 1.0  # mean seconds between crashes
    down_for: tuple[float, float] = (0.02, 0.5)
    client_every: float = 0.01
    read_every: float = 0.05
    conf_change_every: float = 1.0
    snapshot_every: int = 20  # applied entries between snapshots
    catchup_entries: int = 0  # entries kept below each snapshot for followers slightly behind (managers: 500)
    max_entries_per_msg: int = 8
    max_inflight: int = 4
    heal_bound: float = 5.0  # a leader must exist this long after healing
    settle_bound: float = 20.0  # everything must have converged by then
    full_check_every: int = 200  # events between pairwise log comparisons
    pre_vote: bool = True
    check_quorum: bool = True


@dataclass(slots=True)
class SimNode:
    id: int
    storage: MemoryStorage
    rng: random.Random
    core: RaftCore | None = None
    incarnation: int = 0
    writes: list[bytes] = field(default_factory=list)  # the state machine
    applied: int = 0
    pending: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # index -> (term, data) proposed here
    checked_commit: int = 0
    seen_leader_term: int = -1


@dataclass(slots=True)
class SimResult:
    seed: int
    nodes: int
    events: int
    acked: int
    proposed: int
    committed: int
    reads: int
    crashes: int
    partitions: int
    conf_changes: int
    leader_after_heal: float
    final_time: float


def _encode_state(writes: list[bytes]) -> bytes:
    return b"\n".join(writes)


def _decode_state(data: bytes) -> list[bytes]:
    return data.split(b"\n") if data else []


class RaftSim:
    def __init__(self, seed: int, cfg: SimConfig | None = None, *, verbose: bool = False,
                 out: Callable[[str], None] = print) -> None:
        self.seed = seed
        self.cfg = cfg or SimConfig()
        self.rng = random.Random(seed)
        self.verbose = verbose
        self._out = out
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.events = 0
        self.faults = True
        self.drop = self.cfg.drop
        self.duplicate = self.cfg.duplicate
        self.groups: dict[int, int] = {}  # node -> partition group (absent = group 0)
        ids = list(range(1, self.cfg.nodes + 1))
        self.nodes: dict[int, SimNode] = {}
        for i in ids:
            st = MemoryStorage()
            bootstrap(st, ids)
            self.nodes[i] = SimNode(i, st, random.Random(self.rng.getrandbits(64)))
        # checker state
        self.leaders: dict[int, int] = {}  # term -> leader
        self.log_index: dict[tuple[int, int], tuple[int, EntryType, bytes]] = {}  # (i, t) -> (prev_t, type, data)
        self.committed: dict[int, tuple[int, EntryType, bytes]] = {}
        self.acked: dict[bytes, int] = {}  # write -> index
        self.ack_times: list[tuple[float, int]] = []  # (time, index), in time order
        self.max_acked_index = 0
        self.reads_pending: dict[bytes, int] = {}  # ctx -> max acked index when asked
        self.reads_done = 0
        self.proposed = 0
        self.write_seq = 0
        self.believed_leader = 0
        self.crashes = 0
        self.partitions = 0
        self.conf_changes = 0
        for n in self.nodes.values():
            self._start(n)

    # --- scheduler ---------------------------------------------------------------------------------

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (self.now + delay, next(self._seq), fn))

    def run_until(self, t_end: float, until: Callable[[], bool] | None = None) -> bool:
        while self._heap and self._heap[0][0] <= t_end:
            t, _, fn = heapq.heappop(self._heap)
            self.now = t
            fn()
            self.events += 1
            self.check()
            if self.events % self.cfg.full_check_every == 0:
                self.check_logs_pairwise()
            if until is not None and until():
                return True
        self.now = max(self.now, t_end)
        return until() if until is not None else True

    def log(self, msg: str) -> None:
        if self.verbose:
            self._out(f"{self.now:9.4f} {msg}")

    def fail(self, msg: str) -> NoReturn:
        raise InvariantViolation(f"seed {self.seed} (nodes {self.cfg.nodes}) t={self.now:.4f}: {msg}\n"
                                 f"replay: python -m shoal.testing.raftsim --seed {self.seed} "
                                 f"--nodes {self.cfg.nodes} -v")

    # --- nodes -------------------------------------------------------------------------------------

    def _raft_config(self, node_id: int) -> RaftConfig:
        return RaftConfig(id=node_id, election_ticks=self.cfg.election_ticks,
                          heartbeat_ticks=self.cfg.heartbeat_ticks, pre_vote=self.cfg.pre_vote,
                          check_quorum=self.cfg.check_quorum,
                          max_entries_per_msg=self.cfg.max_entries_per_msg, max_inflight=self.cfg.max_inflight)

    def _start(self, n: SimNode) -> None:
        n.incarnation += 1
        n.core = RaftCore(self._raft_config(n.id), n.storage, random.Random(n.rng.getrandbits(64)))
        snap = n.storage.load_snapshot()
        n.writes = _decode_state(snap.data) if snap is not None else []
        n.applied = snap.meta.index if snap is not None else 0
        n.pending = {}
        n.checked_commit = n.applied
        n.seen_leader_term = -1
        self.log(f"n{n.id} start (incarnation {n.incarnation}) {n.core.status()}")
        inc = n.incarnation
        self.at(self.rng.uniform(0, self.cfg.tick), lambda: self._tick(n, inc))

    def _tick(self, n: SimNode, inc: int) -> None:
        if n.core is None or n.incarnation != inc:
            return
        n.core.tick()
        self.process(n)
        self.at(self.cfg.tick, lambda: self._tick(n, inc))

    def crash(self, n: SimNode) -> None:
        if n.core is None:
            return
        self.crashes += 1
        self.log(f"n{n.id} CRASH")
        n.core = None
        n.storage.crash()
        if self.believed_leader == n.id:
            self.believed_leader = 0
        self.at(self.rng.uniform(*self.cfg.down_for), lambda: self._restart(n))

    def _restart(self, n: SimNode) -> None:
        if n.core is None:
            self._start(n)
            self.process(n)

    def process(self, n: SimNode) -> None:
        """Handle every Ready of one node, as the real shell does."""
        core = n.core
        assert core is not None
        while core.has_ready():
            rd = core.ready()
            for e in rd.entries:
                prev = core.log_term(e.index - 1)
                if prev is None:
                    self.fail(f"n{n.id} writes entry {e.index} with no predecessor in its log")
                key = (e.index, e.term)
                val = (prev, e.type, e.data)
                old = self.log_index.setdefault(key, val)
                if old != val:
                    self.fail(f"log matching: entry {key} on n{n.id} is {val}, elsewhere {old}")
            persist_ready(n.storage, rd)
            for m in rd.messages:
                self.send(m)
            if rd.snapshot is not None:
                n.writes = _decode_state(rd.snapshot.data)
                n.applied = rd.snapshot.meta.index
                self.log(f"n{n.id} installs snapshot at {n.applied}")
            for e in rd.committed_entries:
                self.apply(n, e)
            for rs in rd.read_states:
                asked = self.reads_pending.pop(rs.context, None)
                if asked is not None:
                    self.reads_done += 1
                    if rs.index < asked:
                        self.fail(f"read index {rs.index} on n{n.id} below a write acked before the read ({asked})")
            core.advance(rd)
            if n.applied - core.snapshot_meta.index >= self.cfg.snapshot_every and n.applied <= core.applied:
                snap = core.compact(n.applied, _encode_state(n.writes), keep_entries=self.cfg.catchup_entries)
                n.storage.save_snapshot(snap, compact_index=core.first_index - 1)
                n.storage.sync()

    def apply(self, n: SimNode, e: Entry) -> None:
        if e.index != n.applied + 1:
            self.fail(f"n{n.id} applies {e.index} after {n.applied}")
        n.applied = e.index
        val = (e.term, e.type, e.data)
        old = self.committed.setdefault(e.index, val)
        if old != val:
            self.fail(f"state machine safety: n{n.id} applies {val} at {e.index}, another applied {old}")
        if e.type == EntryType.NORMAL and e.data:
            n.writes.append(e.data)
        elif e.type == EntryType.CONF_CHANGE:
            self.log(f"n{n.id} applies {ConfChange.decode(e.data)} at {e.index}")
        p = n.pending.pop(e.index, None)
        if p is not None and p[0] == e.term and p[1] == e.data and e.data not in self.acked:
            self.acked[e.data] = e.index
            self.max_acked_index = max(self.max_acked_index, e.index)

    # --- network -----------------------------------------------------------------------------------

    def cut(self, a: int, b: int) -> bool:
        return self.groups.get(a, 0) != self.groups.get(b, 0)

    def send(self, m: Message) -> None:
        if self.cut(m.src, m.dst) or self.rng.random() < self.drop:
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            self.at(self.rng.uniform(*self.cfg.delay), lambda: self.deliver(m))

    def deliver(self, m: Message) -> None:
        n = self.nodes[m.dst]
        if n.core is None or self.cut(m.src, m.dst):
            return
        n.core.step(m)
        self.process(n)

    # --- faults and clients --------------------------------------------------------------------------

    def _exp(self, mean: float) -> float:
        return self.rng.expovariate(1.0 / mean)

    def schedule_faults(self) -> None:
        self.at(self._exp(self.cfg.partition_every), self._partition)
        self.at(self._exp(self.cfg.crash_every), self._crash_one)
        self.at(self._exp(self.cfg.conf_change_every), self._conf_change)
        self.at(self.cfg.client_every, self._client_write)
        self.at(self.cfg.read_every, self._client_read)

    def _partition(self) -> None:
        if not self.faults:
            return
        ids = sorted(self.nodes)
        self.partitions += 1
        self.groups = {i: self.rng.randrange(2) for i in ids}
        self.log(f"PARTITION {self.groups}")
        gen = self.partitions

        def heal() -> None:
            if self.partitions == gen and self.faults:
                self.groups = {}
                self.log("heal partition")
        self.at(self.rng.uniform(*self.cfg.partition_for), heal)
        self.at(self._exp(self.cfg.partition_every), self._partition)

    def _crash_one(self) -> None:
        if not self.faults:
            return
        self.crash(self.nodes[self.rng.choice(sorted(self.nodes))])
        self.at(self._exp(self.cfg.crash_every), self._crash_one)

    def _leader(self) -> SimNode | None:
        best: SimNode | None = None
        for n in self.nodes.values():
            if n.core is not None and n.core.role == Role.LEADER and (best is None or best.core is None
                                                                        or n.core.term > best.core.term):
                best = n
        return best

    def _converged(self, final: EntryId) -> bool:
        if final.index not in self.committed or self.committed[final.index][0] != final.term:
            return False
        target = max(self.committed)
        return all(n.core is not None and n.applied >= target for n in self.nodes.values())

    def _true_leader(self) -> SimNode | None:
        """A leader whose term no voter of its configuration has passed, with an entry of its term committed."""
        ld = self._leader()
        if ld is None or ld.core is None:
            return None
        core = ld.core
        for v in core.voters:
            other = self.nodes[v].core
            if other is not None and other.term > core.term:
                return None
        return ld if core.log_term(core.commit) == core.term else None

    def _conf_change(self) -> None:
        if not self.faults:
            return
        self.at(self._exp(self.cfg.conf_change_every), self._conf_change)
        ld = self._leader()
        if ld is None or ld.core is None:
            return
        voters = ld.core.voters
        missing = sorted(set(self.nodes) - voters)
        if missing:
            cc = ConfChange(ConfChangeType.ADD_VOTER, self.rng.choice(missing))
        elif len(voters) > 2:
            cc = ConfChange(ConfChangeType.REMOVE_VOTER, self.rng.choice(sorted(voters)))
        else:
            return
        self._propose_conf(ld, cc)

    def _propose_conf(self, ld: SimNode, cc: ConfChange) -> None:
        assert ld.core is not None
        try:
            ld.core.propose_conf_change(cc)
        except ProposalDropped as exc:
            self.log(f"n{ld.id} refuses {cc}: {exc}")
            return
        self.conf_changes += 1
        self.log(f"n{ld.id} proposes {cc}")
        self.process(ld)

    def _client_write(self) -> None:
        if self.faults:
            self.at(self._exp(self.cfg.client_every), self._client_write)
        self.write_once()

    def write_once(self) -> EntryId | None:
        target = self.nodes.get(self.believed_leader)
        if target is None or target.core is None:
            target = self.nodes[self.rng.choice(sorted(self.nodes))]
        if target.core is None:
            return None
        self.write_seq += 1
        data = f"w{self.write_seq}".encode()
        try:
            eid = target.core.propose(data)
        except NotLeader as exc:
            self.believed_leader = exc.leader
            return None
        except ProposalDropped:
            return None
        self.believed_leader = target.id
        self.proposed += 1
        target.pending[eid.index] = (eid.term, data)
        self.process(target)
        return eid

    def _client_read(self) -> None:
        if not self.faults:
            return
        self.at(self._exp(self.cfg.read_every), self._client_read)
        n = self.nodes[self.rng.choice(sorted(self.nodes))]
        if n.core is None:
            return
        ctx = f"r{self.events}-{n.id}".encode()
        try:
            n.core.read_index(ctx)
        except ProposalDropped:
            return
        self.reads_pending[ctx] = self.max_acked_index
        self.process(n)

    # --- invariants --------------------------------------------------------------------------------

    def check(self) -> None:
        for n in self.nodes.values():
            core = n.core
            if core is None:
                continue
            if core.role == Role.LEADER:
                who = self.leaders.setdefault(core.term, n.id)
                if who != n.id:
                    self.fail(f"election safety: n{n.id} and n{who} both lead term {core.term}")
                if n.seen_leader_term != core.term:
                    n.seen_leader_term = core.term
                    self.log(f"n{n.id} LEADER term {core.term} {core.status()}")
                    self._check_leader_complete(n, core)
            if core.commit > n.checked_commit:
                for i in range(max(n.checked_commit, core.first_index - 1) + 1, core.commit + 1):
                    ents = core.log_entries(i, i + 1)
                    if not ents:
                        continue
                    e = ents[0]
                    val = (e.term, e.type, e.data)
                    old = self.committed.setdefault(i, val)
                    if old != val:
                        self.fail(f"state machine safety: n{n.id} commits {val} at {i}, another committed {old}")
                n.checked_commit = core.commit

    def _check_leader_complete(self, n: SimNode, core: RaftCore) -> None:
        for i, (term, _typ, _data) in self.committed.items():
            if i < core.first_index:
                continue
            if core.log_term(i) != term:
                self.fail(f"leader completeness: n{n.id} leads term {core.term} without committed entry {i} "
                          f"(term {term}); has {core.log_term(i)}")

    def check_logs_pairwise(self) -> None:
        live = [n.core for n in self.nodes.values() if n.core is not None]
        for a, b in itertools.combinations(live, 2):
            lo = max(a.first_index, b.first_index)
            hi = min(a.last_index, b.last_index)
            top = 0
            for i in range(hi, lo - 1, -1):
                if a.log_term(i) == b.log_term(i):
                    top = i
                    break
            if top and a.log_entries(lo, top + 1) != b.log_entries(lo, top + 1):
                self.fail(f"log matching: n{a.id} and n{b.id} agree on term at {top} but differ below")

    # --- the run -----------------------------------------------------------------------------------

    def run(self) -> SimResult:
        cfg = self.cfg
        self.schedule_faults()
        self.run_until(cfg.fault_time)
        # heal: no more faults, every node back, a clean (but still delaying and reordering) network
        self.faults = False
        self.groups = {}
        self.drop = 0.0
        self.duplicate = 0.0
        self.log("HEAL")
        for n in self.nodes.values():
            if n.core is None:
                self._start(n)
                self.process(n)
        healed = self.now

        if not self.run_until(healed + cfg.heal_bound, lambda: self._true_leader() is not None):
            self.fail(f"liveness: no leader {cfg.heal_bound}s after healing")
        leader_after = self.now - healed
        # put every node back into the configuration (one change at a time), then a final write through the
        # leader, then wait until every node applied everything committed
        deadline = healed + cfg.settle_bound
        final: EntryId | None = None
        while True:
            ld = self._true_leader()
            if ld is not None and ld.core is not None:
                core = ld.core
                missing = sorted(set(self.nodes) - core.voters)
                conf_pending = any(e.type == EntryType.CONF_CHANGE
                                   for e in core.log_entries(core.applied + 1, core.last_index + 1))
                if final is not None and final.index > core.snapshot_meta.index \
                        and core.log_term(final.index) != final.term:
                    final = None  # lost in a leader change
                if missing and not conf_pending:
                    self._propose_conf(ld, ConfChange(ConfChangeType.ADD_VOTER, missing[0]))
                elif not missing and not conf_pending:
                    if final is None:
                        self.believed_leader = ld.id
                        final = self.write_once()
                    elif self._converged(final):
                        break
            self.run_until(min(deadline, self.now + 0.05))
            if self.now >= deadline:
                status = {n.id: n.core.status() if n.core else None for n in self.nodes.values()}
                self.fail(f"liveness: no convergence by {deadline:.1f}s: {status}")
        self.check_logs_pairwise()
        for n in self.nodes.values():
            have = set(n.writes)
            lost = [w for w in self.acked if w not in have]
            if lost:
                self.fail(f"durability: n{n.id} lacks acknowledged writes {lost[:5]} (of {len(lost)})")
            if len(have) != len(n.writes):
                self.fail(f"n{n.id} applied a write twice")
        return SimResult(self.seed, cfg.nodes, self.events, len(self.acked), self.proposed, len(self.committed),
                         self.reads_done, self.crashes, self.partitions, self.conf_changes, leader_after, self.now)


def run_seed(seed: int, nodes: int = 3, *, verbose: bool = False, **overrides: object) -> SimResult:
    cfg = SimConfig(nodes=nodes)
    if overrides:
        from dataclasses import replace
        cfg = replace(cfg, **overrides)  # type: ignore[arg-type]
    return RaftSim(seed, cfg, verbose=verbose).run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Deterministic Raft simulation")
    ap.add_argument("--seed", type=int, default=None, help="one seed to replay")
    ap.add_argument("--seeds", type=int, default=100, help="number of seeds when --seed is not given")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    t0 = time.perf_counter()
    failed = 0
    for s in seeds:
        try:
            r = run_seed(s, args.nodes, verbose=args.verbose)
        except InvariantViolation as exc:
            failed += 1
            print(f"FAIL {exc}", file=sys.stderr)
            continue
        if args.verbose or args.seed is not None:
            print(r)
    dt = time.perf_counter() - t0
    print(f"{len(seeds)} seeds, {args.nodes} nodes, {failed} failed, {dt:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
