"""One manager of a swarm: its Raft member, the replicated store on it, the Manager, the node RPC listeners, and the
two ways a manager that is not the leader still serves everything (it forwards to the leader).

    replica = ManagerReplica(...)
    await replica.open()          # Raft storage + store replayed from the local log; a sole voter leads at once
    await replica.serve(creds)    # node RPC listeners (CA, dispatcher, Raft, ...) with this manager's certificate
    ...
    await replica.close()

- Writes: the leader's store proposes to Raft; an Engine API request that needs the leader is forwarded to it by a
  manager that is not (shoal.engineapi.forward, over the Raft service's `Forward` call, or `ForwardMux` for
  writes).
- The manager's own agent talks to whoever leads: in process when that is this manager, else over gRPC like any
  worker (`AgentDispatcher` decides at each new session, and sessions end when leadership moves).
- Leadership: Raft's notification starts and stops the Manager's leader-only loops (plus the node RPC's and the
  membership's role loop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from shoal.api.dispatch import Assignments, SessionTerms
from shoal.api.usage import NodeUsage
from shoal.clock import Clock
from shoal.engineapi.forward import Forwarder, LocalAPI
from shoal.errors import ShoalError
from shoal.manager.dispatcher import DEFAULT_MAX_HEARTBEATS, DEFAULT_MAX_REGISTRATIONS, Dispatcher, node_for_local
from shoal.manager.keys import DataCipher
from shoal.manager.logrepair import APPLY_FAILED_EXIT
from shoal.manager.manager import Manager
from shoal.manager.membership import LOST_QUORUM, AddressBook, Membership
from shoal.manager.migrate import migrate_to_raft
from shoal.manager.raft.node import RaftNode, exit_process
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.model.objects import Cluster, NodeDescription, TaskStatus
from shoal.rpc.client import NodeCredentials, RemoteDispatcher
from shoal.rpc.raft import Creds, GrpcTransport, RaftHooks, join_raft
from shoal.rpc.server import ManagerRPC, _peer_tls_info, _set_tls_info
from shoal.store.memory import Commit, MemoryStore, WatchOverflow
from shoal.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Election timeout 10 ticks plus up to 5 (1.0-1.5 s at the 100 ms tick): a follower notices a dead leader in at
# most 1.5 s, so failover stays under 2 s (etcd's default spread, 10 more ticks, would allow 2 s and more).
ELECTION_JITTER_TICKS = 5
# The most a leader whose loop stalls may add to its followers' election timeout (shoal.manager.raft.node: twice
# its worst stall of the last minute): Swarm's own election timeout. An idle leader adds nothing, so failover
# stays under 2 s; a loaded one is not deposed for a stall (a full collection, a starved core).
MAX_SLACK = 10.0
# A new commit index reaches the followers in an append of its own this long after it moved, unless the next write's
# append carried it first (under load, nearly always): a write's answer leaves before that append, and a write
# costs the leader two appends and two answers fewer. Followers' stores, which answer some reads, lag by at most this.
COMMIT_BROADCAST_DELAY = 0.002


class AgentDispatcher:
    """The `DispatcherAPI` a manager's own agent uses: the in-process dispatcher while this manager leads, a
    `RemoteDispatcher` to the leader otherwise. The choice is made at `register` (each new session)."""

    def __init__(self, local: Dispatcher, make_remote: Callable[[], RemoteDispatcher],
                 is_leader: Callable[[], bool]) -> None:
        self.local = local
        self.make_remote = make_remote
        self.is_leader = is_leader
        self.remote: RemoteDispatcher | None = None
        self._target: Any = local
        self._remote_made = asyncio.Event()

    async def remote_ready(self) -> RemoteDispatcher:
        """The remote dispatcher, once one exists (this manager's agent registered with another leader)."""
        while self.remote is None:
            self._remote_made.clear()
            await self._remote_made.wait()
        return self.remote

    async def register(self, node_id: str, description: NodeDescription, addr: str) -> SessionTerms:
        if self.is_leader():
            await self._drop_remote()
            self._target = self.local
        else:
            if self.remote is None:
                self.remote = self.make_remote()
                self._remote_made.set()
            self._target = self.remote
        terms: SessionTerms = await self._target.register(node_id, description, addr)
        return terms

    async def heartbeat(self, node_id: str, usage: NodeUsage | None = None) -> SessionTerms:
        terms: SessionTerms = await self._target.heartbeat(node_id, usage)
        return terms

    def assignments(self, node_id: str) -> AsyncIterator[Assignments]:
        it: AsyncIterator[Assignments] = self._target.assignments(node_id)
        return it

    async def update_task_status(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None:
        await self._target.update_task_status(node_id, updates)

    async def _drop_remote(self) -> None:
        if self.remote is not None:
            r, self.remote = self.remote, None
            await r.close()

    async def close(self) -> None:
        await self._drop_remote()


def exit_apply_failed() -> None:
    """End the process at once with APPLY_FAILED_EXIT: what is on disk is consistent (Raft's log is fsynced, as
    after kill -9), and this manager must not go on answering as if its store were current."""
    for h in logging.getLogger().handlers:
        h.flush()
    os._exit(APPLY_FAILED_EXIT)


class FailStop:
    """The state machine Raft applies to: the store, stopped loudly when an entry (or a snapshot) cannot be
    applied. Every replica holds the same committed entries, so a manager that skipped one would serve a state
    the others do not have, and one whose ready loop died would look alive with a store that never moves again:
    it logs the entry's index and calls `on_fatal` (by default the process exits non-zero, so a supervisor or an
    operator sees it; docs/operations.md says how to repair the log)."""

    def __init__(self, store: MemoryStore, on_fatal: Callable[[], None]) -> None:
        self.store = store
        self.on_fatal = on_fatal

    def apply_entry(self, index: int, data: bytes) -> None:
        try:
            self.store.apply_entry(index, data)
        except Exception as e:
            log.critical("cannot apply Raft log entry %d: %r; this manager stops (the log holds a change no "
                         "manager can replay: see `shoal raft check` in docs/operations.md)", index, e)
            self.on_fatal()
            raise

    def restore(self, data: bytes, index: int) -> None:
        try:
            self.store.restore(data, index)
        except Exception as e:
            log.critical("cannot restore the Raft snapshot at index %d: %r; this manager stops (see `shoal raft "
                         "check` in docs/operations.md)", index, e)
            self.on_fatal()
            raise

    def save(self) -> bytes:
        return self.store.save()

    def snapshot_source(self) -> Callable[[], bytes]:
        return self.store.snapshot_source()


class ManagerReplica:
    def __init__(self, *, data_dir: Path, node_id: str, raft_id: int, cluster_id: Callable[[], str],
                 listen_addr: str, advertise_host: str, manager_addr: str, clock: Clock, rng: random.Random,
                 scheduler_strategy: str, raft_tick: float, api_socket: Path | None,
                 max_heartbeats: float = DEFAULT_MAX_HEARTBEATS,
                 max_registrations: float = DEFAULT_MAX_REGISTRATIONS,
                 on_credentials: Callable[[NodeCredentials], None], cipher: DataCipher | None = None,
                 on_cluster: Callable[[Cluster], None] = lambda _c: None,
                 on_fatal: Callable[[], None] | None = None,
                 local_api: Callable[[], LocalAPI | None] = lambda: None) -> None:
        # What happens when this manager cannot apply a committed entry: the process exits (the default).
        self.on_fatal = on_fatal or exit_apply_failed
        self.cipher = cipher  # the Raft data at rest is sealed with this manager's key
        self.on_cluster = on_cluster  # every applied change of the cluster object (autolock follows it)
        self.data_dir = data_dir
        self.node_id = node_id
        self.raft_id = raft_id
        self._cluster_id = cluster_id
        self.listen_addr = listen_addr
        self.advertise_host = advertise_host
        self.manager_addr = manager_addr
        self.clock = clock
        self.rng = rng
        self.scheduler_strategy = scheduler_strategy
        self.raft_tick = raft_tick
        self.max_heartbeats = max_heartbeats
        self.max_registrations = max_registrations
        self.api_socket = api_socket
        self.local_api = local_api  # the Engine API app in process: the leader runs forwarded writes on it
        self.on_credentials = on_credentials
        self.storage: SqliteStorage | None = None
        self.raft: RaftNode | None = None
        self.store: MemoryStore | None = None
        self.manager: Manager | None = None
        self.membership: Membership | None = None
        self.transport: GrpcTransport | None = None
        self.book = AddressBook()
        self.rpc: ManagerRPC | None = None
        self._disk_creds: NodeCredentials | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.forwarder: Forwarder | None = None  # Engine API requests to and from the leader

    @property
    def raft_dir(self) -> Path:
        return self.data_dir / "raft"

    def credentials(self) -> Creds:
        if self.rpc is not None and self.rpc.credentials[0]:
            return self.rpc.credentials
        c = self._disk_creds
        return (c.key_pem, c.cert_pem, c.root_pem) if c is not None else ("", "", "")

    # --- lifecycle -------------------------------------------------------------------------------------

    async def open(self, creds: NodeCredentials | None) -> None:
        self._disk_creds = creds
        if migrate_to_raft(self.raft_dir, self.raft_id, self.clock):
            log.info("migrated the store's log in %s to the Raft storage format", self.raft_dir)
        self.storage = SqliteStorage(self.raft_dir, self.cipher)
        self.transport = GrpcTransport(self.raft_id, self.manager_addr, self.book, self.credentials, self.clock)
        raft = RaftNode(self.raft_id, self.storage, self.transport, self.clock,
                        rng=random.Random(self.rng.getrandbits(64)), tick_interval=self.raft_tick,
                        on_conf_change=lambda i, cc: self.membership.on_conf_change(i, cc)
                        if self.membership is not None else None,
                        persist_in_thread=os.environ.get("SHOAL_RAFT_PERSIST_THREAD", "0") == "1",
                        parallel_leader_write=True, commit_broadcast_delay=COMMIT_BROADCAST_DELAY,
                        election_jitter_ticks=ELECTION_JITTER_TICKS, snapshot_in_thread=True, snapshot_in_child=True,
                        max_slack=MAX_SLACK,
                        on_failure=exit_process)  # crash-only: its supervisor restarts it
        self.transport.node = raft
        loaded_commit = raft.core.commit
        store = MemoryStore(raft, self.clock)
        raft.attach(FailStop(store, self.on_fatal))
        self.raft, self.store = raft, store
        self.membership = Membership(store, raft, self.transport, self.book, self.node_id, self.clock)
        self.book._from_store = self.membership.addr_from_store
        membership = self.membership
        self.forwarder = Forwarder(node_id=self.node_id, leader_addr=membership.leader_addr, no_leader=LOST_QUORUM,
                                   secure=self.transport.secure, credentials=self.credentials,
                                   leading=lambda: raft.is_leader, not_leader=membership.not_leader,
                                   api_socket=self.api_socket, local_api=self.local_api)
        # The events' retained window lives with the Raft data, so leaving the swarm forgets it too.
        self.manager = Manager(store, self.clock, self.rng, scheduler_strategy=self.scheduler_strategy,
                               events_path=self.raft_dir / "events.jsonl", max_heartbeats=self.max_heartbeats,
                               max_registrations=self.max_registrations)
        self.manager.controlapi.membership = self.membership
        raft.add_leadership_listener(self.manager.set_leader)
        raft.add_leadership_listener(self._on_leadership)
        self.manager.add_leader_loop("raft-roles", self.membership.role_loop)
        self.manager.start(leader=False)
        await raft.start()
        await raft.wait_applied(loaded_commit)
        self._follow_raft_settings()
        self._spawn(self._watch_raft_settings())
        if raft.voters == frozenset({self.raft_id}):
            await raft.leader_event.wait()

    def _follow_raft_settings(self) -> None:
        assert self.store is not None and self.raft is not None
        cluster = self.store.view().cluster()
        if cluster is not None:
            self.raft.snapshot_interval = cluster.spec.raft.snapshot_interval or 10_000
            self.raft.catchup_entries = cluster.spec.raft.log_entries_for_slow_followers
            self.on_cluster(cluster)

    async def _watch_raft_settings(self) -> None:
        """`docker swarm update --snapshot-interval N` (and the spec's LogEntriesForSlowFollowers) takes effect on
        every manager as the change applies."""
        assert self.store is not None
        while True:
            sub = self.store.watch(kinds=("cluster",))
            try:
                async for item in sub:
                    if isinstance(item, Commit):
                        self._follow_raft_settings()
            except WatchOverflow:
                continue
            finally:
                sub.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _on_leadership(self, leader: bool) -> None:
        log.info("raft: %s (term %d)", "this manager is the leader" if leader else "this manager is a follower",
                 self.raft.core.term if self.raft is not None else 0)

    async def serve(self, creds: NodeCredentials | None) -> None:
        assert self.manager is not None and self.store is not None and self.raft is not None
        assert self.transport is not None and self.membership is not None
        raft, membership = self.raft, self.membership
        hooks = RaftHooks(transport=self.transport, cluster_id=self._cluster_id,
                          is_member_allowed=membership.is_member_allowed, join=membership.join,
                          forward=self.forwarder.serve if self.forwarder is not None else None,
                          on_peer_stream=self._record_peer_certificate)
        self.rpc = ManagerRPC(self.store, self.manager.dispatcher, self.clock, random.Random(self.rng.getrandbits(64)),
                              self.node_id, self.listen_addr, self.advertise_host,
                              logbroker=self.manager.logbroker, creds=creds,
                              on_credentials=self._new_credentials, is_leader=lambda: raft.is_leader,
                              membership=membership, raft_hooks=hooks)
        self.manager.add_leader_loop("node-rpc", self.rpc.leader_loop)
        await self.rpc.start()

    def _new_credentials(self, key: str, cert: str, roots: str) -> None:
        self._disk_creds = NodeCredentials(key, cert, roots)
        self.on_credentials(self._disk_creds)
        if self.transport is not None:
            self.transport.reset()  # streams open again with the new certificate (the leader records its root)

    def agent_dispatcher(self) -> AgentDispatcher:
        assert self.manager is not None and self.raft is not None
        raft = self.raft

        def make_remote() -> RemoteDispatcher:
            key, cert, roots = self.credentials()
            managers = [self.leader_addr()] + (self.rpc._s.managers() if self.rpc is not None else [])
            addrs = list(dict.fromkeys(m for m in managers if m and m != self.manager_addr))
            return RemoteDispatcher(addrs or [self.manager_addr], NodeCredentials(key, cert, roots))

        return AgentDispatcher(self.manager.dispatcher, make_remote, lambda: raft.is_leader)

    async def close(self) -> None:
        for t in list(self._tasks):
            await cancel_and_wait(t)
        if self.forwarder is not None:
            await self.forwarder.close()
            self.forwarder = None
        if self.rpc is not None:
            await self.rpc.stop()
            self.rpc = None
        if self.raft is not None:
            await self.raft.stop()
        if self.transport is not None:
            await self.transport.close()
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None
        if self.storage is not None:
            self.storage.close()
            self.storage = None
        self.raft = None
        self.store = None

    # --- joining an existing group ---------------------------------------------------------------------

    async def join_group(self, via_addr: str, timeout: float = 30.0) -> None:
        """Ask the leader (through `via_addr`) to add this manager, then wait until the store has caught up
        to the point where it holds this node."""
        assert self.transport is not None and self.store is not None
        resp, leader = await join_raft(self.transport.secure, via_addr, self.credentials(), self.raft_id,
                                       self.manager_addr)
        for m in resp.members:
            self.book.learn(m.raft_id, m.addr)
        deadline = self.clock.monotonic() + timeout
        while self.store.view().node(self.node_id) is None:
            if self.clock.monotonic() > deadline:
                log.warning("joined the Raft group through %s, but the store has not caught up yet", leader)
                return
            await self.clock.sleep(0.05)
        log.info("joined the managers' Raft group (leader at %s)", leader)

    # --- forwarding to the leader ----------------------------------------------------------------------

    def leader_addr(self) -> str:
        return self.membership.leader_addr() if self.membership is not None else ""

    # --- certificates of the other managers ------------------------------------------------------------

    def _record_peer_certificate(self, node_id: str, context: grpc.aio.ServicerContext) -> None:
        """The leader notes which root issued each manager's certificate from its Raft connections (a follower
        re-issues its own certificate and reconnects), so a root rotation can tell when every node moved."""
        if self.raft is None or not self.raft.is_leader or self.store is None:
            return
        cluster = self.store.view().cluster()
        node = self.store.view().node(node_id)
        if cluster is None or node is None:
            return
        info = _peer_tls_info(context, cluster)
        if info is None or node.description.tls_info == info:
            return
        store = self.store

        async def write() -> None:
            try:
                await store.update(lambda tx: _set_tls_info(tx, node_id, info))
            except ShoalError as e:
                log.debug("recording %s's certificate failed: %s", node_id, e)

        self._spawn(write())


def manager_node_for(node_id: str, hostname: str, addr: str, raft_id: int) -> Any:
    """The Node record of the first manager (`swarm init`)."""
    node = node_for_local(node_id, hostname, "manager", addr)
    assert node.manager_status is not None
    return replace(node, observed_role="manager", manager_status=replace(node.manager_status, raft_id=raft_id))


__all__ = ["AgentDispatcher", "ManagerReplica", "manager_node_for"]
