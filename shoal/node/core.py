"""One Shoal node: an inactive engine until `swarm init` (a manager with its own agent) or `swarm join`
(a worker: only an agent, talking to the managers over gRPC with mutual TLS).

State on disk under the data dir:
    node.json        the node's identity and swarm membership (absent while inactive)
    certificates/    a worker's key, node certificate and the cluster's root certificate; before `swarm init`,
                     an operator-placed `swarm-root-ca.crt` (and optionally `.key`) to use as the new root
    raft/            the store's durable log and snapshots (managers)
    executor/        the executor's per-task state (process executor) or secrets files (docker)
A restart with `node.json` present resumes the swarm: the store is replayed from its log and the agent
adopts the tasks' running containers or processes instead of starting new ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shoal import ca as CA
from shoal.agent.agent import Agent, _Deps
from shoal.agent.exec.protocol import Executor
from shoal.api import messages as M
from shoal.api.node import InitOptions, JoinOptions
from shoal.ca import create_root_ca, make_join_token
from shoal.clock import Clock
from shoal.engineapi.forward import Forwarder
from shoal.errors import InvalidArgument, ShoalError, Unavailable
from shoal.ids import new_id
from shoal.manager.keys import DEK_FILE, DataCipher, KeyStore, Unlocked, protect_tls_key, read_tls_key
from shoal.manager.manager import Manager
from shoal.manager.membership import Membership
from shoal.manager.raft import DEFAULT_TICK
from shoal.manager.raft.node import RaftNode
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.storage import bootstrap
from shoal.manager.recovery import force_new_cluster
from shoal.model.objects import (
    Annotations,
    Cluster,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkSpec,
    RootCA,
    SwarmSpec,
    Task,
)
from shoal.net.agent import NetworkAgent
from shoal.net.setup import remove_network_state
from shoal.node.network import start_network_agent
from shoal.node.replica import AgentDispatcher, ManagerReplica, manager_node_for
from shoal.rpc.client import NodeCredentials, RemoteDispatcher
from shoal.rpc.client import join as rpc_join
from shoal.rpc.logs import serve_logs_loop
from shoal.rpc.server import ManagerRPC
from shoal.store.memory import MemoryStore, Tx
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
    api_socket: Path | None = None  # this node's Engine API socket: the leader runs forwarded requests on it
    dns_upstreams: tuple[str, ...] | None = None  # None: the nameservers of /etc/resolv.conf
    mesh_keepalive: tuple[int, int, int] | None = None  # routing mesh TCP keepalive (idle, interval, count) s


def _addr_towards(remote: str) -> str:
    """The local address this host uses to reach `remote` (host:port)."""
    host = remote.rsplit(":", 1)[0].strip("[]") if ":" in remote else remote
    try:
        infos = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
        fam, _, _, _, sa = infos[0]
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect(sa)  # no packet is sent
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _local_addr(advertise: str, listen: str) -> str:
    host = (advertise or "").rsplit(":", 1)[0] if advertise else ""
    if host and not host[0].isalpha():
        return host
    lhost = listen.rsplit(":", 1)[0] if listen else ""
    if lhost and lhost not in ("0.0.0.0", "::", "") and not lhost[0].isalpha():
        return lhost
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _splittable(addr: str) -> bool:
    """What Go's net.SplitHostPort accepts of a listen address dockerd did not already complete with the
    default port (one with no colon): "host:port", or "[v6]:port"; not "a:b:c"."""
    if ":" not in addr:
        return True
    if addr.startswith("["):
        end = addr.find("]")
        return end > 0 and addr[end + 1:end + 2] == ":" and ":" not in addr[end + 2:] and "[" not in addr[1:]
    return addr.count(":") == 1 and "[" not in addr and "]" not in addr


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
        self.agent_dispatcher: AgentDispatcher | None = None
        self._role_task: asyncio.Task[None] | None = None
        self._managers_task: asyncio.Task[None] | None = None
        self._keys: Unlocked | None = None  # a manager's Raft data key (and the unlock key's KEK under autolock)
        self._unlock_key = ""  # the unlock key the keys on disk are protected with now ("" : none)
        self.locked = False  # a manager restarted under autolock, waiting for `docker swarm unlock`
        self._bg: set[asyncio.Task[None]] = set()
        self.remote: RemoteDispatcher | None = None
        self.network: NetworkAgent | None = None  # when this host can do networking
        self._agent_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._logs_task: asyncio.Task[None] | None = None  # a worker serving log subscriptions
        self._removed_task: asyncio.Task[None] | None = None
        self.identity: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    # --- paths ------------------------------------------------------------------------------------

    @property
    def _identity_file(self) -> Path:
        return self.cfg.data_dir / "node.json"

    @property
    def _certs_dir(self) -> Path:
        return self.cfg.data_dir / "certificates"

    @property
    def state(self) -> str:
        if self.locked:
            return "locked"
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
        if self._identity_file.exists():
            self.identity = json.loads(self._identity_file.read_text())
            if self.identity.get("role") == "manager" and KeyStore(self._certs_dir).locked():
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
            self._write_identity()
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
        keys = self._manager_keys()
        creds = self._read_creds() if (self._certs_dir / "swarm-node.key").exists() else None
        replica = ManagerReplica(
            data_dir=self.cfg.data_dir, node_id=self.node_id, raft_id=self._raft_id(), cluster_id=self._cluster_id,
            listen_addr=self.identity.get("listen_addr") or f"0.0.0.0:{port}", advertise_host=self.addr,
            manager_addr=self.identity.get("manager_addr") or f"{self.addr}:{port}", clock=self.clock,
            rng=random.Random(self.rng.getrandbits(64)), scheduler_strategy=self.cfg.scheduler_strategy,
            raft_tick=self.cfg.raft_tick, api_socket=self.cfg.api_socket, on_credentials=self._write_creds,
            cipher=DataCipher(keys.dek), on_cluster=self._sync_autolock)
        self.replica = replica
        try:
            await replica.open(creds)
        except BaseException:
            await self._deactivate()
            raise
        self.raft, self.store, self.manager = replica.raft, replica.store, replica.manager
        if not self.identity.get("cluster_id") and self._cluster_id():
            self.identity["cluster_id"] = self._cluster_id()
            self._write_identity()

    async def _serve_manager(self) -> None:
        """The node RPC listeners and this node's own agent (the store must hold the cluster, or the node must
        have its certificate on disk)."""
        assert self.replica is not None
        creds = self._read_creds() if (self._certs_dir / "swarm-node.key").exists() else None
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
                           random.Random(self.rng.getrandbits(64)), addr=self.addr)
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

    def _read_creds(self) -> NodeCredentials:
        d = self._certs_dir
        dek = self._keys.dek if self._keys is not None else None
        return NodeCredentials(key_pem=read_tls_key((d / "swarm-node.key").read_bytes(), dek),
                               cert_pem=(d / "swarm-node.crt").read_text(),
                               root_pem=(d / "swarm-root-ca.crt").read_text())

    def _write_creds(self, creds: NodeCredentials) -> None:
        d = self._certs_dir
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Encrypted (under the Raft data key) while autolock is on: only the unlock key opens it.
        locked = self._keys is not None and self._keys.kek is not None and self.identity.get("role") == "manager"
        dek = self._keys.dek if locked and self._keys is not None else None
        for name, data, mode in (("swarm-root-ca.crt", creds.root_pem.encode(), 0o644),
                                 ("swarm-node.key", protect_tls_key(creds.key_pem, dek), 0o600),
                                 ("swarm-node.crt", creds.cert_pem.encode(), 0o644)):
            tmp = d / (name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, d / name)

    # --- keys at rest and autolock (shoal/manager/keys.py) ---------------------------------------------

    def _manager_keys(self) -> Unlocked:
        """This manager's Raft data key: in memory already (unlocked), from disk, or new (first Raft storage)."""
        if self._keys is not None:
            return self._keys
        store = KeyStore(self._certs_dir)
        if store.exists():
            if store.locked():
                raise Unavailable(M.SWARM_LOCKED)
            self._keys = store.load()
        else:
            self._keys = store.create()
        return self._keys

    def _sync_autolock(self, cluster: Cluster) -> None:
        """Each manager follows the swarm's autolock setting and unlock key as the cluster object changes."""
        want = cluster.unlock_key if cluster.spec.autolock_managers else ""
        if want == self._unlock_key or self._keys is None:
            return
        self._unlock_key = want
        keys = self._keys

        async def protect() -> None:
            try:
                new = await asyncio.to_thread(KeyStore(self._certs_dir).store, keys, want)
            except OSError as e:
                log.error("protecting the Raft data key failed: %s", e)
                return
            was_locked = keys.kek is not None
            self._keys = new  # the same DEK: the TLS key on disk reads the same under either
            # On or off; a rotation leaves the TLS key (under the DEK) as it is. At `swarm init --autolock` this
            # can run before the node's first certificate is written: that write then protects it (it reads
            # `self._keys`), and there is nothing on disk to rewrite yet.
            if was_locked != bool(want) and (self._certs_dir / "swarm-node.key").exists():
                self._write_creds(self._read_creds())
            log.info("autolock %s: the Raft data key and TLS key on disk are %s", "on" if want else "off",
                     "protected by the unlock key" if want else "no longer locked")

        self._spawn(protect())

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
            keys = await asyncio.to_thread(KeyStore(self._certs_dir).unlock, unlock_key)
            self._keys = keys
            self._unlock_key = unlock_key.strip()
            self.locked = False
            try:
                await self._activate()
            except Exception:
                self.locked = True
                self._keys = None
                raise
            log.info("swarm unlocked")

    async def _activate_worker(self) -> None:
        creds = self._read_creds()
        self.remote = RemoteDispatcher(list(self.identity.get("manager_addrs", [])) or
                                       [self.identity["manager_addr"]], creds)
        await self._start_network()
        self.executor = self._make_executor()
        self.agent = Agent(self.node_id, self.executor, self.remote, self.clock,
                           random.Random(self.rng.getrandbits(64)), addr=self.addr)
        self._agent_task = asyncio.create_task(self.agent.run(), name="agent")
        self._renew_task = asyncio.create_task(self._renew_loop(), name="cert-renewal")
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
                self._write_identity()

    async def _leave_when_removed(self, remote: RemoteDispatcher) -> None:
        """`docker node rm` on a manager: this node's calls are refused as removed. Stop its tasks and go
        inactive, as a swarm node does, instead of retrying forever."""
        await remote.removed.wait()
        log.warning("node %s was removed from the swarm by a manager: stopping its tasks and leaving", self.node_id)
        async with self._lock:
            if self.remote is remote:
                self._removed_task = None  # _deactivate must not cancel this task: it is doing the leaving
                await self._remove_local_state()

    async def _wait_renewal_due(self, at: float) -> None:
        """Until the renewal point, or earlier if a manager asks (root rotation) or the trust roots change."""
        assert self.remote is not None
        waits = [asyncio.ensure_future(self.clock.sleep(max(at - self.clock.now(), 0.0))),
                 asyncio.ensure_future(self.remote.renew_requested.wait()),
                 asyncio.ensure_future(self.remote.trust_changed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _adopt_trust_root(self) -> bool:
        """The managers' trust roots changed (a rotation ended): take them if this node's certificate chains to
        them (True); otherwise a renewal brings a certificate that does."""
        assert self.remote is not None
        self.remote.trust_changed.clear()
        creds, roots = self.remote.creds, self.remote.trust_root
        pems = CA.split_pems(creds.cert_pem)
        if not roots or not CA.chains_to(pems[0], "".join(pems[1:]), roots):
            return False
        new = NodeCredentials(creds.key_pem, creds.cert_pem, roots)
        self._write_creds(new)
        self.remote.set_credentials(new)
        log.info("trust roots updated from the managers")
        return True

    async def _renew_loop(self) -> None:
        """Renew the node certificate at 50-80% of its lifetime (as swarmkit), retrying on failure."""
        backoff = 5.0
        while True:
            assert self.remote is not None
            at = CA.renew_at(self.remote.creds.cert_pem, self.rng)
            await self._wait_renewal_due(at)
            if self.remote.trust_changed.is_set() and not self.remote.renew_requested.is_set() \
                    and self.clock.now() < at and self._adopt_trust_root():
                continue
            self.remote.renew_requested.clear()
            self.remote.trust_changed.clear()
            try:
                creds = await self.remote.renew(CA.new_key_pem())
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("renewing the node certificate failed (%s); retrying in %.0fs", e, backoff)
                await self.clock.sleep(backoff)
                backoff = min(backoff * 2, 300.0)
                continue
            backoff = 5.0
            ident = CA.identity_of(creds.cert_pem)
            if ident.role != self.identity.get("role"):
                # Promoted: the node becomes a manager (in a task of its own: it stops this loop).
                asyncio.get_running_loop().create_task(
                    self._convert(ident.role, creds, list(self.remote.manager_addrs)))
                return
            self._write_creds(creds)
            self.remote.set_credentials(creds)
            log.info("node certificate renewed; valid until %s", ident.not_after)

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

    # --- swarm membership -------------------------------------------------------------------------

    async def init_swarm(self, opts: InitOptions) -> str:
        async with self._lock:
            if self.state != "inactive":
                if not opts.force_new_cluster:
                    raise Unavailable(M.SWARM_EXISTS)
                return await self._force_new_cluster()
            # ForceNewCluster on a node outside any swarm is a plain init, as dockerd's.
            if not _splittable(opts.listen_addr):
                raise ShoalError(f"could not parse listen address {opts.listen_addr}")  # resolveListenAddr
            spec = opts.spec or SwarmSpec()
            # An operator's signing root and ForceRotate come after the cluster exists, through a cluster update
            # (dockerd's initClusterSpec: UpdateCluster, which starts a root rotation): see the init route.
            spec = replace(spec, ca_config=replace(spec.ca_config, signing_ca_cert="", signing_ca_key="",
                                                   force_rotate=0))
            if not spec.annotations.name:
                spec = replace(spec, annotations=Annotations(name="default", labels=spec.annotations.labels))
            if spec.annotations.name != "default":
                raise InvalidArgument(M.rpc(M.INVALID_ARGUMENT, "invalid cluster name"))
            pools = opts.default_addr_pool or ("10.0.0.0/8",)
            size = opts.subnet_size or 24
            for p in pools:
                try:
                    import ipaddress

                    net = ipaddress.ip_network(p, strict=False)
                except ValueError:
                    raise InvalidArgument(f"invalid default address pool {p}") from None
                if size < net.prefixlen:
                    raise InvalidArgument(f"invalid subnet size {size} for pool {p}")
            node_id = new_id(self.rng)
            addr = _local_addr(opts.advertise_addr, opts.listen_addr)
            port = (opts.listen_addr.rsplit(":", 1)[1] if ":" in opts.listen_addr else "2377") or "2377"
            raft_id = self.rng.getrandbits(63) or 1
            cluster_id = new_id(self.rng)
            self.identity = {"node_id": node_id, "addr": addr, "manager_addr": f"{addr}:{port}",
                             "listen_addr": opts.listen_addr or "0.0.0.0:2377", "role": "manager",
                             "raft_id": raft_id, "cluster_id": cluster_id}
            # Before anything is written: a refused external root leaves the node as it was.
            root = await self._init_root_ca(spec)
            cluster = Cluster(id=cluster_id, spec=spec, root_ca=root, default_addr_pool=pools, subnet_size=size,
                              data_path_port=opts.data_path_port or 4789)
            cluster = replace(cluster, join_tokens=replace(
                cluster.join_tokens, worker=make_join_token(root, self.rng),
                manager=make_join_token(root, self.rng)),
                unlock_key=("SWMKEY-1-" + new_id(self.rng)) if opts.autolock else "")
            if opts.autolock:
                cluster = replace(cluster, spec=replace(cluster.spec, autolock_managers=True))
            node = manager_node_for(node_id, self.hostname, addr, raft_id)
            node = replace(node, spec=replace(node.spec, availability=opts.availability or "active"),
                           manager_status=replace(node.manager_status, addr=f"{addr}:{port}"))
            ingress_id = new_id(self.rng)

            def fn(tx: Tx) -> None:
                tx.create(cluster)
                tx.create(node)
                tx.create(Network(
                    id=ingress_id, vni=4096,
                    spec=NetworkSpec(annotations=Annotations(name="ingress"), ingress=True),
                    ipam=IPAMOptions(configs=(IPAMConfig(subnet="10.0.0.0/24", gateway="10.0.0.1"),))))

            raft_dir = self.cfg.data_dir / "raft"
            operator_root = (self._certs_dir / "swarm-root-ca.crt").exists()
            shutil.rmtree(raft_dir, ignore_errors=True)
            for name in ("swarm-node.key", "swarm-node.crt", DEK_FILE):  # an earlier swarm's: this one has its own
                (self._certs_dir / name).unlink(missing_ok=True)
            self._keys, self._unlock_key = None, ""
            storage = SqliteStorage(raft_dir, DataCipher(self._manager_keys().dek))
            bootstrap(storage, [raft_id])  # a Raft group of one: this manager is its only voter
            storage.close()
            try:
                self._write_identity()
                await self._open_manager()
                assert self.store is not None
                await self.store.update(fn)
                await self._serve_manager()
            except Exception:
                await self._deactivate()
                self._identity_file.unlink(missing_ok=True)
                shutil.rmtree(raft_dir, ignore_errors=True)
                # A refused init (the manager port taken) leaves the node as it was: its certificates go, all
                # but a root the operator placed (the next init would take a left root for an external one).
                for name in ("swarm-node.key", "swarm-node.crt", DEK_FILE,
                             *(() if operator_root else ("swarm-root-ca.crt",))):
                    (self._certs_dir / name).unlink(missing_ok=True)
                self._keys, self._unlock_key = None, ""
                self.identity = {}
                raise
            return node_id

    async def _force_new_cluster(self) -> str:
        """`swarm init --force-new-cluster` on a manager: the same swarm, with this manager as its only one."""
        if self.identity.get("role") != "manager":
            raise Unavailable(M.SWARM_NOT_MANAGER)
        await self._deactivate()
        index = await force_new_cluster(self.cfg.data_dir / "raft", self._raft_id(), self.node_id, self.clock,
                                        DataCipher(self._manager_keys().dek))
        log.warning("forced a new cluster: this manager is the only member now (state kept up to index %d)", index)
        await self._activate()
        return self.node_id

    async def _init_root_ca(self, spec: SwarmSpec) -> RootCA:
        """The new cluster's root CA. A root certificate placed in `certificates/swarm-root-ca.crt` before the
        init (with `swarm-root-ca.key` next to it: a root with its key) is used instead of a generated one. Without
        its key, the init spec must list an external CA for it (`--external-ca`, no cacert or this root as cacert)
        that completes an https handshake chaining to it, else swarmkit's "there must be at least one valid,
        reachable external CA ..."; every node certificate, this manager's own first, is then signed there."""
        cert_file, key_file = self._certs_dir / "swarm-root-ca.crt", self._certs_dir / "swarm-root-ca.key"
        if not cert_file.exists():
            return create_root_ca(self.clock.now())
        key_pem = key_file.read_text() if key_file.exists() else ""
        root = CA.validate_signing_root(cert_file.read_text(), key_pem, self.clock.now())
        if key_pem:
            return root
        urls = CA.external_ca_urls(spec.ca_config.external_cas, root.ca_cert_pem, root.ca_cert_pem)

        def reachable() -> bool:
            return any(CA.external_ca_reachable(u, root.ca_cert_pem) for u in urls)

        if not await asyncio.to_thread(reachable):
            raise CA.external_ca_unreachable()
        log.info("swarm init with the external root CA from %s (no local key)", cert_file)
        return root

    def _write_identity(self) -> None:
        tmp = self._identity_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.identity))
        os.replace(tmp, self._identity_file)

    async def join_swarm(self, opts: JoinOptions) -> str:
        """Join with a worker or a manager token: a certificate from the cluster's CA first (its role is the
        token's), then persist, then start the agent (a manager first joins the Raft group through the leader).
        A refusal (bad token, CA mismatch, unreachable manager) leaves nothing behind."""
        async with self._lock:
            if self.state != "inactive":
                raise Unavailable(M.SWARM_EXISTS)
            if not opts.join_token:
                raise InvalidArgument(CA.INVALID_TOKEN)
            result = await rpc_join(list(opts.remote_addrs), opts.join_token, CA.new_key_pem(), self.hostname,
                                    opts.availability or "active")
            addr = _local_addr(opts.advertise_addr, "") if opts.advertise_addr else _addr_towards(result.manager_addr)
            role = CA.identity_of(result.creds.cert_pem).role
            listen = opts.listen_addr or "0.0.0.0:2377"
            port = listen.rsplit(":", 1)[1] if ":" in listen else "2377"
            self.identity = {"node_id": result.node_id, "addr": addr, "role": role,
                             "cluster_id": result.cluster_id, "manager_addr": result.manager_addr,
                             "manager_id": result.manager_id, "listen_addr": listen,
                             "manager_addrs": [result.manager_addr, *[a for a in opts.remote_addrs
                                                                      if a != result.manager_addr]]}
            if role == "manager":
                self.identity["manager_addr"] = f"{addr}:{port}"
                self.identity["raft_id"] = self.rng.getrandbits(63) or 1
            try:
                self._keys, self._unlock_key = None, ""
                (self._certs_dir / DEK_FILE).unlink(missing_ok=True)
                self._write_creds(result.creds)
                shutil.rmtree(self.cfg.data_dir / "raft", ignore_errors=True)
                self._write_identity()
                if role == "manager":
                    await self._join_as_manager(result.leader_addr or result.manager_addr)
                else:
                    await self._activate()
            except BaseException:
                await self._deactivate()
                self._identity_file.unlink(missing_ok=True)
                shutil.rmtree(self._certs_dir, ignore_errors=True)
                shutil.rmtree(self.cfg.data_dir / "raft", ignore_errors=True)
                self.identity = {}
                raise
            agent = self.agent
            assert agent is not None
            try:
                await asyncio.wait_for(agent.connected.wait(), 20.0)
            except TimeoutError:
                log.warning("joined, but the first session with a manager is not up yet")
            return result.node_id

    async def _join_as_manager(self, via: str) -> None:
        """An empty Raft member with its listeners up (so the leader can reach it as soon as it is a voter), then
        the leader adds it, then the store catches up by log or snapshot."""
        await self._open_manager()
        await self._serve_manager()
        assert self.replica is not None
        await self.replica.join_group(via)

    async def _leave_worker(self) -> None:
        if self.remote is not None:
            try:
                await asyncio.wait_for(self.remote.leave(), 3.0)
            except Exception as e:  # the manager marks the node down after missed heartbeats anyway
                log.info("telling the manager about leaving failed: %s", e)
        await self._remove_local_state()

    async def leave(self, force: bool) -> None:
        async with self._lock:
            if self.state == "inactive":
                raise Unavailable(M.NO_SWARM)
            if self.locked:
                if not force:
                    raise Unavailable("Swarm is encrypted and locked. Please unlock it first or use `--force` to "
                                      "ignore this message.")
                await self._remove_local_state()
                return
            if self.role == "worker":
                await self._leave_worker()
                return
            if not force:
                raise Unavailable(self._manager_leave_refusal())
            # As dockerd: the node stops and forgets the swarm; the others still count it as a manager
            # (Unreachable) until it is demoted and removed.
            await self._remove_local_state()

    def _manager_leave_refusal(self) -> str:
        """dockerd's message for `swarm leave` without --force on a manager (daemon/cluster/swarm.go)."""
        msg = "You are attempting to leave the swarm on a node that is participating as a manager. "
        replica = self.replica
        if replica is None or replica.membership is None or replica.raft is None:
            return msg + ("Doing so may lose the consensus of your cluster. The only way to restore a swarm that has "
                          "lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to "
                          "suppress this message.")
        reachable, unreachable = replica.membership.reachable_counts()
        if reachable - 2 <= unreachable:
            if reachable == 1 and unreachable == 0:
                return msg + ("Removing the last manager erases all current state of the swarm. Use `--force` to "
                              "ignore this message. ")
            msg += (f"Removing this node leaves {reachable - 1} managers out of {reachable + unreachable}. "
                    "Without a Raft quorum your swarm will be inaccessible. ")
        return msg + ("The only way to restore a swarm that has lost consensus is to reinitialize it with "
                      "`--force-new-cluster`. Use `--force` to suppress this message.")

    async def _convert(self, role: str, creds: NodeCredentials, managers: list[str]) -> None:
        """Promotion or demotion came through: stop what this node ran as and start as `role`, keeping its tasks
        (the agent adopts them) and its identity."""
        async with self._lock:
            if self.state == "inactive" or self.identity.get("role") == role:
                return
            log.info("this node is now a %s: restarting its swarm components in that role", role)
            await self._deactivate()
            self._write_creds(creds)
            self.identity["role"] = role
            if managers:
                self.identity["manager_addrs"] = managers
                self.identity["manager_addr"] = managers[0]
            self._keys, self._unlock_key = None, ""
            (self._certs_dir / DEK_FILE).unlink(missing_ok=True)
            if role == "manager":
                listen = self.identity.get("listen_addr") or "0.0.0.0:2377"
                port = listen.rsplit(":", 1)[1] if ":" in listen else "2377"
                self.identity["manager_addr"] = f"{self.addr}:{port}"
                self.identity["raft_id"] = self.rng.getrandbits(63) or 1
                shutil.rmtree(self.cfg.data_dir / "raft", ignore_errors=True)
                self._write_identity()
                try:
                    await self._join_as_manager(managers[0] if managers else "")
                except Exception:
                    log.exception("joining the managers after a promotion failed; retrying as the node restarts")
                    raise
            else:
                self.identity.pop("raft_id", None)
                shutil.rmtree(self.cfg.data_dir / "raft", ignore_errors=True)
                self._write_identity()
                await self._activate()

    async def _remove_local_state(self) -> None:
        executor = self.executor
        await self._deactivate()
        # Leaving removes this node's task containers/processes, as dockerd does.
        cleanup = self._make_executor() if executor is not None else None
        if cleanup is not None:
            for tid in await cleanup.list_task_ids():
                ctlr = cleanup.controller(Task(id=tid, node_id=self.node_id), _Deps())
                try:
                    await ctlr.terminate()
                except Exception:
                    pass
                try:
                    await ctlr.remove()
                except Exception:
                    log.warning("removing task %s on leave failed", tid, exc_info=True)
                await ctlr.close()
            await cleanup.close()
        await self._remove_network_state()
        # What is left of the executor's state (empty task dirs, a docker executor's secrets root) goes too:
        # a node that left holds nothing on the host.
        shutil.rmtree(self.cfg.data_dir / "executor", ignore_errors=True)
        self._identity_file.unlink(missing_ok=True)
        shutil.rmtree(self.cfg.data_dir / "raft", ignore_errors=True)
        shutil.rmtree(self._certs_dir, ignore_errors=True)
        self.identity = {}
        self._keys, self._unlock_key, self.locked = None, "", False

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
