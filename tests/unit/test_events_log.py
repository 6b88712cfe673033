"""The events' retained window: replay by time, persisted across a restart, bounded on disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

import pytest

from shoal.clock import SystemClock
from shoal.manager.events import EventLog
from shoal.model.objects import Annotations, Secret, SecretSpec
from shoal.store.memory import Event
from shoal.testing.sim import memory_store
from tests.support.wait import eventually


def secret(i: int) -> Secret:
    return Secret(id=f"id{i}", spec=SecretSpec(annotations=Annotations(name=f"s{i}")))


def test_window_survives_restart_and_file_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "raft" / "events.jsonl"
    log = EventLog(None, SystemClock(), retain=5, path=path)  # type: ignore[arg-type]
    for i in range(23):
        log._publish(Event(action="create", kind="secret", obj=secret(i)))
    log.close()
    names = [m["Actor"]["Attributes"]["name"] for m in log.window]
    assert names == [f"s{i}" for i in range(18, 23)]
    assert len(path.read_text().splitlines()) <= 10  # compacted at twice the window
    with path.open("a") as f:
        f.write('{"torn')  # a line cut by a crash is skipped
    again = EventLog(None, SystemClock(), retain=5, path=path)  # type: ignore[arg-type]
    assert list(again.window) == list(log.window)
    again._publish(Event(action="remove", kind="secret", obj=secret(22)))
    again.close()
    third = EventLog(None, SystemClock(), retain=5, path=path)  # type: ignore[arg-type]
    assert [m["Action"] for m in third.window][-1] == "remove" and len(third.window) == 5


def test_a_full_disk_is_warned_once_and_writing_resumes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "raft" / "events.jsonl"
    log = EventLog(None, SystemClock(), retain=50, path=path)  # type: ignore[arg-type]
    log._publish(Event(action="create", kind="secret", obj=secret(0)))
    log.close()
    log.path = Path("/dev/full")  # every write fails with ENOSPC, as on a full disk
    with caplog.at_level(logging.INFO, logger="shoal.manager.events"):
        for i in range(1, 30):
            log._publish(Event(action="create", kind="secret", obj=secret(i)))
            log.flush()  # as at each commit
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        log.path = path  # space again
        log._publish(Event(action="create", kind="secret", obj=secret(30)))
        log.flush()
    log.close()
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert len(log.window) == 31  # nothing lost from memory meanwhile
    names = [ln for ln in path.read_text().splitlines() if ln]
    assert len(names) == 2 and '"s30"' in names[-1]


async def test_the_events_of_each_commit_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "raft" / "events.jsonl"
    store = memory_store(SystemClock())
    log = EventLog(store, SystemClock(), path=path)
    runner = asyncio.ensure_future(log.run())  # subscribes before the first commit below is applied
    try:
        await store.update(lambda tx: (tx.create(secret(1)), tx.create(secret(2))))
        await store.update(lambda tx: tx.delete("secret", "id1"))

        def written() -> list[tuple[str, str]]:
            lines = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
            return [(m["Action"], m["Actor"]["Attributes"]["name"]) for m in lines]

        await eventually(lambda: written() == [("create", "s1"), ("create", "s2"), ("remove", "s1")],
                         what="three events in the file")
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
