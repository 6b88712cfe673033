"""One transaction is one Raft log entry, which the transport carries whole: a transaction whose change is past
MAX_TRANSACTION_BYTES is refused before it is proposed (the swarm could commit nothing after an entry no follower
can receive), alone: the others of its group commit go on."""

from __future__ import annotations

import asyncio

import pytest

from shoal.clock import SystemClock
from shoal.errors import InvalidArgument
from shoal.model.objects import Annotations, Service, ServiceSpec
from shoal.store import memory
from shoal.store.memory import TransactionTooLarge, Tx, decode_entry
from shoal.testing.sim import MemoryProposer, memory_store


def many(prefix: str, n: int):  # type: ignore[no-untyped-def]
    def fn(tx: Tx) -> None:
        for i in range(n):
            tx.create(Service(id=f"{prefix}{i}", spec=ServiceSpec(annotations=Annotations(name=f"{prefix}{i}"))))
    return fn


async def test_a_transaction_past_the_cap_is_refused_alone_before_it_is_proposed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = memory_store(SystemClock())
    one = len(memory.encode_actions([("create", "service", Service(
        id="x0", spec=ServiceSpec(annotations=Annotations(name="x0"))))], verify=False))
    monkeypatch.setattr(memory, "MAX_TRANSACTION_BYTES", 10 * one + 50)
    proposer = store.proposer
    assert isinstance(proposer, MemoryProposer)
    small, big, after = await asyncio.gather(store.update(many("a", 3)), store.update(many("b", 40)),
                                             store.update(many("c", 3)), return_exceptions=True)
    assert isinstance(big, TransactionTooLarge) and isinstance(big, InvalidArgument), big
    assert "transaction is too large for the cluster store" in big.message and "(40 changes)" in big.message
    assert small is None and after is None
    v = store.view()
    assert {s.id for s in v.services()} == {f"a{i}" for i in range(3)} | {f"c{i}" for i in range(3)}
    written = {obj.id for data in proposer.entries for _, _, obj in decode_entry(data)[1]}
    assert not any(i.startswith("b") for i in written)  # never proposed
    await store.update(many("d", 9))  # under the cap: written
    assert store.view().service("d8") is not None
