"""Raft consensus for the managers: a deterministic core (`core`) and its storage seam (`storage`).

The asyncio shell (durable log, gRPC transport, timers) drives `RaftCore` through `tick`, `step`,
`propose`, `ready` and `advance`; see `core`'s module docstring for the contract.
"""

# Seconds per Raft tick on a manager (`shoal daemon --raft-tick`): heartbeats every tick, an election timeout of
# 10-15 ticks. Here, not in the node module, so the CLI can show it without importing the manager.
DEFAULT_TICK = 0.1

# Bytes of log (entry data) applied since the last snapshot after which a manager takes one, whatever the entry
# count (`--snapshot-interval`): what a restart replays, what the leader holds in memory past its snapshot and what
# the data dir's log holds are bounded by it (issue 15: 200 MB of log and no snapshot took 28 s to replay).
DEFAULT_SNAPSHOT_BYTES = 32 << 20
