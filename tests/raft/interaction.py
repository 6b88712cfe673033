"""The interaction environment: Raft cores driven by the commands of tests/raft/testdata/*.txt.

Each node is a `RaftCore` on a `MemoryStorage` with `random.Random(id)` (so every run, on every machine, draws
the same election timeouts) and a toy state machine: the list of applied entry data (`applied`), the indexes
of the snapshots it installed, and the read states it received. The network is one FIFO queue of messages;
nothing moves unless a command says so.

Commands (arguments in brackets are optional; `ids` are node ids, all nodes when none are given):

    add-nodes N [ids=(..)] [voters=(..)] [empty] [log=(..)] [term=T] [vote=V] [commit=C] [config-key=value..]
        N new nodes. Founding members by default (the log holds one committed ADD_VOTER per voter, as
        `swarm init` writes it; voters default to the new ids). `empty`: a blank storage (a manager about to be
        added). `log=(1/1,2/3:data,4..9/3:x)` (index/term[:data], `a..b` for a run) with term/vote/commit:
        a stored log after a snapshot at index 0 that holds `voters`. Config keys are RaftConfig fields with
        dashes (pre-vote=false, max-inflight=2, ...).
    campaign id [force]          start an election (force: skip pre-vote and leases)
    propose id data..            one proposal per data word; prints each entry's index/term, or the refusal
    propose-conf-change id add=N | remove=N
    read-index id ctx            ask for a read point
    transfer-leader id to=N
    tick id [n]                  n ticks (1), no Ready handled
    tick-heartbeat id / tick-election id
                                 heartbeat_ticks / election_ticks ticks
    tick-all [n] [order=(..)]    n rounds of: tick each node once and handle its Ready, then `stabilize`
    process-ready [ids]          handle each node's Readies (persist, queue its messages, apply, advance) until
                                 it has none
    deliver-msgs [ids]           step every queued message for ids into its node (Readies are not handled)
    stabilize [ids]              process-ready and deliver-msgs until no node has work and nothing is queued
    drop-msgs [ids]              throw away the queued messages for ids
    inject-msg from=A to=B type=T term=N [index= log-term= commit= reject hint= ctx= force]
                                 queue a message as if A had sent it
    isolate id / heal            messages from or to an isolated node are dropped when delivered
    compact id [index]           snapshot the state machine at `index` (applied) and persist it
    restart id                   the node crashes (unsynced writes lost) and starts again on its storage
    status [ids] / log [ids]     node state; log entries (in the core and in storage)
    log-level none|debug         none: Readies and messages are not printed (a command prints its own result,
                                 or "ok")

Every Ready and delivered message is printed (at log-level debug) in a fixed format: entries are
`index/term` (`"data"` for normal entries with data, `conf:add 4` for membership changes; a run of equal
entries prints as `a..b/term`), messages `src->dst type field=value ...` with every field not at its default.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, fields

from shoal.manager.raft.core import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    RaftConfig,
    RaftCore,
    Ready,
    Snapshot,
    SnapshotMeta,
)
from shoal.manager.raft.storage import MemoryStorage, bootstrap, persist_ready
from tests.raft.datadriven import DataDrivenError, Record

MAX_STABILIZE_ROUNDS = 1000


# --- formatting ------------------------------------------------------------------------------------


def fmt_data(data: bytes) -> str:
    """Quoted, escaped, and cut after 16 characters (with its size) when longer than 24."""
    text = data.decode("utf-8", "backslashreplace").replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("\n", "\\n")
    if len(text) > 24:
        return f'"{text[:16]}..."({len(data)}B)'
    return f'"{text}"'


def fmt_body(e: Entry) -> str:
    if e.type == EntryType.CONF_CHANGE:
        cc = ConfChange.decode(e.data)
        kind = "add" if cc.type == ConfChangeType.ADD_VOTER else "remove"
        return f" conf:{kind} {cc.node_id}"
    return f" {fmt_data(e.data)}" if e.data else ""


def fmt_entries(entries: tuple[Entry, ...] | list[Entry]) -> str:
    """Entries on one line; consecutive entries of the same term and content as one `a..b/term` run."""
    parts: list[str] = []
    k = 0
    while k < len(entries):
        e = entries[k]
        j = k
        while j + 1 < len(entries) and entries[j + 1].term == e.term and entries[j + 1].type == e.type \
                and entries[j + 1].data == e.data and entries[j + 1].index == entries[j].index + 1:
            j += 1
        idx = f"{e.index}..{entries[j].index}" if j > k else f"{e.index}"
        parts.append(f"{idx}/{e.term}{fmt_body(e)}")
        k = j + 1
    return ", ".join(parts)


def fmt_ids(ids: frozenset[int] | set[int] | list[int]) -> str:
    return "(" + ",".join(str(i) for i in sorted(ids)) + ")"


def fmt_snapshot(s: Snapshot) -> str:
    return f"{s.meta.index}/{s.meta.term} voters={fmt_ids(s.meta.voters)} data={fmt_data(s.data)}"


def fmt_msg(m: Message) -> str:
    out = [f"{m.src}->{m.dst} {m.type.value} term={m.term}"]
    if m.index:
        out.append(f"index={m.index}")
    if m.log_term:
        out.append(f"log-term={m.log_term}")
    if m.commit:
        out.append(f"commit={m.commit}")
    if m.reject:
        out.append(f"reject hint={m.reject_hint}")
    if m.entries:
        out.append(f"entries=[{fmt_entries(m.entries)}]")
    if m.snapshot is not None:
        out.append(f"snapshot=[{fmt_snapshot(m.snapshot)}]")
    if m.context:
        out.append(f"ctx={fmt_data(m.context)}")
    if m.force:
        out.append("force")
    if m.slack:
        out.append(f"slack={m.slack}")
    return " ".join(out)


def fmt_ready(rd: Ready) -> list[str]:
    lines = ["Ready" + (" must-sync" if rd.must_sync else "")]
    if rd.soft_state is not None:
        lines.append(f"role={rd.soft_state.role.value} leader={rd.soft_state.leader}")
    if rd.hard_state is not None:
        hs = rd.hard_state
        lines.append(f"hard-state term={hs.term} vote={hs.vote} commit={hs.commit}")
    if rd.snapshot is not None:
        lines.append(f"snapshot: {fmt_snapshot(rd.snapshot)}")
    if rd.entries:
        lines.append(f"entries: {fmt_entries(rd.entries)}")
    if rd.committed_entries:
        lines.append(f"committed: {fmt_entries(rd.committed_entries)}")
    for rs in rd.read_states:
        lines.append(f"read-state index={rs.index} ctx={fmt_data(rs.context)}")
    if rd.messages:
        lines.append("messages:")
        lines.extend(f"  {fmt_msg(m)}" for m in rd.messages)
    return lines


# --- parsing of arguments --------------------------------------------------------------------------


_ENTRY = re.compile(r"^(\d+)(?:\.\.(\d+))?/(\d+)(?::(.*))?$")


def parse_log(specs: tuple[str, ...]) -> list[Entry]:
    entries: list[Entry] = []
    for spec in specs:
        m = _ENTRY.match(spec)
        if m is None:
            raise DataDrivenError(f"bad entry {spec!r} (index/term[:data] or a..b/term[:data])")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        data = (m.group(4) or "").encode()
        entries.extend(Entry(i, int(m.group(3)), EntryType.NORMAL, data) for i in range(lo, hi + 1))
    return entries


def parse_config_value(v: str) -> object:
    if v in ("true", "false"):
        return v == "true"
    return int(v)


_CONFIG_FIELDS = {f.name for f in fields(RaftConfig)} - {"id"}


# --- the environment ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Node:
    core: RaftCore
    storage: MemoryStorage
    config: RaftConfig
    applied: list[bytes] = field(default_factory=list)
    installed: list[int] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)


class InteractionEnv:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.queue: list[Message] = []
        self.isolated: set[int] = set()
        self.verbose = True
        self.out: list[str] = []

    # --- plumbing ----------------------------------------------------------------------------------

    def emit(self, line: str) -> None:
        if self.verbose:
            self.out.append(line)

    def ids(self, rec: Record) -> list[int]:
        given = [int(w) for w in rec.positional() if w.isdigit()]
        for i in given:
            if i not in self.nodes:
                raise DataDrivenError(f"{rec.pos}: no node {i}")
        return given or sorted(self.nodes)

    def one(self, rec: Record) -> Node:
        ids = [int(w) for w in rec.positional() if w.isdigit()]
        if not ids or ids[0] not in self.nodes:
            raise DataDrivenError(f"{rec.pos}: {rec.command} needs a node id")
        return self.nodes[ids[0]]

    def start(self, i: int, config: RaftConfig, storage: MemoryStorage) -> None:
        snap = storage.load_snapshot()
        old = self.nodes.get(i)
        node = Node(RaftCore(config, storage, random.Random(i)), storage, config,
                    snap.data.split(b"\n") if snap is not None and snap.data else [])
        if old is not None:
            node.installed, node.reads = old.installed, old.reads
        self.nodes[i] = node

    def handle_ready(self, i: int) -> bool:
        node = self.nodes[i]
        if not node.core.has_ready():
            return False
        rd = node.core.ready()
        self.emit(f"> {i} handling Ready")
        for line in fmt_ready(rd):
            self.emit(f"  {line}")
        persist_ready(node.storage, rd)
        self.queue.extend(rd.messages)
        if rd.snapshot is not None:
            node.installed.append(rd.snapshot.meta.index)
            node.applied = rd.snapshot.data.split(b"\n") if rd.snapshot.data else []
        for e in rd.committed_entries:
            if e.type == EntryType.NORMAL and e.data:
                node.applied.append(e.data)
        node.reads.extend(f"{rs.index}:{fmt_data(rs.context)}" for rs in rd.read_states)
        node.core.advance(rd)
        return True

    def deliver(self, ids: list[int]) -> int:
        """Step the queued messages for `ids`, grouped by recipient in id order; returns how many were taken."""
        taken = 0
        for i in ids:
            mine = [m for m in self.queue if m.dst == i]
            if not mine:
                continue
            self.queue = [m for m in self.queue if m.dst != i]
            taken += len(mine)
            self.emit(f"> {i} receiving messages")
            for m in mine:
                if m.src in self.isolated or m.dst in self.isolated:
                    self.emit(f"  {fmt_msg(m)} (dropped: isolated)")
                    continue
                self.emit(f"  {fmt_msg(m)}")
                self.nodes[i].core.step(m)
        lost = [m for m in self.queue if m.dst not in self.nodes]
        if lost and ids == sorted(self.nodes):
            self.queue = [m for m in self.queue if m.dst in self.nodes]
            for m in lost:
                self.emit(f"  {fmt_msg(m)} (dropped: no node {m.dst})")
            taken += len(lost)
        return taken

    def stabilize(self, ids: list[int]) -> None:
        for _ in range(MAX_STABILIZE_ROUNDS):
            busy = False
            for i in ids:
                busy |= self.handle_ready(i)
            busy |= self.deliver(ids) > 0
            if not busy:
                return
        raise AssertionError(f"no stable state after {MAX_STABILIZE_ROUNDS} rounds")

    # --- commands ----------------------------------------------------------------------------------

    def handle(self, rec: Record) -> str:
        self.out = []
        fn = getattr(self, "cmd_" + rec.command.replace("-", "_"), None)
        if fn is None:
            raise DataDrivenError(f"{rec.pos}: unknown command {rec.command!r}")
        fn(rec)
        return "\n".join(self.out) if self.out else "ok"

    def cmd_log_level(self, rec: Record) -> None:
        level = rec.positional()[0]
        if level not in ("none", "debug"):
            raise DataDrivenError(f"{rec.pos}: log-level none|debug")
        self.verbose = level == "debug"

    def cmd_add_nodes(self, rec: Record) -> None:
        n = int(rec.positional()[0])
        ids = [int(v) for v in rec.values("ids")] or [max(self.nodes, default=0) + k + 1 for k in range(n)]
        if len(ids) != n:
            raise DataDrivenError(f"{rec.pos}: {n} nodes but ids={ids}")
        voters = [int(v) for v in rec.values("voters")] or ids
        cfg = {a.key.replace("-", "_"): parse_config_value(a.values[0]) for a in rec.args
               if a.key.replace("-", "_") in _CONFIG_FIELDS}
        for i in ids:
            st = MemoryStorage()
            if rec.has("log"):
                st.save_snapshot(Snapshot(SnapshotMeta(0, 0, frozenset(voters)), b""))
                st.append(parse_log(rec.values("log")))
                st.set_hard_state(HardState(int(rec.value("term", "0") or 0), int(rec.value("vote", "0") or 0),
                                            int(rec.value("commit", "0") or 0)))
                st.sync()
            elif not rec.has("empty"):
                bootstrap(st, voters)
            self.start(i, RaftConfig(id=i, **cfg), st)  # type: ignore[arg-type]

    def cmd_campaign(self, rec: Record) -> None:
        self.one(rec).core.campaign(force=rec.has("force"))

    def _attempt(self, i: int, what: str, fn: object) -> None:
        try:
            eid = fn()  # type: ignore[operator]
        except ProposalDropped as e:
            extra = f" leader={e.leader}" if hasattr(e, "leader") else ""
            self.out.append(f"{i}: {what} refused: {type(e).__name__}{extra}: {e}")
            return
        if eid is not None:
            self.out.append(f"{i}: {what} -> {eid.index}/{eid.term}")

    def cmd_propose(self, rec: Record) -> None:
        node = self.one(rec)
        i = node.config.id
        for data in rec.positional()[1:]:
            self._attempt(i, f"propose {data}", lambda d=data: node.core.propose(d.encode()))

    def cmd_propose_conf_change(self, rec: Record) -> None:
        node = self.one(rec)
        if rec.has("add"):
            cc = ConfChange(ConfChangeType.ADD_VOTER, int(rec.value("add") or 0))
        else:
            cc = ConfChange(ConfChangeType.REMOVE_VOTER, int(rec.value("remove") or 0))
        kind = "add" if cc.type == ConfChangeType.ADD_VOTER else "remove"
        self._attempt(node.config.id, f"conf:{kind} {cc.node_id}", lambda: node.core.propose_conf_change(cc))

    def cmd_read_index(self, rec: Record) -> None:
        node = self.one(rec)
        ctx = rec.positional()[1]
        self._attempt(node.config.id, f"read-index {ctx}", lambda: node.core.read_index(ctx.encode()))

    def cmd_transfer_leader(self, rec: Record) -> None:
        node = self.one(rec)
        to = int(rec.value("to") or 0)
        self._attempt(node.config.id, f"transfer-leader to {to}", lambda: node.core.transfer_leader(to))

    def _tick(self, rec: Record, n: int) -> None:
        node = self.one(rec)
        for _ in range(n):
            node.core.tick()

    def cmd_broadcast_commit(self, rec: Record) -> None:
        """`broadcast-commit <id>`: a shell's delayed commit broadcast (RaftNode.commit_broadcast_delay)."""
        node = self.one(rec)
        sent = node.core.broadcast_commit()
        self.out.append(f"{node.config.id}: broadcast-commit -> {'sent' if sent else 'nothing to send'}")

    def cmd_set_slack(self, rec: Record) -> None:
        """`set-slack <id> <ticks>`: what the node's shell asks followers for while it leads (its stalls)."""
        self.one(rec).core.slack = int(rec.positional()[1])

    def cmd_tick(self, rec: Record) -> None:
        pos = rec.positional()
        self._tick(rec, int(pos[1]) if len(pos) > 1 else 1)

    def cmd_tick_heartbeat(self, rec: Record) -> None:
        self._tick(rec, self.one(rec).config.heartbeat_ticks)

    def cmd_tick_election(self, rec: Record) -> None:
        self._tick(rec, self.one(rec).config.election_ticks)

    def cmd_tick_all(self, rec: Record) -> None:
        pos = rec.positional()
        rounds = int(pos[0]) if pos else 1
        order = [int(v) for v in rec.values("order")] or sorted(self.nodes)
        for _ in range(rounds):
            for i in order:
                self.nodes[i].core.tick()
                self.handle_ready(i)
            self.stabilize(sorted(self.nodes))

    def cmd_process_ready(self, rec: Record) -> None:
        for i in self.ids(rec):
            while self.handle_ready(i):
                pass

    def cmd_deliver_msgs(self, rec: Record) -> None:
        self.deliver(self.ids(rec))

    def cmd_stabilize(self, rec: Record) -> None:
        self.stabilize(self.ids(rec))

    def cmd_drop_msgs(self, rec: Record) -> None:
        ids = set(self.ids(rec))
        for m in self.queue:
            if m.dst in ids:
                self.emit(f"  {fmt_msg(m)} (dropped)")
        self.queue = [m for m in self.queue if m.dst not in ids]

    def cmd_inject_msg(self, rec: Record) -> None:
        def num(key: str) -> int:
            return int(rec.value(key, "0") or 0)

        m = Message(MsgType(rec.value("type")), num("from"), num("to"), num("term"), index=num("index"),
                    log_term=num("log-term"), commit=num("commit"), reject=rec.has("reject"),
                    reject_hint=num("hint"), context=(rec.value("ctx", "") or "").encode(), force=rec.has("force"))
        self.queue.append(m)
        self.emit(f"  {fmt_msg(m)} (queued)")

    def cmd_isolate(self, rec: Record) -> None:
        self.isolated |= set(self.ids(rec))

    def cmd_heal(self, rec: Record) -> None:
        self.isolated = set()

    def cmd_compact(self, rec: Record) -> None:
        node = self.one(rec)
        pos = rec.positional()
        index = int(pos[1]) if len(pos) > 1 else node.core.applied
        # The state machine's data at `index`: what was applied up to it (one data word per normal entry).
        keep = len([e for e in node.core.log_entries(index + 1, node.core.applied + 1)
                    if e.type == EntryType.NORMAL and e.data])
        data = node.applied[:len(node.applied) - keep]
        snap = node.core.compact(index, b"\n".join(data))
        node.storage.save_snapshot(snap)
        node.storage.sync()
        self.out.append(f"{node.config.id}: snapshot {fmt_snapshot(snap)}; log now first-index={node.core.first_index} "
                        f"last-index={node.core.last_index}")

    def cmd_restart(self, rec: Record) -> None:
        node = self.one(rec)
        node.storage.crash()
        self.start(node.config.id, node.config, node.storage)

    def cmd_status(self, rec: Record) -> None:
        for i in self.ids(rec):
            node = self.nodes[i]
            s = node.core.status()
            self.out.append(f"{i}: {s['role']} term={s['term']} vote={s['vote']} leader={s['leader']} "
                            f"commit={s['commit']} applied={s['applied']} log=[{s['first_index']},"
                            f"{s['last_index']}] voters={fmt_ids(node.core.voters)}")
            self.out.append(f"   state machine: [{', '.join(fmt_data(d) for d in node.applied)}]")
            if node.installed:
                self.out.append(f"   installed snapshots: {node.installed}")
            if node.reads:
                self.out.append(f"   read states: {', '.join(node.reads)}")

    def cmd_log(self, rec: Record) -> None:
        for i in self.ids(rec):
            node = self.nodes[i]
            core = node.core
            self.out.append(f"{i} log: [{fmt_entries(core.log_entries(core.first_index, core.last_index + 1))}]")
            st = node.storage
            self.out.append(f"{i} stored: [{fmt_entries(st.entries(st.first_index(), st.last_index() + 1))}]")
