"""Scale: 1,000 and 5,000 simulated agents (many per process, each a real gRPC session with heartbeats and
status reports) against three managers; the leader's CPU share and RSS while idle and while placing
100,000 tasks onto them.

There is no side-by-side reference for this one (Swarm has no simulated-agent mode); the goals are absolute
(under 1 GiB RSS and under half a core idle at 5,000 nodes). Shoal's side needs three managers (issue 5)
and agents joining over the network (issue 4); until then nothing is measured and nothing is recorded.
"""

from __future__ import annotations

from typing import Any

from bench.common import conditions, note


def run(quick: bool) -> list[dict[str, Any]]:
    conditions("scale", "1,000 and 5,000 simulated agents, 3 managers, 100,000 tasks (planned)")
    note("scale", "Shoal: not available yet (needs issue 5/4: three managers and agents joining over gRPC)")
    note("scale", "reference: none (real Swarm has no simulated agents; goals are absolute)")
    return []
