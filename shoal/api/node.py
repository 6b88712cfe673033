"""What a client asks of a node's swarm operations: `docker swarm init` and `docker swarm join`, as the Engine
API layer parses them and the node carries them out."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.model.objects import SwarmSpec


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


@dataclass(frozen=True)
class JoinOptions:
    remote_addrs: tuple[str, ...]
    join_token: str
    listen_addr: str = "0.0.0.0:2377"
    advertise_addr: str = ""
    availability: str = "active"
