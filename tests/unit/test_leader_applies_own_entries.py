"""A leader applies the entries it proposed from the objects it wrote, never by decoding them (decoding a large
entry costs the leader as much as its followers' whole apply); its followers decode each entry once."""

from __future__ import annotations

import asyncio

import pytest

import shoal.store.memory as memory
from shoal.testing.clock import VirtualClock
from tests.unit.test_raft_node import IDS, Cluster, create


async def test_only_the_followers_decode_the_leaders_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = VirtualClock()
    async with clock.autojump():
        c = Cluster(clock)
        await c.start_all()
        try:
            lead = await c.leader()
            decoded: list[int] = []
            real = memory.decode_entry

            def counting(data: bytes) -> tuple[int, list[tuple[str, str, object]]]:
                out = real(data)
                decoded.append(out[0])
                return out  # type: ignore[return-value]

            monkeypatch.setattr(memory, "decode_entry", counting)
            store = c.stores[lead.id]
            before = store.version
            for k in range(20):
                await store.update(create(f"one{k}"))
            await asyncio.gather(*(store.update(create(f"many{k}")) for k in range(100)))  # group commit
            await c.wait_for(lambda: all(s.version == store.version for s in c.stores.values()))
            entries = store.version - before
            assert entries >= 21
            # Each entry decoded once by each follower, none by the leader.
            assert len(decoded) == (len(IDS) - 1) * entries
            assert all(decoded.count(v) == len(IDS) - 1 for v in set(decoded))
        finally:
            await c.stop_all()
