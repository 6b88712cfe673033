"""Swarm-scope events for `/events`: service, node, secret, config and network create/update/remove.

Events are derived from store changes and kept in a retained window (10,000 by default, well beyond
dockerd's 256) so `docker events --since` can replay them; live subscribers get each new event.

With a `path`, the window also survives a restart: each event is appended to a JSON-lines file, the events of
one commit in one write (at its `Commit` marker; no fsync: losing the last events of a crash is acceptable, the
store is the truth), read back at startup, and the file is rewritten from the window once it holds twice as
many lines, so it stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from shoal.clock import Clock
from shoal.manager.autoscale import LABEL_DECISION as AUTOSCALE_DECISION
from shoal.manager.cron.loop import cron_attrs
from shoal.store.memory import Event, MemoryStore, WatchOverflow, name_of

KINDS = ("service", "node", "secret", "config", "network")

log = logging.getLogger(__name__)


def _attrs(ev: Event) -> dict[str, str]:
    obj = ev.obj
    attrs = {"name": name_of(obj)}
    old = ev.old
    if ev.action != "update" or old is None:
        return attrs
    if ev.kind == "service":
        o_spec, n_spec = old.spec, obj.spec
        oi, ni = o_spec.task_template.container.image, n_spec.task_template.container.image
        if oi != ni:
            attrs.update({"image.old": oi, "image.new": ni})
        if o_spec.mode.replicas != n_spec.mode.replicas and n_spec.mode.kind == "replicated":
            attrs.update({"replicas.old": str(o_spec.mode.replicas), "replicas.new": str(n_spec.mode.replicas)})
        decision = n_spec.annotations.labels.get(AUTOSCALE_DECISION)
        if decision is not None and decision != o_spec.annotations.labels.get(AUTOSCALE_DECISION):
            attrs["autoscale.decision"] = decision
        attrs.update(cron_attrs(old, obj))
        ou = old.update_status.state if old.update_status else ""
        nu = obj.update_status.state if obj.update_status else ""
        if ou != nu:
            # dockerd sets each attribute only when that side has an update status
            if ou:
                attrs["updatestate.old"] = ou
            if nu:
                attrs["updatestate.new"] = nu
    elif ev.kind == "node":
        if old.spec.availability != obj.spec.availability:
            attrs.update({"availability.old": old.spec.availability, "availability.new": obj.spec.availability})
        if old.spec.role != obj.spec.role:
            attrs.update({"role.old": old.spec.role, "role.new": obj.spec.role})
        if old.status.state != obj.status.state:
            attrs.update({"state.old": old.status.state, "state.new": obj.status.state})
    return attrs


def _is_noise(ev: Event) -> bool:
    """Updates a user did not cause and dockerd does not report (allocator/heartbeat bookkeeping)."""
    if ev.action != "update" or ev.old is None:
        return False
    if ev.kind == "node":
        return bool(ev.old.spec == ev.obj.spec and ev.old.status.state == ev.obj.status.state)
    if ev.kind == "service":
        return bool(ev.old.spec == ev.obj.spec and ev.old.update_status == ev.obj.update_status
                    and not cron_attrs(ev.old, ev.obj))
    return False


class EventLog:
    def __init__(self, store: MemoryStore, clock: Clock, retain: int = 10_000, path: Path | None = None) -> None:
        self.store = store
        self.clock = clock
        self.retain = retain
        self.window: deque[dict[str, Any]] = deque(maxlen=retain)
        self._subs: set[asyncio.Queue[dict[str, Any]]] = set()
        self.path = path
        self._file: IO[str] | None = None
        self._lines = 0
        self._failing = False  # the last write to the file failed
        if path is not None:
            self._load(path)

    # --- persistence ------------------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            with path.open(encoding="utf-8") as f:
                for raw in f:
                    self._lines += 1
                    try:
                        msg = json.loads(raw)
                    except ValueError:
                        continue  # a line torn by a crash
                    if isinstance(msg, dict) and "timeNano" in msg:
                        self.window.append(msg)
        except FileNotFoundError:
            pass
        except OSError:
            log.warning("cannot read the event log %s", path, exc_info=True)

    def _persist(self, msg: dict[str, Any]) -> None:
        if self.path is None:
            return
        try:
            if self._lines >= 2 * self.retain:
                self._compact(self.path)  # the window written out already ends with `msg`
                return
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
                if self._file.tell() > 0 and not self.path.read_bytes().endswith(b"\n"):
                    self._file.write("\n")  # end a line torn by a crash before appending
            self._file.write(json.dumps(msg) + "\n")  # buffered: `flush` writes it out with its commit's others
            self._lines += 1
        except OSError:
            self._write_failed()

    def flush(self) -> None:
        """Write out the events buffered since the last flush (one write for a commit's events: a write per
        event was a visible part of a manager's work under many small writes)."""
        if self._file is None:
            return
        try:
            self._file.flush()
            if self._failing:
                log.info("the event log %s is written again", self.path)
                self._failing = False
        except OSError:
            self._write_failed()

    def _write_failed(self) -> None:
        """In the handler of a write's OSError. One warning for a run of failures (a full disk fails every
        event), not one per event. The file is reopened for the next event, which ends a line the failure may
        have torn."""
        if not self._failing:
            log.warning("cannot write the event log %s (events are kept in memory; said once until a write "
                        "succeeds again)", self.path, exc_info=True)
            self._failing = True
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _compact(self, path: Path) -> None:
        self.close()
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for m in self.window:
                f.write(json.dumps(m) + "\n")
        os.replace(tmp, path)
        self._lines = len(self.window)

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()

    async def run(self) -> None:
        try:
            while True:
                sub = self.store.watch(kinds=KINDS)
                try:
                    async for item in sub:
                        if isinstance(item, Event):
                            if not _is_noise(item):
                                self._publish(item)
                        else:
                            self.flush()  # the commit's events, in one write
                except WatchOverflow:
                    continue
                finally:
                    sub.close()
        finally:
            self.close()

    def _publish(self, ev: Event) -> None:
        now = self.clock.now()
        msg = {
            "Type": ev.kind,
            "Action": ev.action,
            "Actor": {"ID": ev.obj.id, "Attributes": _attrs(ev)},
            "scope": "swarm",
            "time": int(now),
            "timeNano": int(now * 1e9),
        }
        self.window.append(msg)
        self._persist(msg)
        for q in list(self._subs):
            if q.qsize() < 10_000:
                q.put_nowait(msg)

    async def stream(self, since: float | None, until: float | None) -> AsyncIterator[dict[str, Any]]:
        """Replay from `since`, then follow live until `until` (if given)."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subs.add(q)
        replayed: set[int] = set()
        try:
            if since is not None:
                for msg in list(self.window):
                    if msg["timeNano"] >= since * 1e9 and (until is None or msg["timeNano"] <= until * 1e9):
                        replayed.add(id(msg))
                        yield msg
            while True:
                if until is not None:
                    remaining = until - self.clock.now()
                    if remaining <= 0:
                        return
                    try:
                        msg = await asyncio.wait_for(q.get(), remaining)
                    except TimeoutError:
                        return
                else:
                    msg = await q.get()
                if until is not None and msg["timeNano"] > until * 1e9:
                    return
                if id(msg) in replayed:
                    continue  # published while the replay was running: already sent
                yield msg
        finally:
            self._subs.discard(q)
