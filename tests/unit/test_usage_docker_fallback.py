"""The docker executor's usage reading against a fake engine (plain HTTP): a container whose main process this
host cannot see is measured through the engine's one-shot statistics; a stopped one is not measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from shoal.agent.exec.container import LABEL_TASK_ID
from shoal.agent.exec.docker import DockerExecutor
from shoal.agent.usage import RawUsage
from shoal.model.objects import Annotations, Task

UNSEEN_PID = 2**22 + 12345  # above any pid_max this host allows: no /proc entry


class FakeEngine:
    def __init__(self) -> None:
        self.running = True
        self.stats_calls: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/version", self.version)  # aiodocker asks which API version to speak
        app.router.add_get("/{ver}/containers/{ref}/json", self.inspect)
        app.router.add_get("/containers/{ref}/json", self.inspect)
        app.router.add_get("/{ver}/containers/{ref}/stats", self.stats)
        app.router.add_get("/containers/{ref}/stats", self.stats)
        return app

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.47", "Version": "27.0.0"})

    async def inspect(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"Id": "c0ffee", "Config": {"Labels": {LABEL_TASK_ID: "t1"}},
                                "State": {"Running": self.running, "Pid": UNSEEN_PID if self.running else 0}}
        return web.json_response(body)

    async def stats(self, request: web.Request) -> web.Response:
        self.stats_calls.append(dict(request.query))
        return web.json_response({"cpu_stats": {"cpu_usage": {"total_usage": 7_500_000_000}},
                                  "memory_stats": {"usage": 9_000, "stats": {"inactive_file": 1_000}}})


async def test_usage_falls_back_to_the_engine_stats(tmp_path: Path) -> None:
    engine = FakeEngine()
    async with TestServer(engine.app()) as server:
        ex = DockerExecutor(engine_host=str(server.make_url("")).rstrip("/"), root=tmp_path, node_id="n1")
        task = Task(id="t1", node_id="n1", slot=1, service_annotations=Annotations(name="web"))
        ctlr = ex.controller(task, deps=None)  # type: ignore[arg-type]
        try:
            assert await ctlr.usage() == RawUsage(7.5, 8_000, "engine")
            assert engine.stats_calls == [{"stream": "false", "one-shot": "true"}]
            engine.running = False
            assert await ctlr.usage() is None
            assert len(engine.stats_calls) == 1
        finally:
            await ctlr.close()
            await ex.close()


async def test_usage_of_an_unreachable_engine_is_none(tmp_path: Path) -> None:
    ex = DockerExecutor(engine_host="unix:///nonexistent/docker.sock", root=tmp_path, node_id="n1")
    ctlr = ex.controller(Task(id="t1", node_id="n1"), deps=None)  # type: ignore[arg-type]
    try:
        assert await ctlr.usage() is None  # never raises: no reading this time
    finally:
        await ctlr.close()
        await ex.close()
