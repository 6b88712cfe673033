"""Small JSON calls to the node's local Docker Engine, for endpoints Shoal merges with its own answers
(`/info`, `GET /networks`) or forwards after reading the body (`POST /networks/create`)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from shoal.errors import Unavailable


class EngineClient:
    def __init__(self, engine_host: str | None) -> None:
        self.engine_host = engine_host
        self._session: aiohttp.ClientSession | None = None
        self._base = "http://docker"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            assert self.engine_host is not None
            if self.engine_host.startswith("unix://"):
                conn: aiohttp.BaseConnector = aiohttp.UnixConnector(path=self.engine_host[len("unix://"):])
            else:
                conn = aiohttp.TCPConnector()
                self._base = "http://" + self.engine_host.split("://", 1)[-1]
            self._session = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def get_json(self, path: str, query: dict[str, str] | None = None) -> Any:
        if self.engine_host is None:
            raise Unavailable("no local engine")
        try:
            async with self._get_session().get(self._base + path, params=query) as r:
                if r.status >= 400:
                    raise Unavailable(f"engine answered {r.status}")
                return await r.json()
        except aiohttp.ClientError as e:
            raise Unavailable(f"local engine unreachable: {e}") from None

    async def forward_json(self, request: web.Request, body: Any) -> web.Response:
        if self.engine_host is None:
            from shoal.engineapi.proxy import NO_ENGINE_MESSAGE, NO_ENGINE_STATUS
            from shoal.engineapi.server import error_response

            return error_response(NO_ENGINE_STATUS, NO_ENGINE_MESSAGE)
        # Unversioned: the engine's own (newest) API version, as the proxy lowers a client's newer one to it;
        # the client's /v1.47 prefix would be refused by an older engine ("client version 1.47 is too new").
        path = re.sub(r"^/v\d+\.\d+(?=/)", "", request.path)
        try:
            async with self._get_session().request(request.method, self._base + path,
                                                   params=request.query, json=body) as r:
                data = await r.read()
                return web.Response(body=data, status=r.status,
                                    content_type=r.headers.get("Content-Type", "application/json").split(";")[0])
        except aiohttp.ClientError as e:
            raise Unavailable(f"local engine unreachable: {e}") from None

    async def stream_lines(self, path: str, query: Mapping[str, str]) -> AsyncIterator[bytes]:
        """The engine's newline-delimited answer to GET `path` (a stream such as /events), line by line, with no
        overall time limit. A refusal raises Unavailable."""
        if self.engine_host is None:
            raise Unavailable("no local engine")
        try:
            async with self._get_session().get(self._base + path, params=query,
                                               timeout=aiohttp.ClientTimeout(total=None)) as r:
                if r.status >= 400:
                    raise Unavailable(f"engine answered {r.status}: {(await r.read())[:200]!r}")
                async for line in r.content:
                    if line.strip():
                        yield line
        except aiohttp.ClientError as e:
            raise Unavailable(f"local engine unreachable: {e}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
