"""A node's assignment stream carries exactly the secrets and configs its tasks still need: sent when the first
task needing one arrives (or when it changes), withdrawn when the last task needing it ends or leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from shoal.api.dispatch import COMPLETE, INCREMENTAL, Assignments
from shoal.manager.dispatcher import Dispatcher
from shoal.model.objects import (
    Annotations,
    Config,
    ConfigReference,
    ConfigSpec,
    ContainerSpec,
    Node,
    NodeDescription,
    NodeStatus,
    Secret,
    SecretReference,
    SecretSpec,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.model.state import TaskState
from shoal.store.memory import MemoryStore, Tx
from shoal.testing.clock import VirtualClock
from tests.support.dispatcher import running_dispatcher


def task(tid: str, secrets: tuple[str, ...] = (), configs: tuple[str, ...] = ()) -> Task:
    spec = TaskSpec(container=ContainerSpec(
        image="busybox",
        secrets=tuple(SecretReference(secret_id=s, secret_name=s) for s in secrets),
        configs=tuple(ConfigReference(config_id=c, config_name=c) for c in configs)))
    return Task(id=tid, spec=spec, node_id="n1", status=TaskStatus(state=TaskState.ASSIGNED))


def seed(tx: Tx) -> None:
    tx.create(Node(id="n1", status=NodeStatus(state="unknown")))
    for s in ("s1", "s2"):
        tx.create(Secret(id=s, spec=SecretSpec(annotations=Annotations(name=s), data=b"x")))
    tx.create(Config(id="c1", spec=ConfigSpec(annotations=Annotations(name="c1"), data=b"y")))
    tx.create(task("a", secrets=("s1", "s2"), configs=("c1",)))
    tx.create(task("b", secrets=("s1",)))


@pytest.fixture
async def env() -> AsyncIterator[tuple[VirtualClock, MemoryStore, Dispatcher]]:
    async with running_dispatcher(seed) as e:
        yield e


def ids(objs: tuple[Secret, ...] | tuple[Config, ...]) -> set[str]:
    return {o.id for o in objs}


async def test_secrets_and_configs_follow_the_tasks_that_need_them(
        env: tuple[VirtualClock, MemoryStore, Dispatcher]) -> None:
    _, store, d = env
    await d.register("n1", NodeDescription(hostname="n1"), "")
    stream = d.assignments("n1")

    async def next_msg() -> Assignments:
        return await asyncio.wait_for(stream.__anext__(), 5)

    first = await next_msg()
    assert first.type == COMPLETE
    assert {t.id for t in first.tasks} == {"a", "b"}
    assert ids(first.secrets) == {"s1", "s2"} and ids(first.configs) == {"c1"}

    # a finishes for good: s2 and c1 were only its own; s1 is still b's.
    def finish_a(tx):  # type: ignore[no-untyped-def]
        a = tx.get("task", "a")
        tx.update(replace(a, status=TaskStatus(state=TaskState.COMPLETE), desired_state=TaskState.SHUTDOWN))

    await store.update(finish_a)
    msg = await next_msg()
    assert msg.type == INCREMENTAL and [t.id for t in msg.tasks] == ["a"]
    assert set(msg.removed_secrets) == {"s2"} and set(msg.removed_configs) == {"c1"}
    assert msg.secrets == () and msg.configs == ()

    # A changed secret is sent again to the node whose tasks use it.
    await store.update(lambda tx: tx.update(replace(tx.get("secret", "s1"),
                                                    spec=SecretSpec(annotations=Annotations(name="s1"),
                                                                    data=b"z"))))
    msg = await next_msg()
    assert ids(msg.secrets) == {"s1"} and msg.removed_secrets == ()

    # b is removed: s1 goes with it. A new task needing s2 brings s2 back.
    await store.update(lambda tx: tx.delete("task", "b"))
    msg = await next_msg()
    assert msg.removed_tasks == ("b",) and set(msg.removed_secrets) == {"s1"}
    await store.update(lambda tx: tx.create(task("c", secrets=("s2", "s2"))))
    msg = await next_msg()
    assert [t.id for t in msg.tasks] == ["c"] and ids(msg.secrets) == {"s2"}
    await stream.aclose()
