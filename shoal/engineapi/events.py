"""`GET /events` on a manager with a local engine: the swarm's events merged with the engine's own, as a
Swarm node's dockerd shows both (container create/start/die of the node's tasks beside service updates).

The engine's stream is asked with the client's own query (dockerd knows every filter key), so a filter on
swarm kinds simply yields no engine event. With `until` both streams end: their events are sent in time
order. Without it they are interleaved as they arrive. An engine that cannot be reached leaves the swarm's
events flowing (logged once).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from shoal.engineapi.engine_client import EngineClient

log = logging.getLogger(__name__)

_DONE = b""


async def merged_events(request: web.Request, swarm: AsyncIterator[dict[str, Any]],
                        keep: Callable[[dict[str, Any]], bool], engine: EngineClient,
                        bounded: bool) -> web.StreamResponse:
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(maxsize=1024)

    async def from_swarm() -> None:
        try:
            async for msg in swarm:
                if keep(msg):
                    await queue.put((int(msg.get("timeNano", 0)), json.dumps(msg).encode() + b"\n"))
        finally:
            await queue.put((0, _DONE))

    async def from_engine() -> None:
        try:
            async for line in engine.stream_lines("/events", request.query):
                try:
                    t = int(json.loads(line).get("timeNano", 0))
                except (ValueError, AttributeError):
                    continue
                await queue.put((t, line.rstrip(b"\n") + b"\n"))
        except Exception as e:  # the swarm's events go on without the engine's
            log.warning("the local engine's events are not available: %s", e)
        finally:
            await queue.put((0, _DONE))

    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    tasks = [asyncio.create_task(from_swarm(), name="events-swarm"),
             asyncio.create_task(from_engine(), name="events-engine")]
    try:
        open_streams, held = len(tasks), []
        while open_streams:
            t, line = await queue.get()
            if line == _DONE:
                open_streams -= 1
            elif bounded:
                held.append((t, line))
            else:
                await resp.write(line)
        for _, line in sorted(held, key=lambda e: e[0]):
            await resp.write(line)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await resp.write_eof()
    return resp
