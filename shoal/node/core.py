"""One Shoal node: an inactive engine until `swarm init` (a manager with its own agent) or `swarm join`
(a worker: only an agent, talking to the managers over gRPC with mutual TLS).

State on disk under the data dir (node.json and certificates/: shoal.node.identity):
    raft/            the store's durable log and snapshots (managers)
    executor/        the executor's per-task state (process executor) or secrets files (docker)
A restart with `node.json` present resumes the swarm: the store is replayed from its log and the agent
adopts the tasks' running containers or processes instead of starting new ones.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal import ca as CA
from shoal.agent.agent import Agent
from shoal.agent.exec.protocol import Executor
from shoal.agent.usage import HostMeter
from shoal.api import messages as M
from shoal.api.node import InitOptions, JoinOptions
from shoal.clock import Clock
from shoal.engineapi.forward import Forwarder, LocalAPI
from shoal.errors import ShoalError, Unavailable
from shoal.manager.dispatcher import DEFAULT_MAX_HEARTBEATS, DEFAULT_MAX_REGISTRATIONS
from shoal.manager.keys import DataCipher
from shoal.manager.manager import Manager
from shoal.manager.membership import Membership
from shoal.manager.raft import DEFAULT_TICK
from shoal.manager.raft.node import RaftNode
from shoal.model.objects import (
    Cluster,
)
from shoal.net.agent import NetworkAgent
from shoal.net.setup import remove_network_state
from shoal.node import swarm
from shoal.node.identity import NodeIdentity
from shoal.node.network import start_network_agent
from shoal.node.renewal import CertRenewal
from shoal.node.replica import AgentDispatcher, ManagerReplica
from shoal.rpc.client import NodeCredentials, RemoteDispatcher
from shoal.rpc.logs import serve_logs_loop
from shoal.rpc.server import ManagerRPC
from shoal.store.memory import MemoryStore
from shoal.tasks import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    executor: str = "process"  # docker | process
    engine_host: str | None = None
    hostname: str = ""
    scheduler_strategy: str = "spread"
    raft_tick: float = DEFAULT_TICK  # seconds per Raft tick (election timeout 10-15 ticks, heartbeat every tick)
    max_heartbeats: float = DEFAULT_MAX_HEARTBEATS  # leading: heartbeats/s from all nodes, before the period grows
    max_registrations: float = DEFAULT_MAX_REGISTRATIONS  # leading: registrations/s taken, more are deferred
    api_socket: Path | None = None  # this node's Engine API socket: the leader runs forwarded requests on it
    dns_upstreams: tuple[str, ...] | None = None  # None: the nameservers of /etc/resolv.conf
    mesh_keepalive: tuple[int, int, int] | None = None  # routing mesh TCP keepalive (idle, interval, count) s


class ShoalNode:
    def __init__(self, cfg: NodeConfig, clock: Clock, rng: random.Random) -> None:
        self.cfg = cfg
        self.clock = clock
        self.rng = rng
        self.hostname = cfg.hostname or socket.gethostname()
        self.executor: Executor | None = None
        self.store: MemoryStore | None = None
        self.manager: Manager | None = None
        self.agent: Agent | None = None
        self.rpc: ManagerRPC | None = None
        self.raft: RaftNode | None = None
        self.replica: ManagerReplica | None = None
        # The Engine API app in process, once it serves (set by the daemon's entry point): the leader runs the
        # writes followers forward on it instead of a second request on its own socket.
        self.local_api: LocalAPI | None = None
        self.agent_dispatcher: AgentDispatcher | None = None
        self._role_task: asyncio.Task[None] | None = None
        self._managers_task: asyncio.Task[None] | None = None
        self.locked = False  # a manager restarted under autolock, waiting for `docker swarm unlock`
        self.leaving = False  # removing its swarm state (tasks, networks, then its identity): "pending"
        self._bg: set[asyncio.Task[None]] = set()
        self.remote: RemoteDispatcher | None = None
        self.network: NetworkAgent | None = None  # when this host can do networking
        self._agent_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._logs_task: asyncio.Task[None] | None = None  # a worker serving log subscriptions
        self._removed_task: asyncio.Task[None] | None = None
        self.ident = NodeIdentity(cfg.data_dir)
        self._lock = asyncio.Lock()
        # Called each time this node opens as a manager, once `raft` and `manager` are set (the daemon's metrics
        # hook the member's and the dispatcher's timings there).
        self.on_manager: Callable[[], None] | None = None

    @property
    def identity(self) -> dict[str, Any]:
        """What node.json holds (empty while inactive)."""
        return self.ident.fields

    @identity.setter
    def identity(self, fields: dict[str, Any]) -> None:
        self.ident.fields = fields

    @property
    def state(self) -> str:
        if self.locked:
            return "locked"
        if self.leaving:
            return "pending"  # not inactive until the node's state on disk is gone (a leave can take seconds)
        return "active" if self.manager is not None or self.remote is not None else "inactive"

    @property
    def role(self) -> str:
        return self.identity.get("role", "") if self.state == "active" else ""

    @property
    def node_id(self) -> str:
        return str(self.identity.get("node_id", ""))

    @property
    def addr(self) -> str:
        return str(self.identity.get("addr", ""))

    def remote_managers(self) -> list[dict[str, str]]:
        """A worker's view of its managers (docker info's RemoteManagers): the one its session is with."""
        addr = self.identity.get("manager_addr", "")
        if not addr:
            return []
        mid = (self.remote.manager_id if self.remote is not None else "") or self.identity.get("manager_id", "")
        return [{"NodeID": mid, "Addr": addr}]

    # --- lifecycle --------------------------------------------------------------------------------

    def _make_executor(self) -> Executor:
        root = self.cfg.data_dir / "executor"
        if self.cfg.executor == "docker":
            from shoal.agent.exec.docker import DockerExecutor

            return DockerExecutor(engine_host=self.cfg.engine_host or "unix:///var/run/docker.sock", root=root,
                                  hostname=self.cfg.hostname or None, node_id=self.node_id, network=self.network)
        from shoal.agent.exec.process import ProcessExecutor

        return ProcessExecutor(root=root, hostname=self.hostname, network=self.network)

    async def start(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if self.ident.load():
            if self.identity.get("role") == "manager" and self.ident.locked_on_disk():
                self.locked = True
                log.warning("the swarm is locked (autolock): run `docker swarm unlock` to start this manager")
                return
            await self._activate()

    async def stop(self) -> None:
        await self._deactivate()

    async def _activate(self) -> None:
        if self.identity.get("role") == "worker":
            await self._activate_worker()
            return
        await self._open_manager()
        await self._serve_manager()

    def _raft_id(self) -> int:
        """This manager's Raft member id (random, non-zero), kept in node.json."""
        rid = int(self.identity.get("raft_id", 0))
        if not rid:
            rid = self.rng.getrandbits(63) or 1
            self.identity["raft_id"] = rid
            self.ident.save()
        return rid

    def _cluster_id(self) -> str:
        cid = str(self.identity.get("cluster_id", ""))
        if not cid and self.store is not None:
            c = self.store.view().cluster()
            cid = c.id if c is not None else ""
        return cid

    async def _open_manager(self) -> None:
        """The Raft member, its replicated store and the manager on it; the store is replayed from the local log
        (committed entries only) before this returns, and a sole voter is leading by then."""
        port = self.identity.get("manager_addr", ":2377").rsplit(":", 1)[1]
        keys = self.ident.manager_keys()
        creds = self.ident.read_creds() if self.ident.has_credentials() else None
        replica = ManagerReplica(
            data_dir=self.cfg.data_dir, node_id=self.node_id, raft_id=self._raft_id(), cluster_id=self._cluster_id,
            listen_addr=self.identity.get("listen_addr") or f"0.0.0.0:{port}", advertise_host=self.addr,
            manager_addr=self.identity.get("manager_addr") or f"{self.addr}:{port}", clock=self.clock,
            rng=random.Random(self.rng.getrandbits(64)), scheduler_strategy=self.cfg.scheduler_strategy,
            raft_tick=self.cfg.raft_tick, max_heartbeats=self.cfg.max_heartbeats,
            max_registrations=self.cfg.max_registrations, api_socket=self.cfg.api_socket,
            on_credentials=self.ident.write_creds, cipher=DataCipher(keys.dek), on_cluster=self._sync_autolock,
            local_api=lambda: self.local_api)
        self.replica = replica
        try:
            await replica.open(creds)
        except BaseException:
            await self._deactivate()
            raise
        self.raft, self.store, self.manager = replica.raft, replica.store, replica.manager
        if self.on_manager is not None:
            self.on_manager()
        if not self.identity.get("cluster_id") and self._cluster_id():
            self.identity["cluster_id"] = self._cluster_id()
            self.ident.save()

    async def _serve_manager(self) -> None:
        """The node RPC listeners and this node's own agent (the store must hold the cluster, or the node must
        have its certificate on disk)."""
        assert self.replica is not None
        creds = self.ident.read_creds() if self.ident.has_credentials() else None
        try:
            await self.replica.serve(creds)
        except Exception:
            await self._deactivate()
            raise
        self.rpc = self.replica.rpc
        await self._start_network()
        self.executor = self._make_executor()
        self.agent_dispatcher = self.replica.agent_dispatcher()
        self.agent = Agent(self.node_id, self.executor, self.agent_dispatcher, self.clock,
                           random.Random(self.rng.getrandbits(64)), addr=self.addr, host_meter=HostMeter(self.clock))
        self._agent_task = asyncio.create_task(self.agent.run(), name="agent")
        self._role_task = asyncio.create_task(self._manager_role_loop(), name="role-watch")

    async def _manager_role_loop(self) -> None:
        """A manager demoted by the others: once the leader says this node is a worker (it left the Raft group
        first), take a worker certificate from the leader and carry on as a worker, tasks and all."""
        while True:
            d = self.agent_dispatcher
            if d is None:
                return
            remote = await d.remote_ready()  # the session with the leader, once this manager is not the leader
            await remote.role_changed.wait()
            remote.role_changed.clear()
            if remote.role != "worker":
                continue
            while True:
                try:
                    creds = await remote.renew(CA.new_key_pem())
                    if CA.identity_of(creds.cert_pem).role == "worker":
                        break
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.info("demoted, but no worker certificate yet: %s", e)
                await self.clock.sleep(1.0)  # the leader issues it once this node is out of Raft: ask again
            asyncio.get_running_loop().create_task(self._convert("worker", creds, list(remote.manager_addrs)))
            return

    # --- keys at rest and autolock (shoal/node/identity.py) ------------------------------------------

    def _sync_autolock(self, cluster: Cluster) -> None:
        """Each manager follows the swarm's autolock setting and unlock key as the cluster object changes."""
        want = cluster.unlock_key if cluster.spec.autolock_managers else ""
        if want == self.ident.unlock_key or self.ident.keys is None:
            return
        self.ident.unlock_key = want  # once per change, however soon the next cluster update comes
        self._spawn(self.ident.protect(want))

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def unlock(self, unlock_key: str) -> None:
        """`docker swarm unlock`: open this locked manager's keys with the unlock key and start it."""
        async with self._lock:
            if not self.locked:
                if self.state == "inactive":
                    # dockerd's errNoManager for a node without a swarm node (20.10 and current alike).
                    raise Unavailable(M.NOT_A_SWARM_MANAGER)
                e = ShoalError(M.NOT_LOCKED)
                e.status = 409
                raise e
            await self.ident.unlock(unlock_key)
            self.locked = False
            try:
                await self._activate()
            except Exception:
                self.locked = True
                self.ident.keys = None
                raise
            log.info("swarm unlocked")

    async def _activate_worker(self) -> None:
        creds = self.ident.read_creds()
        self.remote = RemoteDispatcher(list(self.identity.get("manager_addrs", [])) or
                                       [self.identity["manager_addr"]], creds)
        await self._start_network()
        self.executor = self._make_executor()
        self.agent = Agent(self.node_id, self.executor, self.remote, self.clock,
                           random.Random(self.rng.getrandbits(64)), addr=self.addr, host_meter=HostMeter(self.clock))
        self._agent_task = asyncio.create_task(self.agent.run(), name="agent")
        renewal = CertRenewal(self.remote, self.ident, self.clock, self.rng, self._promoted)
        self._renew_task = asyncio.create_task(renewal.run(), name="cert-renewal")
        self._removed_task = asyncio.create_task(self._leave_when_removed(self.remote), name="leave-when-removed")
        self._logs_task = asyncio.create_task(serve_logs_loop(self.remote, self.agent, self.clock), name="logs")
        self._managers_task = asyncio.create_task(self._keep_manager_list(self.remote), name="manager-list")

    async def _keep_manager_list(self, remote: RemoteDispatcher) -> None:
        """Remember the managers the leader lists, so a restarted worker finds one even if the one it joined
        through is gone."""
        while True:
            await remote.managers_changed.wait()
            remote.managers_changed.clear()
            if remote.manager_addrs and remote.manager_addrs != self.identity.get("manager_addrs"):
                self.identity["manager_addrs"] = list(remote.manager_addrs)
                self.identity["manager_addr"] = remote.manager_addrs[0]
                self.ident.save()

    async def _leave_when_removed(self, remote: RemoteDispatcher) -> None:
        """`docker node rm` on a manager: this node's calls are refused as removed. Stop its tasks and go
        inactive, as a swarm node does, instead of retrying forever."""
        await remote.removed.wait()
        log.warning("node %s was removed from the swarm by a manager: stopping its tasks and leaving", self.node_id)
        async with self._lock:
            if self.remote is remote:
                self._removed_task = None  # _deactivate must not cancel this task: it is doing the leaving
                await self._remove_local_state()

    def _promoted(self, role: str, creds: NodeCredentials, managers: list[str]) -> None:
        """A renewed certificate carries another role: the node converts (in a task of its own: the conversion
        stops the renewal loop that found it)."""
        asyncio.get_running_loop().create_task(self._convert(role, creds, managers))

    async def _deactivate(self) -> None:
        logs_task, self._logs_task = self._logs_task, None
        if logs_task is not None:
            await cancel_and_wait(logs_task)
        if self._removed_task is not None:
            self._removed_task.cancel()
            self._removed_task = None
        if self._renew_task is not None:
            await cancel_and_wait(self._renew_task)
            self._renew_task = None
        if self._agent_task is not None:
            await cancel_and_wait(self._agent_task)
            self._agent_task = None
        if self._managers_task is not None:
            await cancel_and_wait(self._managers_task)
            self._managers_task = None
        if self._role_task is not None:
            if self._role_task is not asyncio.current_task():
                await cancel_and_wait(self._role_task)
            self._role_task = None
        if self.agent is not None:
            await self.agent.close()
            self.agent = None
        if self.agent_dispatcher is not None:
            await self.agent_dispatcher.close()
            self.agent_dispatcher = None
        if self.remote is not None:
            await self.remote.close()
            self.remote = None
        if self.replica is not None:
            await self.replica.close()
            self.replica = None
        self.rpc = None
        self.raft = None
        self.manager = None
        self.store = None
        if self.executor is not None:
            await self.executor.close()
            self.executor = None
        await self._stop_network()

    # --- swarm operations (shoal/node/swarm.py) ---------------------------------------------------

    async def init_swarm(self, opts: InitOptions) -> str:
        return await swarm.init_swarm(self, opts)

    async def join_swarm(self, opts: JoinOptions) -> str:
        return await swarm.join_swarm(self, opts)

    async def leave(self, force: bool) -> None:
        await swarm.leave(self, force)

    async def _convert(self, role: str, creds: NodeCredentials, managers: list[str]) -> None:
        await swarm.convert(self, role, creds, managers)

    async def _remove_local_state(self) -> None:
        await swarm.remove_local_state(self)

    @property
    def forwarder(self) -> Forwarder | None:
        return self.replica.forwarder if self.replica is not None else None

    @property
    def membership(self) -> Membership | None:
        return self.replica.membership if self.replica is not None else None

    @property
    def is_leader(self) -> bool:
        return self.raft is not None and self.raft.is_leader

    async def read_barrier(self) -> None:
        """Linearizable read point: once this returns the local store holds every write committed before."""
        if self.raft is not None:
            await self.raft.read_barrier()

    async def wait_for_leader(self) -> None:
        """Give an election in progress time to finish (two election timeouts) before a request that needs the
        leader fails with dockerd's "does not have a leader"."""
        replica = self.replica
        if replica is None or replica.raft is None:
            return
        raft = replica.raft
        deadline = self.clock.monotonic() + 2 * raft.election_timeout + 1.0
        while not raft.is_leader and not replica.leader_addr() and self.clock.monotonic() < deadline:
            await self.clock.sleep(0.05)

    # --- networking (shoal/net/agent.py) ------------------------------------------------------

    async def _start_network(self) -> None:
        """The node's network agent, fed from the local store on a manager and over the session on a worker."""
        self.network = await start_network_agent(self)

    async def _stop_network(self) -> None:
        network, self.network = self.network, None
        if network is not None:
            await network.close()

    async def _remove_network_state(self) -> None:
        await remove_network_state(self.cfg.data_dir / "net", self.node_id,
                                   self.cfg.engine_host if self.cfg.executor == "docker" else None)

    def require_manager(self) -> Manager:
        if self.locked:
            raise Unavailable(M.SWARM_LOCKED)
        if self.manager is None:
            if self.role == "worker":
                raise Unavailable(M.SWARM_NOT_MANAGER)
            raise Unavailable(M.NOT_A_SWARM_MANAGER)
        return self.manager


__all__ = ["InitOptions", "JoinOptions", "NodeConfig", "ShoalError", "ShoalNode"]
