"""The node: what one `shoal daemon` is, wiring every layer below it (see scripts/layers.py).

`ShoalNode` (core) runs the manager and/or the agent of this host and the swarm operations (init, join,
leave, unlock); `network` starts its network agent, `attacher` asks the leader for plain containers'
network attachments.
"""

from shoal.node.core import InitOptions, JoinOptions, NodeConfig, ShoalNode

__all__ = ["InitOptions", "JoinOptions", "NodeConfig", "ShoalNode"]
