"""`NodeAPI`: what the Engine API server needs of the node it serves (shoal.node.ShoalNode is the one), so
this layer never imports the node that wires it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Protocol

from shoal.agent.agent import Agent
from shoal.api.node import InitOptions, JoinOptions
from shoal.clock import Clock
from shoal.engineapi.forward import Forwarder
from shoal.manager.manager import Manager
from shoal.manager.membership import Membership
from shoal.manager.raft.node import RaftNode
from shoal.net.agent import NetworkAgent
from shoal.store.memory import MemoryStore


class NodeSettings(Protocol):
    @property
    def data_dir(self) -> Path: ...


class NodeAPI(Protocol):
    @property
    def cfg(self) -> NodeSettings: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def rng(self) -> random.Random: ...

    @property
    def hostname(self) -> str: ...

    @property
    def state(self) -> str:
        """inactive | pending (leaving) | active | locked, as `docker info` says it."""

    @property
    def role(self) -> str: ...

    @property
    def node_id(self) -> str: ...

    @property
    def addr(self) -> str: ...

    @property
    def locked(self) -> bool: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def manager(self) -> Manager | None: ...

    @property
    def agent(self) -> Agent | None: ...

    @property
    def network(self) -> NetworkAgent | None: ...

    @property
    def store(self) -> MemoryStore | None: ...

    @property
    def raft(self) -> RaftNode | None: ...

    @property
    def forwarder(self) -> Forwarder | None:
        """Requests for the leader go through it on a manager (None elsewhere)."""

    @property
    def membership(self) -> Membership | None: ...

    def remote_managers(self) -> list[dict[str, str]]: ...

    def require_manager(self) -> Manager:
        """The manager, or the error dockerd gives on a node that is not one (or is locked)."""

    async def read_barrier(self) -> None: ...

    async def wait_for_leader(self) -> None: ...

    async def init_swarm(self, opts: InitOptions) -> str: ...

    async def join_swarm(self, opts: JoinOptions) -> str: ...

    async def leave(self, force: bool) -> None: ...

    async def unlock(self, unlock_key: str) -> None: ...
