"""A snapshot reuses each object's encoding from the log entry that wrote it, and reads back as the state."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from shoal.clock import SystemClock
from shoal.model import codec
from shoal.model.objects import Annotations, Service, ServiceSpec, Task, TaskStatus
from shoal.model.state import TaskState
from shoal.store.memory import MemoryStore, decode_entry
from shoal.testing.sim import MemoryProposer


def svc(sid: str, name: str) -> Service:
    return Service(id=sid, spec=ServiceSpec(annotations=Annotations(name=name)))


async def filled_store() -> MemoryStore:
    store = MemoryStore(MemoryProposer(), SystemClock())

    def first(tx):  # type: ignore[no-untyped-def]
        tx.create(svc("s1", "web"))
        tx.create(svc("s2", "api"))
        for i in range(5):
            tx.create(Task(id=f"t{i}", service_id="s1", slot=i + 1))

    await store.update(first)

    def second(tx):  # type: ignore[no-untyped-def]
        t = tx.task("t1")
        tx.update(replace(t, node_id="n1", status=TaskStatus(state=TaskState.ASSIGNED, message="assigned")))
        tx.delete("task", "t2")
        tx.delete("service", "s2")
        tx.create(Task(id="t9", service_id="s1", slot=9))

    await store.update(second)
    return store


async def test_snapshot_encodes_nothing_the_log_already_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    store = await filled_store()
    calls = 0
    real = codec._encode_any

    def counting(value):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real(value)

    monkeypatch.setattr("shoal.store.memory.encode", counting)
    store.save()
    assert calls == 0


async def test_snapshot_reads_back_as_the_state() -> None:
    store = await filled_store()
    data = store.save()
    # The same document as encoding every object now.
    objects = {k: [codec.encode(o) for o in objs.values()] for k, objs in store._tables.objs.items()}
    assert orjson.loads(data) == {"format": 1, "version": store.version, "objects": objects}
    other = MemoryStore(MemoryProposer(), SystemClock())
    other.restore(data, store.applied_index)
    for kind in store._tables.objs:
        assert other.view().all(kind) == store.view().all(kind)
    assert {t.id for t in other.view().tasks(service_id="s1")} == {"t0", "t1", "t3", "t4", "t9"}


async def test_a_replica_without_the_encodings_snapshots_the_same() -> None:
    """A follower applies entries it decoded (it keeps no encodings): its snapshot is the leader's document."""
    leader = await filled_store()
    proposer = leader.proposer
    assert isinstance(proposer, MemoryProposer)
    follower = MemoryStore(MemoryProposer(), SystemClock())
    for i, entry in enumerate(proposer.entries, 1):
        decode_entry(entry)  # what a follower reads
        follower.apply_entry(i, entry)
    assert not any(follower._tables.enc.values())
    assert orjson.loads(follower.save()) == orjson.loads(leader.save())
