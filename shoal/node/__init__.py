"""The node: what one `shoal daemon` is, wiring every layer below it (see scripts/layers.py).

- `core.ShoalNode`: the lifecycle of this host's manager and/or agent (start, activate, stop);
- `swarm`: the swarm operations (init, join, leave, converting between worker and manager);
- `identity`: who the node is on disk (node.json, certificates, the Raft data key, autolock);
- `renewal`: a worker's certificate renewal;
- `replica`: a manager's Raft member, replicated store, manager and node RPC, wired together;
- `network`, `attacher`: the node's network agent and the leader's network attachments for it.
"""

from shoal.node.core import NodeConfig, ShoalNode

__all__ = ["NodeConfig", "ShoalNode"]
