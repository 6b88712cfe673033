"""Many seeds of the Raft fault simulation (shoal.testing.raftsim).

RAFT_SIM_SEEDS sets the number of 3-node seeds (default 1000: about 2,200 seeds in all, ~2 min of one core);
5-node runs get 3/4 of it and 7-node runs 1/6. `RAFT_SIM_SEEDS=5000` is the long run. A failure prints the
seed and the command that replays it.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.testing.raftsim import RaftSim, SimConfig, run_seed

SEEDS = int(os.environ.get("RAFT_SIM_SEEDS", "1000"))
CHUNK = 25
PLAN = {3: SEEDS, 5: max(1, SEEDS * 3 // 4), 7: max(1, SEEDS // 6)}


def _chunks() -> list[tuple[int, int, int]]:
    out = []
    for nodes, count in PLAN.items():
        for lo in range(0, count, CHUNK):
            out.append((nodes, lo, min(count, lo + CHUNK)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("nodes", "lo", "hi"), _chunks(), ids=lambda v: str(v))
def test_raft_survives_faults(nodes: int, lo: int, hi: int) -> None:
    acked = 0
    for seed in range(lo, hi):
        r = run_seed(seed, nodes)
        acked += r.acked
        assert r.leader_after_heal <= SimConfig().heal_bound
    assert acked > 0


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [3, 5])
def test_raft_survives_faults_with_a_catch_up_tail(nodes: int) -> None:
    # Compaction keeps a tail below each snapshot (as RaftNode does): followers a little behind get entries from
    # it, those further behind a snapshot; both paths under the same faults.
    for seed in range(max(1, SEEDS // 8)):
        run_seed(seed, nodes, catchup_entries=seed % 30)


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [3, 5])
def test_plain_raft_without_pre_vote_or_check_quorum(nodes: int) -> None:
    for seed in range(max(1, SEEDS // 8)):
        run_seed(seed, nodes, pre_vote=False, check_quorum=False)


def test_one_seed_replays_exactly() -> None:
    a = run_seed(7, 3)
    b = run_seed(7, 3)
    assert a == b


def test_a_calm_network_acknowledges_most_writes() -> None:
    r = run_seed(1, 3, drop=0.0, duplicate=0.0, crash_every=1e9, partition_every=1e9, conf_change_every=1e9)
    assert r.acked >= 0.9 * r.proposed and r.crashes == 0


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    nodes=st.sampled_from([3, 5]),
    drop=st.floats(0.0, 0.3),
    duplicate=st.floats(0.0, 0.2),
    crash_every=st.floats(0.1, 3.0),
    partition_every=st.floats(0.1, 3.0),
    max_inflight=st.integers(1, 8),
    max_entries=st.integers(1, 16),
    snapshot_every=st.integers(3, 50),
    catchup_entries=st.integers(0, 40),
    pre_vote=st.booleans(),
    check_quorum=st.booleans(),
)
def test_raft_survives_faults_hypothesis(seed: int, nodes: int, drop: float, duplicate: float, crash_every: float,
                                        partition_every: float, max_inflight: int, max_entries: int,
                                        snapshot_every: int, catchup_entries: int, pre_vote: bool,
                                        check_quorum: bool) -> None:
    cfg = SimConfig(nodes=nodes, drop=drop, duplicate=duplicate, crash_every=crash_every,
                    partition_every=partition_every, max_inflight=max_inflight, max_entries_per_msg=max_entries,
                    snapshot_every=snapshot_every, catchup_entries=catchup_entries, fault_time=2.0,
                    pre_vote=pre_vote, check_quorum=check_quorum)
    RaftSim(seed, cfg).run()
