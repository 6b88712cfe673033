"""A manager's place in the Raft group: who the members are, joining, leaving by demotion, manager status.

- Members are managers whose node has `ManagerStatus.raft_id` set and whose raft id is a voter. Where they listen
  lives in the store (ManagerStatus.addr) and in the transport's `AddressBook` (learned from membership changes
  and received batches), so every manager can reach every other.
- `join` (leader only) adds a manager whose certificate already says manager: its raft id and address are
  written into its node first, then the ADD_VOTER change is proposed; the answer lists the members so the new
  manager can answer the leader before its store has caught up.
- The role loop (leader only, as swarmkit's role manager) moves each node's observed role toward its desired role:
  a promoted node becomes `observed_role=manager` at once (its next certificate is a manager's, then it joins);
  a demoted manager is removed from the Raft group first, when that keeps a quorum of reachable managers (the
  leader hands its leadership over before removing itself), and only then becomes `observed_role=worker`.
- `status_of(node)` is the ManagerStatus the API shows: Leader, and Reachable or Unreachable from the leader's
  view of its peers (a batch received from the member within two election timeouts, and its log keeping up).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from shoal.clock import Clock
from shoal.errors import InvalidArgument, NotLeader, ShoalError, Unavailable
from shoal.manager.raft.core import ConfChange, ConfChangePending, ConfChangeType
from shoal.manager.raft.node import NotLeaderError, RaftNode
from shoal.model.objects import MANAGER, WORKER, ManagerStatus, Node
from shoal.store.memory import Commit, MemoryStore, Subscription, Tx, WatchOverflow

log = logging.getLogger(__name__)

ROLE_RECONCILE_INTERVAL = 1.0  # seconds between retries of a demotion that cannot happen yet

LOST_QUORUM = ("The swarm does not have a leader. It's possible that too few managers are online. "
               "Make sure more than half of the managers are online.")


class AddressBook:
    """raft id -> listen address: learned entries win over the store's (they are newer)."""

    def __init__(self, from_store: Callable[[int], str] = lambda _rid: "") -> None:
        self._learned: dict[int, str] = {}
        self._from_store = from_store

    def learn(self, raft_id: int, addr: str) -> None:
        if raft_id and addr:
            self._learned[raft_id] = addr

    def addr(self, raft_id: int) -> str:
        return self._learned.get(raft_id) or self._from_store(raft_id)

    def known(self) -> dict[int, str]:
        return dict(self._learned)


def conf_change_context(node_id: str, addr: str) -> bytes:
    """What a membership change carries for the shell: whose member id it is and where it listens."""
    return json.dumps({"node_id": node_id, "addr": addr}).encode()


def parse_conf_change_context(data: bytes) -> tuple[str, str]:
    try:
        d = json.loads(data or b"{}")
        return str(d.get("node_id", "")), str(d.get("addr", ""))
    except ValueError:
        return "", ""


@dataclass(frozen=True, slots=True)
class Members:
    """The Raft group as a joining manager is told it: the leader's raft id and (raft id, node id, address)
    of each voter."""

    leader: int
    members: tuple[tuple[int, str, str], ...]


class PeerTransport(Protocol):
    """What membership needs of the Raft transport (shoal.rpc.raft.GrpcTransport)."""

    def forget_peer(self, raft_id: int) -> None: ...

    def reachable(self, raft_id: int, within: float) -> bool: ...


def _unspecified(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "[::]")


