"""Task status reports that come together are written in transactions of at most MAX_REPORTS_PER_WRITE each:
thousands of tasks starting at once (a new leader, a large service) must not make one log entry too large to
replicate. Every report is written, and the caller hears once all are."""

from __future__ import annotations

import pytest

from shoal.manager import dispatcher as dispatcher_module
from shoal.model.objects import Node, NodeDescription, NodeStatus, Task, TaskStatus
from shoal.model.state import TaskState
from shoal.store.memory import Tx
from tests.support.dispatcher import running_dispatcher

TASKS = 7


async def test_many_reports_are_written_in_bounded_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatcher_module, "MAX_REPORTS_PER_WRITE", 3)

    def seed(tx: Tx) -> None:
        tx.create(Node(id="n1", status=NodeStatus(state="unknown")))
        for i in range(TASKS):
            tx.create(Task(id=f"t{i}", service_id="s1", node_id="n1", slot=i + 1,
                           status=TaskStatus(state=TaskState.ASSIGNED), desired_state=TaskState.RUNNING))

    async with running_dispatcher(seed) as (_clock, store, d):
        await d.register("n1", NodeDescription(hostname="n1"), "")
        before = store.stats["transactions"]
        await d.update_task_status("n1", [(f"t{i}", TaskStatus(state=TaskState.RUNNING)) for i in range(TASKS)])
        assert store.stats["transactions"] - before == 3  # 3 + 3 + 1 reports
        assert {t.status.state for t in store.view().tasks(node_id="n1")} == {TaskState.RUNNING}
