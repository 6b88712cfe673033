"""A deterministic Raft core in the style of etcd/raft: no I/O, no clock, no asyncio, no global randomness.

The shell drives it with five calls and owns everything else:

    core = RaftCore(RaftConfig(id=1), storage, random.Random(seed))   # reads storage.load() once
    # The core keeps only the snapshot's metadata: its data is read back (storage.load_snapshot) each time
    # a follower needs it (MsgType.SNAPSHOT) and dropped once that message is handed out.
    core.tick()                      # every tick interval (time only enters here)
    core.step(msg)                   # a Message received from a peer
    core.propose(data)               # -> EntryId(index, term), or raises ProposalDropped / NotLeader
    while core.has_ready():
        rd = core.ready()
        # 1. persist: rd.snapshot (storage.apply_snapshot), rd.entries (storage.append), rd.hard_state;
        #    fsync if rd.must_sync. Nothing in rd.messages may leave before this is durable (a leader's
        #    APPEND and HEARTBEAT may: its own entries count toward a commit only once `advance` says they
        #    are stored, as in etcd/raft's parallel leader write).
        # 2. send rd.messages (any order; the core tolerates loss, duplication, reordering)
        # 3. restore the state machine from rd.snapshot if set, then apply rd.committed_entries in order
        # 4. hand rd.read_states to waiting readers (serve once applied >= read_state.index)
        core.advance(rd)

A proposal is acknowledged when the committed entry at `EntryId.index` has `EntryId.term`; if another term
shows up at that index the proposal was lost (leader change) and the caller may retry.

Membership changes are `ConfChange` entries (add or remove one voter), applied by the core itself when they
commit (the shell sees them in `committed_entries` and may react: open or close a connection). A second
change is refused while one is pending, and a new leader refuses changes until an entry of its own term is
applied (the fix for the single-server-change bug described in Ongaro's raft-dev note of 2015).

Features: pre-vote, check-quorum (leader lease: a node that heard from a leader within an election timeout
ignores vote requests), slack (a leader whose process stalls asks its followers, on each heartbeat and append,
to wait up to `max_slack_ticks` more before they campaign: only when elections happen changes, never safety),
batching (`max_entries_per_msg`, `max_bytes_per_msg`), pipelining (optimistic next
index and an inflight window per follower), fast backtracking (the follower's reject carries an index/term
hint), snapshots (`compact` by the application, InstallSnapshot to followers behind the first log index),
leadership transfer (`transfer_leader`), and linearizable reads (`read_index`).

Node ids are non-zero ints (0 means "none"); the shell maps them to swarm node ids.
"""

from __future__ import annotations

import enum
import random
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.manager.raft.storage import Storage

NONE = 0

# Format bytes: bumped when an encoding changes; decoders keep reading every older format.
ENTRY_FORMAT = 1
CONF_CHANGE_FORMAT = 1
SNAPSHOT_FORMAT = 1


class UnsupportedFormat(ValueError):
    """Data written by a newer version than this one understands."""


# --- data ------------------------------------------------------------------------------------------


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def encode(self) -> bytes:
        """The payload stored next to (index, term): format byte, type byte, data."""
        return bytes((ENTRY_FORMAT, int(self.type))) + self.data

    @staticmethod
    def decode(index: int, term: int, payload: bytes) -> Entry:
        if not payload:
            raise ValueError("empty entry payload")
        fmt = payload[0]
        if fmt == 1:
            return Entry(index, term, EntryType(payload[1]), bytes(payload[2:]))
        raise UnsupportedFormat(f"raft entry format {fmt}")

    def size(self) -> int:
        return len(self.data) + 16


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0
    REMOVE_VOTER = 1


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: int
    context: bytes = b""  # e.g. the new manager's address, for the shell

    def encode(self) -> bytes:
        return bytes((CONF_CHANGE_FORMAT, int(self.type))) + struct.pack(">Q", self.node_id) + self.context

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        if not data:
            raise ValueError("empty conf change")
        fmt = data[0]
        if fmt == 1:
            (node_id,) = struct.unpack(">Q", data[2:10])
            return ConfChange(ConfChangeType(data[1]), node_id, bytes(data[10:]))
        raise UnsupportedFormat(f"raft conf change format {fmt}")


@dataclass(frozen=True, slots=True)
class HardState:
    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    voters: frozenset[int]


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes

    def encode(self) -> bytes:
        """Blob for a snapshot file stored next to (index, term): format, voters, application data."""
        voters = sorted(self.meta.voters)
        return struct.pack(">BI", SNAPSHOT_FORMAT, len(voters)) + b"".join(struct.pack(">Q", v) for v in voters) \
            + self.data

    @staticmethod
    def decode(index: int, term: int, blob: bytes) -> Snapshot:
        fmt = blob[0]
        if fmt == 1:
            (n,) = struct.unpack(">I", blob[1:5])
            voters = frozenset(struct.unpack(f">{n}Q", blob[5:5 + 8 * n]))
            return Snapshot(SnapshotMeta(index, term, voters), bytes(blob[5 + 8 * n:]))
        raise UnsupportedFormat(f"raft snapshot format {fmt}")


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    leader: int
    role: Role


class MsgType(enum.Enum):
    PRE_VOTE = "pre-vote"
    PRE_VOTE_RESP = "pre-vote-resp"
    VOTE = "vote"
    VOTE_RESP = "vote-resp"
    APPEND = "append"
    APPEND_RESP = "append-resp"
    SNAPSHOT = "snapshot"  # InstallSnapshot; answered with APPEND_RESP
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat-resp"
    TIMEOUT_NOW = "timeout-now"  # leadership transfer: campaign now, skipping pre-vote and leases
    READ_INDEX = "read-index"  # follower -> leader
    READ_INDEX_RESP = "read-index-resp"


