"""Raft consensus for the managers: a deterministic core (`core`) and its storage seam (`storage`).

The asyncio shell (durable log, gRPC transport, timers) drives `RaftCore` through `tick`, `step`,
`propose`, `ready` and `advance`; see `core`'s module docstring for the contract.
"""
