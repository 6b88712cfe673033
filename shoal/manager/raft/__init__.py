"""Raft consensus for the managers: a deterministic core (`core`) and its storage seam (`storage`).

The asyncio shell (durable log, gRPC transport, timers) drives `RaftCore` through `tick`, `step`,
`propose`, `ready` and `advance`; see `core`'s module docstring for the contract.
"""

# Seconds per Raft tick on a manager (`shoal daemon --raft-tick`): heartbeats every tick, an election timeout of
# 10-15 ticks. Here, not in the node module, so the CLI can show it without importing the manager.
DEFAULT_TICK = 0.1

# Bytes of log (entry data) applied since the last snapshot after which a manager takes one, whatever the entry
# count (`--snapshot-interval`): what a restart replays, and (with the catch-up tail below) what the leader holds in
# memory and what the data dir's log holds are bounded by it (200 MB of log and no snapshot took 28 s to replay).
DEFAULT_SNAPSHOT_BYTES = 32 << 20

# After a snapshot the log keeps a catch-up tail of entries the snapshot already holds, at most this many and at most
# this many bytes of them (whichever is smaller): a follower only slightly behind a snapshot taken by size gets a
# few entries, not the whole snapshot (tens of MiB). The count is the cluster spec's Raft.LogEntriesForSlowFollowers
# (swarmkit's default, 500; a manager follows `POST /swarm/update`); the byte bound, Shoal's own, keeps the leader's
# memory and the data dir's log bounded when entries are large. A restart does not replay the tail.
DEFAULT_CATCHUP_ENTRIES = 500
DEFAULT_CATCHUP_BYTES = 8 << 20
