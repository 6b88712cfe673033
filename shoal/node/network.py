"""Starting a node's network agent: where its state comes from (the store on a manager, the Network gRPC
feed elsewhere), its DNS upstreams, and how it asks the leader for attachments (`Attacher`)."""

from __future__ import annotations

import logging
from typing import Any

from shoal.net.agent import NetworkAgent
from shoal.net.lb import KeepAlive
from shoal.net.setup import resolv_conf_nameservers, why_no_networking
from shoal.net.state import LocalFeed
from shoal.node.attacher import Attacher
from shoal.rpc.netfeed import RemoteFeed

log = logging.getLogger(__name__)


async def start_network_agent(node: Any) -> Any:
    """A started NetworkAgent for `node` (a ShoalNode), or None when this host cannot do networking: tasks
    then run as before, without namespaces."""
    reason = why_no_networking()
    if reason is not None:
        log.warning("service networking is off on this node (%s): tasks run in the host's network", reason)
        return None
    feed: Any
    if node.store is not None:
        feed = LocalFeed(node.store)
    else:
        feed = RemoteFeed(node.remote, lambda: node.agent.connected if node.agent is not None else None,
                          node.clock)
    upstreams = node.cfg.dns_upstreams
    if upstreams is None:
        upstreams = tuple(resolv_conf_nameservers())
    ka = getattr(node.cfg, "mesh_keepalive", None)
    agent = NetworkAgent(node.node_id, node.addr, node.cfg.data_dir / "net", feed, dns_upstreams=upstreams,
                         engine_host=node.cfg.engine_host if node.cfg.executor == "docker" else None,
                         keepalive=KeepAlive(*ka) if ka else None)
    agent.attacher = Attacher(node)
    await agent.start()
    return agent
