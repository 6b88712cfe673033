"""Raft consensus for the managers: a deterministic core (`core`) and its storage seam (`storage`).

The asyncio shell (durable log, gRPC transport, timers) drives `RaftCore` through `tick`, `step`,
`propose`, `ready` and `advance`; see `core`'s module docstring for the contract.
"""

# Seconds per Raft tick on a manager (`shoal daemon --raft-tick`): heartbeats every tick, an election timeout of
# 10-15 ticks. Here, not in the node module, so the CLI can show it without importing the manager.
DEFAULT_TICK = 0.1
