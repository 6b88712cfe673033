"""One Shoal node: an inactive engine until `swarm init`, then a manager with its own agent.

State on disk under the data dir:
    node.json        the node's identity and swarm membership (absent while inactive)
    raft/            the store's durable log and snapshots
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

from shoal.agent.agent import Agent
from shoal.agent.exec.protocol import Executor
from shoal.ca import create_root_ca, make_join_token
from shoal.clock import Clock
from shoal.engineapi import messages as M
from shoal.errors import InvalidArgument, ShoalError, Unavailable
from shoal.ids import new_id
from shoal.manager.dispatcher import node_for_local
from shoal.manager.manager import Manager
from shoal.model.objects import (
    Annotations,
    Cluster,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkSpec,
    SwarmSpec,
)
from shoal.store.memory import MemoryStore, Tx
from shoal.store.wal import open_local_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    executor: str = "process"  # docker | process
    engine_host: str | None = None
    hostname: str = ""
    scheduler_strategy: str = "spread"


@dataclass(frozen=True)
class InitOptions:
    listen_addr: str = "0.0.0.0:2377"
    advertise_addr: str = ""
    force_new_cluster: bool = False
    spec: SwarmSpec | None = None
    default_addr_pool: tuple[str, ...] = ()
    subnet_size: int = 0
    data_path_port: int = 0
    autolock: bool = False
    availability: str = "active"


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
        self._agent_task: asyncio.Task[None] | None = None
        self.identity: dict[str, str] = {}
        self._lock = asyncio.Lock()

    # --- paths ------------------------------------------------------------------------------------

    @property
    def _identity_file(self) -> Path:
        return self.cfg.data_dir / "node.json"

    @property
    def state(self) -> str:
        return "active" if self.manager is not None else "inactive"

    @property
    def node_id(self) -> str:
        return self.identity.get("node_id", "")

    @property
    def addr(self) -> str:
        return self.identity.get("addr", "")

    # --- lifecycle --------------------------------------------------------------------------------

    def _make_executor(self) -> Executor:
        root = self.cfg.data_dir / "executor"
        if self.cfg.executor == "docker":
            from shoal.agent.exec.docker import DockerExecutor

            return DockerExecutor(engine_host=self.cfg.engine_host or "unix:///var/run/docker.sock", root=root,
                                  hostname=self.cfg.hostname or None, node_id=self.node_id)
        from shoal.agent.exec.process import ProcessExecutor

        return ProcessExecutor(root=root, hostname=self.hostname)

    async def start(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if self._identity_file.exists():
            self.identity = json.loads(self._identity_file.read_text())
            await self._activate()

    async def stop(self) -> None:
        await self._deactivate()

    async def _activate(self) -> None:
        self.store = open_local_store(self.cfg.data_dir / "raft", self.clock)
        self.manager = Manager(self.store, self.clock, self.rng, scheduler_strategy=self.cfg.scheduler_strategy)
        self.manager.start()
        self.executor = self._make_executor()
        self.agent = Agent(self.node_id, self.executor, self.manager.dispatcher, self.clock,
                           random.Random(self.rng.getrandbits(64)), addr=self.addr)
        self._agent_task = asyncio.create_task(self.agent.run(), name="agent")

    async def _deactivate(self) -> None:
        if self._agent_task is not None:
            self._agent_task.cancel()
            try:
                await self._agent_task
            except (asyncio.CancelledError, Exception):
                pass
            self._agent_task = None
        if self.agent is not None:
            await self.agent.close()
            self.agent = None
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None
        if self.executor is not None:
            await self.executor.close()
            self.executor = None
        if self.store is not None:
            closer = getattr(self.store.proposer, "log", None)
            if closer is not None:
                closer.close()
            self.store = None

    # --- swarm membership -------------------------------------------------------------------------

    async def init_swarm(self, opts: InitOptions) -> str:
        async with self._lock:
            if self.manager is not None:
                raise Unavailable(M.SWARM_EXISTS)
            if opts.force_new_cluster:
                raise Unavailable(M.NO_SWARM)
            spec = opts.spec or SwarmSpec()
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
            self.identity = {"node_id": node_id, "addr": addr, "manager_addr": f"{addr}:{port}",
                             "role": "manager"}
            shutil.rmtree(self.cfg.data_dir / "raft", ignore_errors=True)
            store = open_local_store(self.cfg.data_dir / "raft", self.clock)
            root = create_root_ca(self.clock.now())
            cluster_id = new_id(self.rng)
            cluster = Cluster(id=cluster_id, spec=spec, root_ca=root, default_addr_pool=pools, subnet_size=size,
                              data_path_port=opts.data_path_port or 4789)
            cluster = replace(cluster, join_tokens=replace(
                cluster.join_tokens, worker=make_join_token(root, self.rng),
                manager=make_join_token(root, self.rng)),
                unlock_key=("SWMKEY-1-" + new_id(self.rng)) if opts.autolock else "")
            if opts.autolock:
                cluster = replace(cluster, spec=replace(cluster.spec, autolock_managers=True))
            node = node_for_local(node_id, self.hostname, "manager", addr)
            node = replace(node, spec=replace(node.spec, availability=opts.availability or "active"),
                           manager_status=replace(node.manager_status, addr=f"{addr}:{port}")
                           if node.manager_status else None)
            ingress_id = new_id(self.rng)

            def fn(tx: Tx) -> None:
                tx.create(cluster)
                tx.create(node)
                tx.create(Network(
                    id=ingress_id, vni=4096,
                    spec=NetworkSpec(annotations=Annotations(name="ingress"), ingress=True),
                    ipam=IPAMOptions(configs=(IPAMConfig(subnet="10.0.0.0/24", gateway="10.0.0.1"),))))

            await store.update(fn)
            store.proposer.log.close()  # type: ignore[attr-defined]
            tmp = self._identity_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.identity))
            os.replace(tmp, self._identity_file)
            await self._activate()
            return node_id

    async def leave(self, force: bool) -> None:
        async with self._lock:
            if self.manager is None:
                raise Unavailable(M.NO_SWARM)
            if not force:
                raise Unavailable(
                    "You are attempting to leave the swarm on a node that is participating as a manager. "
                    "Removing the last manager erases all current state of the swarm. Use `--force` to "
                    "ignore this message.")
            executor = self.executor
            agent_runners = list(self.agent.runners.values()) if self.agent else []
            await self._deactivate()
            # Leaving removes this node's task containers/processes, as dockerd does.
            cleanup = self._make_executor() if executor is not None else None
            if cleanup is not None:
                from shoal.agent.agent import _Deps
                from shoal.model.objects import Task

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
            del agent_runners
            self._identity_file.unlink(missing_ok=True)
            shutil.rmtree(self.cfg.data_dir / "raft", ignore_errors=True)
            self.identity = {}

    def require_manager(self) -> Manager:
        if self.manager is None:
            raise Unavailable(M.NOT_A_SWARM_MANAGER)
        return self.manager


__all__ = ["InitOptions", "NodeConfig", "ShoalError", "ShoalNode"]