_LEADER_WORD = frozenset({MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT})  # what carries a leader's slack
_FOLLOWER_WORD = frozenset({MsgType.APPEND_RESP, MsgType.HEARTBEAT_RESP})  # and a follower's


@dataclass(frozen=True, slots=True)
class Message:
    """One message between cores. Fields not used by a type keep their defaults.

    APPEND: `index`/`log_term` are the entry before `entries`; `commit` the leader's commit.
    APPEND_RESP: `index` is the follower's last matching index (success) or the rejected `index`
    (reject, with `reject_hint`/`log_term` the follower's hint for fast backtracking).
    (PRE_)VOTE: `index`/`log_term` are the candidate's last entry; `force` skips leases (transfer).
    """

    type: MsgType
    src: int
    dst: int
    term: int
    index: int = 0
    log_term: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""
    force: bool = False
    # APPEND, HEARTBEAT, SNAPSHOT from a leader: ticks its followers add to their election timeout (`slack`).
    slack: int = 0


@dataclass(frozen=True, slots=True)
class ReadState:
    """The answer to `read_index(context)`: serve the read once the state machine applied `index`."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class EntryId:
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None  # set when leader or role changed
    hard_state: HardState | None  # set when it changed: write it
    entries: tuple[Entry, ...]  # persist (append, replacing any suffix from entries[0].index) before sending
    snapshot: Snapshot | None  # install (replaces the whole log), persist before sending
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]  # apply in order, after `snapshot`
    read_states: tuple[ReadState, ...]
    # fsync before sending: entries, a snapshot, or a new term or vote. A hard state whose commit alone moved is
    # written but need not be synced (etcd's MustSync): a commit index is a fact of the majority, not a promise
    # of this node; lost in a crash, it is learnt again from the leader (restart takes max(commit, snapshot)).
    must_sync: bool


# --- errors ----------------------------------------------------------------------------------------


class ProposalDropped(Exception):
    """The core did not take the proposal; nothing was appended."""


class NotLeader(ProposalDropped):
    def __init__(self, leader: int) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader  # 0 when unknown: the shell forwards to it, or retries later


class ConfChangePending(ProposalDropped):
    pass


class TransferInProgress(ProposalDropped):
    pass


# --- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RaftConfig:
    id: int
    election_ticks: int = 10  # randomized in [election_ticks, election_ticks + jitter)
    heartbeat_ticks: int = 1
    # The randomized part of the election timeout, in ticks (None: election_ticks, as etcd). Half of it is
    # still hundreds of milliseconds between candidates, far above a loopback or LAN round trip.
    election_jitter_ticks: int | None = None
    pre_vote: bool = True
    check_quorum: bool = True
    # A candidate refused in its own term campaigns again within 1..jitter ticks (with pre-vote only; see
    # `_step_candidate`); off, it waits a whole randomized election timeout, as etcd's Raft does.
    split_vote_retry: bool = True
    max_entries_per_msg: int = 256
    max_bytes_per_msg: int = 1 << 20
    max_inflight: int = 64  # appends in flight per follower (pipelining window)
    max_committed_per_ready: int = 4096
    # And only until their data reaches this many bytes (the entry that reaches it included): the shell applies
    # a Ready's entries in one go, and a follower behind by 100 entries of 1,000 tasks each decoded them for
    # seconds without a tick.
    max_committed_bytes_per_ready: int = 4 << 20
    snapshot_retry_heartbeats: int = 10  # heartbeat answers seen in SNAPSHOT state before sending it again
    # The most ticks a node may ask the others to wait beyond an election timeout (0: none, as etcd). A leader
    # whose process stalls (a collection, a starved core) asks its followers for slack before they campaign; a
    # follower that stalls asks its leader for slack before check-quorum makes it step down: see `slack`.
    max_slack_ticks: int = 0
    # When the commit index moves, the leader tells every follower at once with an append (etcd's raft). Off,
    # they learn it with the next append or heartbeat (hashicorp/raft's way): for writes that come one at a time,
    # half the messages (no append carrying a commit alone, and no answer to it), at the cost of followers
    # applying up to a heartbeat later once writes stop. The daemon turns it off here and has its shell do it a
    # moment later (`broadcast_commit`, RaftNode.commit_broadcast_delay), for commit indexes no append carried
    # meanwhile: a manager answers some reads from its own store (networks, events, info, a container attached to
    # a swarm network), which would lag until the next heartbeat.
    commit_broadcast: bool = True

    def __post_init__(self) -> None:
        if self.id == NONE:
            raise ValueError("raft id must be non-zero")
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")


# --- per-follower replication state ----------------------------------------------------------------


class ProgressState(enum.Enum):
    PROBE = "probe"  # one append at a time until we find where the logs match
    REPLICATE = "replicate"  # optimistic: stream appends, up to max_inflight unacknowledged
    SNAPSHOT = "snapshot"  # a snapshot is on its way; wait for its answer


@dataclass(slots=True)
class Progress:
    match: int = 0
    next: int = 1
    state: ProgressState = ProgressState.PROBE
    inflight: deque[int] = field(default_factory=deque)  # last index of each append in flight
    probe_sent: bool = False
    recent_active: bool = False
    slack: int = 0  # what the follower last asked for, from its own stalls (capped): see `_tick_leader`
    pending_snapshot: int = 0
    snapshot_wait: int = 0
    stalled_ticks: int = 0  # leader ticks since `match` last moved while behind (frozen while a snapshot goes)
    sent_commit: int = 0  # the highest commit index sent to it (in an append or a heartbeat)

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.inflight.clear()
        self.probe_sent = False
        self.pending_snapshot = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.inflight.clear()
        self.probe_sent = False

    def paused(self, max_inflight: int) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True


@dataclass(slots=True)
class _ReadRequest:
    index: int
    context: bytes
    origin: int
    acks: set[int]


# --- the core --------------------------------------------------------------------------------------


class RaftCore:
    def __init__(self, config: RaftConfig, storage: Storage, rng: random.Random) -> None:
        self.cfg = config
        self.id = config.id
        self._rng = rng
        self._storage = storage
        state = storage.load()
        # Only the snapshot's metadata is kept, never its data (a store of configs can be hundreds of MiB).
        meta = state.snapshot.meta if state.snapshot is not None else SnapshotMeta(0, 0, frozenset())
        self._snap_meta = meta
        self._snap_index = meta.index
        self._snap_term = meta.term
        # The log is `_log` after its offset entry (`_off_index`, `_off_term`): the snapshot's, or below it when
        # compaction kept a catch-up tail of entries the snapshot already holds (`compact`).
        self._off_index, self._off_term = self._snap_index, self._snap_term
        ents = list(state.entries)
        hs = state.hard_state
        del state
        for k, e in enumerate(ents):
            if e.index != ents[0].index + k:
                raise ValueError(f"storage log is not contiguous at {e.index}")
        if ents and ents[0].index <= self._snap_index:
            at_snap = self._snap_index - ents[0].index
            if at_snap < len(ents) and ents[at_snap].term == self._snap_term:
                # A stored catch-up tail: its first entry becomes the offset (its data is in the snapshot).
                self._off_index, self._off_term = ents[0].index, ents[0].term
                ents = ents[1:]
            else:
                ents = [e for e in ents if e.index > self._snap_index]
        if ents and ents[0].index != self._off_index + 1:
            raise ValueError(f"storage log is not contiguous after snapshot {self._snap_index}")
        self._log: list[Entry] = ents
        self._stable = self.last_index  # everything loaded is durable
        self.term = hs.term
        self.vote = hs.vote
        self.commit = max(hs.commit, self._snap_index)
        if self.commit > self.last_index:
            raise ValueError(f"commit {self.commit} beyond last index {self.last_index}")
        self.applied = self._snap_index  # the application restores from the snapshot
        self.role = Role.FOLLOWER
        self.leader = NONE
        self.elections = 0  # elections this node started (each raised the term), for the metrics
        self._progress: dict[int, Progress] = {}
        self._conf_history: list[tuple[int, frozenset[int]]] = [(self._snap_index, meta.voters)]
        self.voters: frozenset[int] = meta.voters
        self._apply_conf_changes(self._snap_index, self.commit)
        self._prev_hs = HardState(self.term, self.vote, self.commit)
        self._prev_ss = SoftState(NONE, Role.FOLLOWER)
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._pending_install: Snapshot | None = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = 0
        # Leading: the ticks the shell asks followers to add to their election timeout, from this node's own
        # recent stalls (capped by max_slack_ticks when sent). Following: what the leader last asked.
        self.slack = 0
        self._leader_slack = 0
        self._quiet_checks = 0
        self._votes: dict[int, bool] = {}
        self._pending_conf_index = 0
        self._transferee = NONE
        self._read_queue: list[_ReadRequest] = []
        self._reads_before_commit: list[tuple[int, bytes]] = []
        self._bcast_pending = False
        self._reset_randomized_timeout()

    # --- log helpers -------------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        """The first entry in the log: at or below the snapshot's index + 1 (the catch-up tail)."""
        return self._off_index + 1

    @property
    def last_index(self) -> int:
        return self._off_index + len(self._log)

    @property
    def last_term(self) -> int:
        return self._log[-1].term if self._log else self._off_term

    @property
    def snapshot_meta(self) -> SnapshotMeta:
        """The latest snapshot's index, term and voters; its data is in storage (`storage.load_snapshot`)."""
        return self._snap_meta

    def log_term(self, index: int) -> int | None:
        """The term of the entry at index, or None when compacted away (below the log) or not there."""
        if index == self._off_index:
            return self._off_term
        if self._off_index < index <= self.last_index:
            return self._log[index - self._off_index - 1].term
        return None

    def log_entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi (both clipped to what the log holds)."""
        lo = max(lo, self.first_index)
        hi = min(hi, self.last_index + 1)
        if lo >= hi:
            return []
        return self._log[lo - self._off_index - 1:hi - self._off_index - 1]

    def _truncate_and_append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        assert first > self.commit, f"truncating committed entry {first} (commit {self.commit})"
        del self._log[first - self._off_index - 1:]
        self._log.extend(entries)
        self._stable = min(self._stable, first - 1)

    def _voters_at(self, index: int) -> frozenset[int]:
        voters = self._conf_history[0][1]
        for idx, v in self._conf_history:
            if idx <= index:
                voters = v
        return voters

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    @property
    def promotable(self) -> bool:
        return self.id in self.voters

    def status(self) -> dict[str, object]:
        return {"id": self.id, "term": self.term, "vote": self.vote, "commit": self.commit,
                "applied": self.applied, "role": self.role.value, "leader": self.leader,
                "first_index": self.first_index, "last_index": self.last_index,
                "voters": sorted(self.voters)}

    def progress(self, node: int) -> Progress | None:
        return self._progress.get(node)

    def following(self, node: int, within_ticks: int) -> bool:
        """On the leader: is `node` caught up, or did its log grow in the last `within_ticks` ticks (or is a
        snapshot on its way to it)? A member that answers heartbeats but takes no entries is not following:
        the API must not show it Reachable. Elsewhere: True (only the leader knows)."""
        if self.role != Role.LEADER or node == self.id:
            return True
        pr = self._progress.get(node)
        return pr is not None and pr.stalled_ticks < within_ticks

    # --- role changes ------------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.leader = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._leader_slack = 0
        self._quiet_checks = 0  # leading: election timeouts in a row without a quorum heard from
        self._reset_randomized_timeout()
        self._votes = {}
        self._progress = {}
        self._transferee = NONE
        self._read_queue = []
        self._reads_before_commit = []

    @property
    def _jitter(self) -> int:
        """The randomized part of the election timeout, in ticks."""
        return self.cfg.election_jitter_ticks or self.cfg.election_ticks

    def _reset_randomized_timeout(self) -> None:
        self._randomized_timeout = self.cfg.election_ticks + self._rng.randrange(self._jitter)

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        # Pre-vote changes neither term nor vote: a partitioned node cannot inflate the term.
        self._votes = {}
        self.leader = NONE
        self.role = Role.PRE_CANDIDATE
        self._election_elapsed = 0
        self._leader_slack = 0
        self._reset_randomized_timeout()

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.elections += 1
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        for v in self.voters:
            if v != self.id:
                self._progress[v] = Progress(match=0, next=self.last_index + 1)
        # An empty entry of the new term commits everything before it; until it is applied, conf
        # changes are refused (single-server change safety).
        self._append_local([(EntryType.NORMAL, b"")])
        self._pending_conf_index = self.last_index
        self._maybe_commit()
        self._broadcast_append()

    # --- public inputs -----------------------------------------------------------------------------

    def tick(self) -> None:
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._election_elapsed += 1
            if self.promotable and self._election_elapsed >= self._randomized_timeout + self._leader_slack:
                self._election_elapsed = 0
                self.campaign()

    def _tick_leader(self) -> None:
        last = self.last_index
        for pr in self._progress.values():
            if pr.match >= last:
                pr.stalled_ticks = 0
            elif pr.state != ProgressState.SNAPSHOT:
                pr.stalled_ticks += 1
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.cfg.election_ticks:
            self._election_elapsed = 0
            if self.cfg.check_quorum:
                if self._quorum_active():
                    self._quiet_checks = 0
                else:
                    # No quorum heard from within an election timeout: step down, unless stalls (its own or
                    # its followers') asked for slack, which extends the wait by as much.
                    self._quiet_checks += 1
                    slack = min(self.cfg.max_slack_ticks,
                                max([self.slack, *(pr.slack for pr in self._progress.values())]))
                    if self._quiet_checks * self.cfg.election_ticks >= self.cfg.election_ticks + slack:
                        self._become_follower(self.term, NONE)
                        return
                for pr in self._progress.values():
                    pr.recent_active = False
            self._transferee = NONE  # a transfer not done within an election timeout is abandoned
        if self._heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            ctx = self._read_queue[-1].context if self._read_queue else b""
            self._broadcast_heartbeat(ctx)

    def _quorum_active(self) -> bool:
        active = sum(1 for v in self.voters if v == self.id or (v in self._progress
                                                                and self._progress[v].recent_active))
        return active >= self.quorum

    def campaign(self, *, force: bool = False) -> None:
        """Start an election now (pre-vote first unless forced)."""
        if not self.promotable or self.role == Role.LEADER:
            return
        if self._pending_install is not None:
            return
        if self.cfg.pre_vote and not force:
            self._become_pre_candidate()
            self._votes[self.id] = True
            if self._count_votes() >= self.quorum:
                self._become_candidate()
                self._start_vote(force=False)
                return
            for v in sorted(self.voters):
                if v != self.id:
                    self._send(Message(MsgType.PRE_VOTE, self.id, v, self.term + 1, index=self.last_index,
                                       log_term=self.last_term))
            return
        self._become_candidate()
        self._start_vote(force=force)

    def _start_vote(self, *, force: bool) -> None:
        self._votes[self.id] = True
        if self._count_votes() >= self.quorum:
            self._become_leader()
            return
        for v in sorted(self.voters):
            if v != self.id:
                self._send(Message(MsgType.VOTE, self.id, v, self.term, index=self.last_index,
                                   log_term=self.last_term, force=force))

    def _count_votes(self) -> int:
        return sum(1 for v, granted in self._votes.items() if granted and v in self.voters)

    def _count_rejects(self) -> int:
        return sum(1 for v, granted in self._votes.items() if not granted and v in self.voters)

    def propose(self, data: bytes) -> EntryId:
        """Append a normal entry on the leader; raises NotLeader (with a hint) anywhere else."""
        self._check_can_propose()
        self._append_local([(EntryType.NORMAL, data)])
        return self._after_propose()

    def propose_conf_change(self, cc: ConfChange) -> EntryId:
        """Propose adding or removing one voter; refused while another change is not yet applied."""
        self._check_can_propose()
        if self._pending_conf_index > self.applied:
            raise ConfChangePending("a membership change is already in progress")
        if cc.type == ConfChangeType.REMOVE_VOTER and self.voters == {cc.node_id}:
            raise ProposalDropped("cannot remove the last voter")
        if cc.type == ConfChangeType.ADD_VOTER and cc.node_id in self.voters:
            raise ProposalDropped(f"{cc.node_id} is already a voter")
        if cc.type == ConfChangeType.REMOVE_VOTER and cc.node_id not in self.voters:
            raise ProposalDropped(f"{cc.node_id} is not a voter")
        self._append_local([(EntryType.CONF_CHANGE, cc.encode())])
        self._pending_conf_index = self.last_index
        return self._after_propose()

    def _check_can_propose(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if self._transferee != NONE:
            raise TransferInProgress(f"leadership is moving to {self._transferee}")

    def _after_propose(self) -> EntryId:
        # Appends go out when the shell next calls ready(): proposals made in between share messages.
        self._bcast_pending = True
        return EntryId(self.last_index, self.term)

    def _append_local(self, items: Sequence[tuple[EntryType, bytes]]) -> None:
        base = self.last_index
        for k, (typ, data) in enumerate(items):
            self._log.append(Entry(base + 1 + k, self.term, typ, data))

    def transfer_leader(self, target: int) -> None:
        """Hand leadership to `target` (a voter): catch it up, then tell it to campaign at once."""
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if target == self.id or target not in self._progress:
            raise ProposalDropped(f"cannot transfer leadership to {target}")
        self._transferee = target
        self._election_elapsed = 0
        pr = self._progress[target]
        if pr.match == self.last_index:
            self._send(Message(MsgType.TIMEOUT_NOW, self.id, target, self.term))
        else:
            self._send_append(target)

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point. A `ReadState(index, context)` shows up in a later Ready once
        the leader has confirmed (heartbeat round to a majority) that it was still the leader; serve the
        read after applying up to that index. Contexts must be unique among outstanding reads. The request
        is silently lost on leader change or message loss: the caller times out and retries."""
        if self.role == Role.LEADER:
            self._handle_read(self.id, context)
        elif self.leader != NONE:
            self._send(Message(MsgType.READ_INDEX, self.id, self.leader, self.term, context=context))
        else:
            raise NotLeader(NONE)

    def compact(self, index: int, data: bytes, *, keep_entries: int = 0, keep_bytes: int | None = None) -> Snapshot:
        """The application took a snapshot of its state at `index` (<= applied): drop the log up to it, except
        a catch-up tail of the last `keep_entries` entries at or below `index`, no more than `keep_bytes` of them
        (`Entry.size`; None: no byte bound): a follower only that far behind then gets entries, not the whole
        snapshot (swarmkit's LogEntriesForSlowFollowers, etcd's SnapshotCatchUpEntries). Returns the Snapshot;
        the shell persists it (storage.save_snapshot(snap, compact_index=first_index - 1)) before deleting
        anything. The core keeps only its metadata: until storage holds it, no follower is sent a snapshot.
        An `index` at or below the current snapshot's changes nothing (returns the stored snapshot)."""
        if index <= self._snap_index:
            stored = self._storage.load_snapshot()
            return stored if stored is not None else Snapshot(self._snap_meta, b"")
        if index > self.applied:
            raise ValueError(f"compact({index}) beyond applied {self.applied}")
        term = self.log_term(index)
        assert term is not None
        snap = Snapshot(SnapshotMeta(index, term, self._voters_at(index)), data)
        off, size = index, 0
        while off > self._off_index and index - off < keep_entries:
            size += self._log[off - self._off_index - 1].size()
            if keep_bytes is not None and size > keep_bytes:
                break
            off -= 1
        off_term = self.log_term(off)
        assert off_term is not None
        del self._log[:off - self._off_index]
        self._off_index, self._off_term = off, off_term
        self._snap_index, self._snap_term, self._snap_meta = index, term, snap.meta
        self._conf_history = [(index, snap.meta.voters)] + [(i, v) for i, v in self._conf_history if i > index]
        return snap

    def report_unreachable(self, node: int) -> None:
        """The transport failed to deliver to `node`: stop pipelining to it."""
        pr = self._progress.get(node)
        if pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, node: int, ok: bool) -> None:
        """The transport finished (or failed) streaming a snapshot to `node`."""
        pr = self._progress.get(node)
        if pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True  # wait for the next heartbeat answer before probing

    # --- ready / advance ---------------------------------------------------------------------------

    @property
    def has_unstable_entries(self) -> bool:
        """Entries not yet handed out in a Ready to be stored (the next Ready carries them)."""
        return self._stable < self.last_index

    def has_ready(self) -> bool:
        if self._bcast_pending or self._msgs or self._read_states or self._pending_install is not None \
                or self.commit > self.applied or self._stable < self.last_index:
            return True
        hs, ss = self._prev_hs, self._prev_ss
        return (hs.term != self.term or hs.vote != self.vote or hs.commit != self.commit
                or ss.leader != self.leader or ss.role != self.role)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role)

    def ready(self) -> Ready:
        if self._bcast_pending:
            self._bcast_pending = False
            if self.role == Role.LEADER:
                self._maybe_commit()
                self._broadcast_append(send_if_empty=False)
        hs = self._hard_state()
        ss = self._soft_state()
        committed: tuple[Entry, ...] = ()
        if self._pending_install is None and self.commit > self.applied:
            hi = min(self.commit, self.applied + self.cfg.max_committed_per_ready)
            committed = tuple(self.log_entries(self.applied + 1, hi + 1))
            size = 0
            for n, e in enumerate(committed):
                size += len(e.data)
                if size >= self.cfg.max_committed_bytes_per_ready:
                    committed = committed[:n + 1]
                    break
        entries = tuple(self.log_entries(self._stable + 1, self.last_index + 1))
        rd = Ready(
            soft_state=ss if ss != self._prev_ss else None,
            hard_state=hs if hs != self._prev_hs else None,
            entries=entries,
            snapshot=self._pending_install,
            messages=tuple(self._msgs),
            committed_entries=committed,
            read_states=tuple(self._read_states),
            must_sync=(bool(entries) or self._pending_install is not None
                       or hs.term != self._prev_hs.term or hs.vote != self._prev_hs.vote),
        )
        self._prev_ss = ss
        self._msgs = []
        self._read_states = []
        return rd

    def advance(self, rd: Ready) -> None:
        """The shell persisted, sent and applied `rd` (see the module docstring)."""
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.snapshot is not None:
            if self._pending_install is rd.snapshot:
                self._pending_install = None
            self.applied = max(self.applied, rd.snapshot.meta.index)
            self._stable = max(self._stable, min(rd.snapshot.meta.index, self.last_index))
        if rd.entries:
            last = rd.entries[-1]
            if self.log_term(last.index) == last.term and last.index > self._stable:
                self._stable = last.index
        if rd.committed_entries:
            self.applied = max(self.applied, rd.committed_entries[-1].index)
        if self.role == Role.LEADER and self._maybe_commit():
            self._commit_moved()

    # --- messages ----------------------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        if self.slack and self.cfg.max_slack_ticks and (
                msg.type in _FOLLOWER_WORD or (self.role == Role.LEADER and msg.type in _LEADER_WORD)):
            msg = replace(msg, slack=min(self.slack, self.cfg.max_slack_ticks))
        self._msgs.append(msg)

    def step(self, m: Message) -> None:
        if m.dst != self.id or m.src == self.id:
            return
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                in_lease = (self.cfg.check_quorum and self.leader != NONE
                            and self._election_elapsed < self.cfg.election_ticks + self._leader_slack)
                if in_lease and not m.force:
                    return  # we heard from a leader recently: a disruptive candidate is ignored
            if m.type == MsgType.PRE_VOTE or (m.type == MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # pre-vote never changes our term
            elif m.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if m.type in (MsgType.APPEND, MsgType.HEARTBEAT) and (self.cfg.check_quorum or self.cfg.pre_vote):
                # A stale leader (e.g. back from a partition that pre-vote kept us from noticing):
                # tell it our term so it steps down.
                self._send(Message(MsgType.APPEND_RESP, self.id, m.src, self.term))
            elif m.type == MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, self.id, m.src, self.term, reject=True))
            return

        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote_request(m)
            return
        if self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (self.vote == m.src or (self.vote == NONE and self.leader == NONE)
                    or (m.type == MsgType.PRE_VOTE and m.term > self.term))
        up_to_date = (m.log_term, m.index) >= (self.last_term, self.last_index)
        resp = MsgType.VOTE_RESP if m.type == MsgType.VOTE else MsgType.PRE_VOTE_RESP
        if can_vote and up_to_date:
            self._send(Message(resp, self.id, m.src, m.term))
            if m.type == MsgType.VOTE:
                self.vote = m.src
                self._election_elapsed = 0
        else:
            self._send(Message(resp, self.id, m.src, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        if m.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            self._become_follower(m.term, m.src)  # same term: someone else won
            self._step_follower(m)
            return
        want = MsgType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        if m.type != want:
            return
        if self.role == Role.PRE_CANDIDATE and not m.reject and m.term != self.term + 1:
            return  # a grant from an older pre-campaign
        self._votes[m.src] = not m.reject
        if m.reject and self.role == Role.CANDIDATE and m.term == self.term and self.cfg.pre_vote \
                and self.cfg.split_vote_retry:
            # The peer voted for another candidate of this term, most often itself: two followers timed out
            # within a message's flight of each other and split the vote, and with the other voters down
            # neither can win. Rather than both waiting out a whole new election timeout, each tries again
            # within 1..jitter ticks (a fresh draw, so a second collision is rare). Only liveness is touched,
            # and only with pre-vote: the new campaign raises no term until a quorum has granted its pre-vote
            # (without it, a candidate refused for its log would push the term up every few ticks).
            self._randomized_timeout = min(self._randomized_timeout,
                                           self._election_elapsed + 1 + self._rng.randrange(self._jitter))
        if self._count_votes() >= self.quorum:
            if self.role == Role.PRE_CANDIDATE:
                self._become_candidate()
                self._start_vote(force=False)
            else:
                self._become_leader()
        elif self._count_rejects() >= self.quorum:
            self._become_follower(self.term, NONE)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in _LEADER_WORD:
            self._leader_slack = min(m.slack, self.cfg.max_slack_ticks)
        if t == MsgType.APPEND:
            self._election_elapsed = 0
            self.leader = m.src
            self._handle_append(m)
        elif t == MsgType.HEARTBEAT:
            self._election_elapsed = 0
            self.leader = m.src
            self._commit_to(min(m.commit, self.last_index))
            self._send(Message(MsgType.HEARTBEAT_RESP, self.id, m.src, self.term, context=m.context))
        elif t == MsgType.SNAPSHOT:
            self._election_elapsed = 0
            self.leader = m.src
            self._handle_snapshot(m)
        elif t == MsgType.TIMEOUT_NOW:
            self.campaign(force=True)
        elif t == MsgType.READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))
        elif t == MsgType.READ_INDEX and self.leader != NONE:
            pass  # a follower does not relay reads for others

    def _handle_append(self, m: Message) -> None:
        if m.index < self.commit:
            self._send(Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=self.commit))
            return
        if self.log_term(m.index) == m.log_term:
            last_new = m.index + len(m.entries)
            for k, e in enumerate(m.entries):
                if self.log_term(e.index) != e.term:
                    self._truncate_and_append(m.entries[k:])
                    break
            self._commit_to(min(m.commit, last_new))
            self._send(Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=last_new))
            return
        # Reject with a hint: the largest index <= m.index whose term is <= m.log_term. The leader can
        # skip every index above it whose term is larger than the hint's term.
        hint = min(m.index, self.last_index)
        while hint > self._off_index and (self.log_term(hint) or 0) > m.log_term:
            hint -= 1
        self._send(Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=m.index, reject=True,
                           reject_hint=hint, log_term=self.log_term(hint) or 0))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None
        meta = snap.meta
        if meta.index <= self.commit:
            self._send(Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=self.commit))
            return
        if self.log_term(meta.index) == meta.term:
            self._commit_to(meta.index)  # we have it all: just move the commit
            self._send(Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=self.commit))
            return
        self._log = []
        self._snap_index, self._snap_term, self._snap_meta = meta.index, meta.term, meta
        self._off_index, self._off_term = meta.index, meta.term
        self._stable = meta.index
        self.commit = meta.index
        self._conf_history = [(meta.index, meta.voters)]
        self.voters = meta.voters
        self._pending_install = snap
        self._send(Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=meta.index))

    def _commit_to(self, index: int) -> None:
        if index > self.commit:
            old = self.commit
            self.commit = index
            self._apply_conf_changes(old, index)

    def _apply_conf_changes(self, lo: int, hi: int) -> None:
        """Membership takes effect when its entry commits (entries lo < index <= hi)."""
        for e in self.log_entries(lo + 1, hi + 1):
            if e.type != EntryType.CONF_CHANGE:
                continue
            cc = ConfChange.decode(e.data)
            if cc.type == ConfChangeType.ADD_VOTER:
                voters = self.voters | {cc.node_id}
            else:
                voters = self.voters - {cc.node_id}
            self.voters = voters
            self._conf_history.append((e.index, voters))
            if self.role == Role.LEADER:
                if cc.type == ConfChangeType.ADD_VOTER and cc.node_id != self.id \
                        and cc.node_id not in self._progress:
                    self._progress[cc.node_id] = Progress(match=0, next=self.last_index + 1, recent_active=True)
                elif cc.type == ConfChangeType.REMOVE_VOTER:
                    self._progress.pop(cc.node_id, None)
                    # A smaller group may already have acknowledged the reads waiting for the removed member.
                    self._recheck_reads()

    # --- leader --------------------------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MsgType.READ_INDEX:
            self._handle_read(m.src, m.context)
            return
        pr = self._progress.get(m.src)
        if pr is None:
            return
        if t in _FOLLOWER_WORD:
            pr.slack = min(m.slack, self.cfg.max_slack_ticks)
        if t == MsgType.APPEND_RESP:
            pr.recent_active = True
            self._handle_append_resp(m, pr)
        elif t == MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_wait += 1
                if pr.snapshot_wait >= self.cfg.snapshot_retry_heartbeats:
                    pr.pending_snapshot = 0
                    pr.become_probe()
            # A probe still unanswered is resent without its entries: the follower may just be slow to store
            # them (a restarted manager far behind), and resending a full append at every heartbeat answer
            # queued ten copies a second for it, enough to pass the transport's message limit so that
            # nothing reached it at all. The empty probe finds the match just as well; the entries follow.
            reprobe = pr.state == ProgressState.PROBE and pr.probe_sent
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and len(pr.inflight) >= self.cfg.max_inflight:
                pr.inflight.popleft()  # appends may have been lost: let one more through; a reject resets us
            if pr.match < self.last_index:
                self._send_append(m.src, empty=reprobe)
            if m.context:
                self._ack_read(m.src, m.context)

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        if m.reject:
            if pr.state == ProgressState.REPLICATE:
                if m.index <= pr.match:
                    return  # stale
                pr.become_probe()
            elif pr.state == ProgressState.PROBE:
                if m.index != pr.next - 1:
                    return  # stale: not the probe we are waiting for
                nxt = m.reject_hint
                if m.log_term > 0:
                    while nxt > pr.match and nxt >= self._off_index:
                        lt = self.log_term(nxt)
                        if lt is None or lt <= m.log_term:
                            break
                        nxt -= 1
                pr.next = max(pr.match + 1, min(nxt + 1, m.index))
                pr.probe_sent = False
            else:
                return
            self._send_append(m.src)
            return
        updated = m.index > pr.match
        if updated:
            pr.match = m.index
            pr.stalled_ticks = 0
        if pr.next < m.index + 1:
            pr.next = m.index + 1
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT:
            if pr.match >= pr.pending_snapshot:
                pr.become_replicate()
        else:
            while pr.inflight and pr.inflight[0] <= m.index:
                pr.inflight.popleft()
        if updated and self._maybe_commit():
            self._commit_moved()
        if self.role != Role.LEADER or m.src not in self._progress:
            return
        while self._send_append(m.src, send_if_empty=False):
            pass
        if self._transferee == m.src and pr.match == self.last_index:
            self._send(Message(MsgType.TIMEOUT_NOW, self.id, m.src, self.term))

    def _snapshot_to_send(self) -> Snapshot | None:
        """Our latest snapshot with its data: the one received and not yet installed, else storage's when it is
        the one the core knows (storage may still hold the previous one while the shell writes a new one)."""
        if self._pending_install is not None and self._pending_install.meta == self._snap_meta:
            return self._pending_install
        snap = self._storage.load_snapshot()
        return snap if snap is not None and snap.meta == self._snap_meta else None

    def _send_append(self, to: int, *, send_if_empty: bool = True, empty: bool = False) -> bool:
        """Send `to` what follows its next index (a snapshot when that was compacted); `empty`: a probe with
        no entries (only prev index and term: where do our logs match?)."""
        pr = self._progress[to]
        if pr.paused(self.cfg.max_inflight):
            return False
        prev = pr.next - 1
        prev_term = self.log_term(prev)
        if prev_term is None:
            # The follower needs entries we compacted: send the snapshot, read back from storage for this message
            # only (the core does not keep its data).
            snap = self._snapshot_to_send()
            if snap is None:
                return False  # the shell is still persisting our latest snapshot: the next heartbeat retries
            pr.state = ProgressState.SNAPSHOT
            pr.pending_snapshot = self._snap_index
            pr.snapshot_wait = 0
            pr.inflight.clear()
            self._send(Message(MsgType.SNAPSHOT, self.id, to, self.term, snapshot=snap))
            return True
        ents: list[Entry] = []
        size = 0
        hi = prev if empty else min(self.last_index, prev + self.cfg.max_entries_per_msg)
        for e in self.log_entries(pr.next, hi + 1):
            size += e.size()
            if ents and size > self.cfg.max_bytes_per_msg:
                break
            ents.append(e)
        if not ents and not send_if_empty:
            return False
        self._send(Message(MsgType.APPEND, self.id, to, self.term, index=prev, log_term=prev_term,
                           entries=tuple(ents), commit=self.commit))
        pr.sent_commit = self.commit
        if pr.state == ProgressState.REPLICATE:
            if ents:
                pr.next = ents[-1].index + 1
                pr.inflight.append(ents[-1].index)
        else:
            pr.probe_sent = True
        return True

    def _commit_moved(self) -> None:
        """The leader's commit index moved: tell the followers (`commit_broadcast`), or only send what entries
        are waiting, the commit index riding on them or on the next heartbeat."""
        self._broadcast_append(send_if_empty=self.cfg.commit_broadcast)

    @property
    def commit_unsent(self) -> bool:
        """Leading: some follower was not sent the current commit index yet (in an append or a heartbeat)."""
        return self.role == Role.LEADER and any(pr.sent_commit < self.commit for pr in self._progress.values())

    def broadcast_commit(self) -> bool:
        """Leading: send each follower not yet told of the current commit index an append carrying it (with
        the entries that wait for it, else empty): what `commit_broadcast` does as the commit moves, for a shell
        that does it a moment later, when no append of a next write has carried the index meanwhile. Whether
        anything was sent (a follower whose pipeline is full, or that is being probed, waits for its answers)."""
        if self.role != Role.LEADER:
            return False
        sent = False
        for v in sorted(self._progress):
            if self._progress[v].sent_commit < self.commit and self._send_append(v):
                sent = True
                while self._send_append(v, send_if_empty=False):
                    pass
        return sent

    def _broadcast_append(self, *, send_if_empty: bool = True) -> None:
        for v in sorted(self._progress):
            if self._send_append(v, send_if_empty=send_if_empty):
                while self._send_append(v, send_if_empty=False):
                    pass  # fill the pipeline

    def _broadcast_heartbeat(self, ctx: bytes) -> None:
        for v in sorted(self._progress):
            pr = self._progress[v]
            commit = min(self.commit, pr.match)
            self._send(Message(MsgType.HEARTBEAT, self.id, v, self.term, commit=commit, context=ctx))
            pr.sent_commit = max(pr.sent_commit, commit)

    def _maybe_commit(self) -> bool:
        """Commit the highest index stored on a majority, if it is of the current term (figure 8)."""
        if self.role != Role.LEADER or not self.voters:
            return False
        matches = sorted((min(self._stable, self.last_index) if v == self.id
                          else (self._progress[v].match if v in self._progress else 0))
                         for v in self.voters)
        idx = matches[len(matches) - self.quorum]
        if idx <= self.commit or self.log_term(idx) != self.term:
            return False
        self._commit_to(idx)
        if self.id not in self.voters:
            self._become_follower(self.term, NONE)  # our own removal committed
            return True
        if self._reads_before_commit and self.log_term(self.commit) == self.term:
            pending, self._reads_before_commit = self._reads_before_commit, []
            for origin, ctx in pending:
                self._handle_read(origin, ctx)
        return True

    # --- read index ----------------------------------------------------------------------------------

    def _handle_read(self, origin: int, ctx: bytes) -> None:
        if self.log_term(self.commit) != self.term:
            self._reads_before_commit.append((origin, ctx))  # our commit index is not known to be current
            return
        if self.quorum <= 1:
            self._read_done(origin, self.commit, ctx)
            return
        self._read_queue.append(_ReadRequest(self.commit, ctx, origin, {self.id}))
        self._broadcast_heartbeat(ctx)

    def _ack_read(self, src: int, ctx: bytes) -> None:
        for k, req in enumerate(self._read_queue):
            if req.context == ctx:
                req.acks.add(src)
                if sum(1 for a in req.acks if a in self.voters) >= self.quorum:
                    done, self._read_queue = self._read_queue[:k + 1], self._read_queue[k + 1:]
                    for r in done:
                        self._read_done(r.origin, r.index, r.context)
                return

    def _recheck_reads(self) -> None:
        done = 0
        for k, req in enumerate(self._read_queue):
            if sum(1 for a in req.acks if a in self.voters) >= self.quorum:
                done = k + 1
        if done:
            finished, self._read_queue = self._read_queue[:done], self._read_queue[done:]
            for r in finished:
                self._read_done(r.origin, r.index, r.context)

    def _read_done(self, origin: int, index: int, ctx: bytes) -> None:
        if origin == self.id:
            self._read_states.append(ReadState(index, ctx))
        else:
            self._send(Message(MsgType.READ_INDEX_RESP, self.id, origin, self.term, index=index, context=ctx))