class Membership:
    def __init__(self, store: MemoryStore, raft: RaftNode, transport: PeerTransport, book: AddressBook,
                 node_id: str, clock: Clock) -> None:
        self.store = store
        self.raft = raft
        self.transport = transport
        self.book = book
        self.node_id = node_id
        self.clock = clock
        self._members_changed = asyncio.Event()

    # --- who is where ---------------------------------------------------------------------------------

    def raft_id_of(self, node: Node) -> int:
        return node.manager_status.raft_id if node.manager_status is not None else 0

    def node_of_raft_id(self, raft_id: int) -> Node | None:
        for n in self.store.view().nodes():
            if n.manager_status is not None and n.manager_status.raft_id == raft_id:
                return n
        return None

    def addr_from_store(self, raft_id: int) -> str:
        n = self.node_of_raft_id(raft_id)
        return n.manager_status.addr if n is not None and n.manager_status is not None else ""

    def on_conf_change(self, index: int, cc: ConfChange) -> None:
        node_id, addr = parse_conf_change_context(cc.context)
        if cc.type == ConfChangeType.ADD_VOTER:
            self.book.learn(cc.node_id, addr)
            log.info("raft: member %x (node %s, %s) added at index %d", cc.node_id, node_id or "?", addr or "?", index)
        else:
            log.info("raft: member %x removed at index %d", cc.node_id, index)
            if cc.node_id != self.raft.id:
                self.transport.forget_peer(cc.node_id)
        self._members_changed.set()

    def leader_addr(self) -> str:
        lead = self.raft.leader
        return self.book.addr(lead) if lead else ""

    def leader_node_id(self) -> str:
        lead = self.raft.leader
        n = self.node_of_raft_id(lead) if lead else None
        return n.id if n is not None else ""

    def not_leader(self) -> NotLeader:
        addr = self.leader_addr()
        if not addr:
            return NotLeader(LOST_QUORUM)
        return NotLeader("this manager is not the swarm leader", addr, self.leader_node_id())

    def is_member_allowed(self, node_id: str) -> bool:
        """A manager that may speak Raft to us: any manager of the cluster while our store is empty (we just
        joined), else one the store knows whose role is still manager."""
        v = self.store.view()
        if v.cluster() is None:
            return True
        n = v.node(node_id)
        return n is not None and n.role == MANAGER

    # --- the API's view ------------------------------------------------------------------------------

    def status_of(self, node: Node) -> ManagerStatus | None:
        """What `docker node ls` shows for a manager node, from this manager's (the leader's) point of view."""
        ms = node.manager_status
        if ms is None:
            return None
        rid = ms.raft_id
        if rid and rid == self.raft.id:
            return replace(ms, leader=self.raft.is_leader, reachability="reachable")
        if not rid or rid not in self.raft.voters:
            return None  # not (or not yet, or no longer) in the Raft group: no status, as swarmkit
        reachable = self._follows(rid)
        return replace(ms, leader=rid == self.raft.leader and reachable,
                       reachability="reachable" if reachable else "unreachable")

    def _follows(self, rid: int) -> bool:
        """Reachable: a batch from the member arrived within two election timeouts and, as the leader sees it,
        its log keeps up (level with ours, or grew within that window). A member that answers heartbeats but
        receives nothing (a restarted manager stuck at its old index) is unreachable."""
        window = 2 * self.raft.election_timeout
        return self.transport.reachable(rid, window) and self.raft.following(rid, window)

    def reachable_counts(self, exclude_raft_id: int = 0) -> tuple[int, int]:
        """(reachable, unreachable) voters, as the leader sees them."""
        r = u = 0
        for v in self.raft.voters:
            if v == exclude_raft_id:
                continue
            if v == self.raft.id or self._follows(v):
                r += 1
            else:
                u += 1
        return r, u

    def can_remove(self, raft_id: int) -> bool:
        """Would the group keep a quorum of reachable members without this one (swarmkit's CanRemoveMember)?"""
        voters = self.raft.voters
        if raft_id not in voters:
            return True
        remaining = len(voters) - 1
        reachable, _ = self.reachable_counts(exclude_raft_id=raft_id)
        return remaining > 0 and reachable >= remaining // 2 + 1

    # --- joining (on the leader) ----------------------------------------------------------------------

    async def join(self, node_id: str, raft_id: int, addr: str, peer: str) -> Members:
        if not self.raft.is_leader:
            raise self.not_leader()
        if raft_id <= 0 or raft_id >= 1 << 63:
            raise InvalidArgument("rpc error: code = InvalidArgument desc = invalid raft member id")
        host, sep, port = addr.rpartition(":")
        if not sep:
            raise InvalidArgument("rpc error: code = InvalidArgument desc = invalid listen address")
        if _unspecified(host.strip("[]")):
            addr = f"{peer}:{port}"  # as swarmkit: a manager listening on all addresses is reached where it came from
        node = self.store.view().node(node_id)
        if node is None or node.role != MANAGER:
            raise ShoalError(f"rpc error: code = PermissionDenied desc = node {node_id} is not a manager")
        other = self.node_of_raft_id(raft_id)
        if other is not None and other.id != node_id:
            raise InvalidArgument("rpc error: code = InvalidArgument desc = raft member id already in use")

        def record(tx: Tx) -> None:
            n = tx.node(node_id)
            if n is None:
                raise ShoalError(f"rpc error: code = PermissionDenied desc = node {node_id} was removed")
            ms = n.manager_status or ManagerStatus()
            tx.update(replace(n, manager_status=replace(ms, addr=addr, raft_id=raft_id, leader=False,
                                                        reachability="unknown")), check_version=False)

        await self.store.update(record)
        self.book.learn(raft_id, addr)
        if raft_id not in self.raft.voters:
            await self._change(ConfChange(ConfChangeType.ADD_VOTER, raft_id, conf_change_context(node_id, addr)))
        log.info("manager %s joined the Raft group as member %x (%s)", node_id, raft_id, addr)
        return self.members()

    def members(self) -> Members:
        out = []
        for rid in sorted(self.raft.voters):
            n = self.node_of_raft_id(rid)
            out.append((rid, n.id if n is not None else "", self.book.addr(rid)))
        return Members(self.raft.leader, tuple(out))

    async def _change(self, cc: ConfChange, timeout: float = 20.0) -> None:
        """Propose one membership change, waiting out another one still in progress."""
        deadline = self.clock.monotonic() + timeout
        while True:
            try:
                await self.raft.propose_conf_change(cc)
                return
            except NotLeaderError:
                raise self.not_leader() from None
            except Unavailable as e:
                if isinstance(e.__cause__, ConfChangePending) or "already in progress" in e.message:
                    if self.clock.monotonic() > deadline:
                        raise
                    await self.clock.sleep(0.1)
                    continue
                raise

    # --- the role loop (leader only) ------------------------------------------------------------------

    async def role_loop(self) -> None:
        while True:
            sub = self.store.watch(kinds=("node",))
            try:
                while True:
                    pending = await self._reconcile_roles()
                    if pending:
                        # A demotion waits for quorum or for a change in progress: look again soon.
                        await _wait_any(sub, self._members_changed, self.clock, ROLE_RECONCILE_INTERVAL)
                    else:
                        await _wait_any(sub, self._members_changed, self.clock, None)
            except WatchOverflow:
                continue
            finally:
                sub.close()

    async def _reconcile_roles(self) -> bool:
        """One pass; True if something could not be done yet."""
        pending = False
        voters = self.raft.voters
        for n in self.store.view().nodes():
            want = n.spec.role
            if n.role == want:
                continue
            if want == MANAGER:
                await self._set_observed(n.id, MANAGER)
                continue
            rid = self.raft_id_of(n)
            if rid and rid in voters:
                if rid == self.raft.id:
                    # Our own demotion: hand leadership over first; the next leader removes us.
                    if not self.can_remove(rid):
                        pending = True
                        continue
                    target = self._transfer_target()
                    if target:
                        log.info("demoted: transferring leadership to %x", target)
                        try:
                            self.raft.transfer_leader(target)
                        except ShoalError as e:
                            log.info("leadership transfer failed: %s", e)
                    pending = True
                    continue
                if not self.can_remove(rid):
                    log.info("cannot demote %s yet: removing it from Raft would lose the quorum", n.id)
                    pending = True
                    continue
                try:
                    await self._change(ConfChange(ConfChangeType.REMOVE_VOTER, rid), timeout=5.0)
                except ShoalError as e:
                    log.info("removing %s from Raft failed for now: %s", n.id, e)
                    pending = True
                    continue
            await self._set_observed(n.id, WORKER)
        return pending

    def _transfer_target(self) -> int:
        window = 2 * self.raft.election_timeout
        best = 0
        for v in sorted(self.raft.voters):
            if v != self.raft.id and self.transport.reachable(v, window):
                pr = self.raft.core.progress(v)
                if best == 0 or (pr is not None and pr.match > (self.raft.core.progress(best) or pr).match):
                    best = v
        return best

    async def _set_observed(self, node_id: str, role: str) -> None:
        def fn(tx: Tx) -> None:
            n = tx.node(node_id)
            if n is None or n.role == role or n.spec.role != role:
                return
            ms = n.manager_status
            if role == WORKER:
                ms = None
            elif ms is None:
                ms = ManagerStatus(reachability="unknown")
            tx.update(replace(n, observed_role=role, manager_status=ms), check_version=False)

        await self.store.update(fn)
        log.info("node %s is now a %s", node_id, role)


async def _wait_any(sub: object, ev: asyncio.Event, clock: Clock, timeout: float | None) -> None:
    """Until a commit arrives on the node watch, the membership changes, or `timeout` seconds pass."""
    assert isinstance(sub, Subscription)
    waits: list[asyncio.Future[object]] = [asyncio.ensure_future(_next_commit(sub)), asyncio.ensure_future(ev.wait())]
    if timeout is not None:
        waits.append(asyncio.ensure_future(clock.sleep(timeout)))
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for d in done:
            if d.exception() is not None:
                raise d.exception()  # type: ignore[misc]
    finally:
        for w in waits:
            w.cancel()
        ev.clear()


async def _next_commit(sub: object) -> None:
    assert isinstance(sub, Subscription)
    while True:
        item = await sub.get()
        if isinstance(item, Commit):
            return


__all__ = ["LOST_QUORUM", "Membership"]
