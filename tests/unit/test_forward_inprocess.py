"""The leader runs a forwarded write in process (`InProcessAPI`) and answers exactly what its socket answers: the
same middlewares, version check, routing and error translation, the body, query and headers the client sent."""

from __future__ import annotations

import json
import random
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shoal.clock import SystemClock
from shoal.engineapi.engine_client import EngineClient
from shoal.engineapi.forward import FORWARDED_HEADER, Forwarder
from shoal.engineapi.proxy import EngineProxy
from shoal.engineapi.server import InProcessAPI, errors_middleware, make_app
from shoal.errors import InvalidArgument, ShoalError
from shoal.node import NodeConfig, ShoalNode
from shoal.rpc import shoal_pb2 as pb

Answer = tuple[int, str, bytes]  # status, Content-Type, body


async def both(app: web.Application, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[Answer, Answer]:
    """The answer on a socket and the answer in process."""
    async with TestServer(app) as server, aiohttp.ClientSession() as client, \
            client.request(method, server.make_url(path), headers=headers, data=body) as r:
        on_socket = (r.status, r.headers.get("Content-Type", ""), await r.read())
    status, hdrs, data = await InProcessAPI(app).run(method, path, headers, body, "m2")
    return on_socket, (status, hdrs.get("Content-Type", ""), data)


async def test_engine_api_answers_in_process_as_on_its_socket(tmp_path: Path) -> None:
    node = ShoalNode(NodeConfig(data_dir=tmp_path), SystemClock(), random.Random(1))  # not in a swarm
    app = make_app(node, EngineProxy(None), EngineClient(None))
    body = json.dumps({"Name": "c1", "Data": "eA=="}).encode()
    hdrs = {"Content-Type": "application/json", FORWARDED_HEADER: "n2"}
    for method, path in (("POST", "/v1.43/configs/create"),  # not a manager: 503 in dockerd's words
                         ("POST", "/v9.99/configs/create"),  # too new a version
                         ("POST", "/v1/configs/create"),  # a prefix dockerd has no page for
                         ("DELETE", "/v1.43/secrets/abc"),
                         ("POST", "/v1.43/services/abc/update?version=x"),
                         ("POST", "/v1.43/configs/nothing/here")):
        on_socket, in_process = await both(app, method, path, hdrs, body)
        assert in_process == on_socket, (method, path)
        assert on_socket[0] >= 400 and b"message" in on_socket[2]


async def echo(request: web.Request) -> web.Response:
    if request.query.get("fail"):
        raise InvalidArgument("bad thing")  # a ShoalError: the errors middleware answers it
    return web.json_response({"path": request.path, "query": dict(request.query), "body": await request.json(),
                              "auth": request.headers.get("X-Registry-Auth"), "remote": request.remote is not None},
                             status=201)


async def text(request: web.Request) -> web.Response:
    return web.Response(text=(await request.read()).decode()[::-1], status=200)


async def test_body_query_headers_and_errors_reach_the_handler_as_on_the_socket() -> None:
    app = web.Application(middlewares=[errors_middleware])
    app.router.add_post("/things/create", echo)
    app.router.add_post("/things/text", text)
    hdrs = {"Content-Type": "application/json", "X-Registry-Auth": "e30="}
    body = json.dumps({"Name": "x" * 200_000}).encode()  # past the payload's flow-control mark
    on_socket, in_process = await both(app, "POST", "/things/create?a=1&b=two", hdrs, body)
    assert in_process == on_socket and on_socket[0] == 201
    got = json.loads(in_process[2])
    assert got["query"] == {"a": "1", "b": "two"} and got["auth"] == "e30=" and got["body"]["Name"] == "x" * 200_000
    assert await both(app, "POST", "/things/create?fail=1", hdrs, b"{}") == ((400, "application/json",
                                                                          b'{"message":"bad thing"}\n'),) * 2
    on_socket, in_process = await both(app, "POST", "/things/text", {}, b"abc")
    assert in_process == on_socket == (200, "text/plain; charset=utf-8", b"cba")
    on_socket, in_process = await both(app, "DELETE", "/things/create", {}, b"")  # aiohttp's own 405
    assert in_process[0] == on_socket[0] == 405


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def run(self, method: str, path: str, headers: dict[str, str], body: bytes,
                  peer: str) -> tuple[int, dict[str, str], bytes]:
        self.calls.append((method, path, peer))
        return 201, {"Content-Type": "application/json", "Content-Length": "999", "Connection": "close"}, b'{"ID":"x"}'


async def test_the_leader_runs_a_forwarded_write_in_process_and_a_read_on_its_socket() -> None:
    local = Recorder()
    fwd = Forwarder(node_id="n1", leader_addr=lambda: "", no_leader="no leader", secure=None,  # type: ignore[arg-type]
                    credentials=lambda: ("", "", ""), leading=lambda: True, not_leader=lambda: Exception("no"),
                    api_socket=None, local_api=lambda: local)
    req = pb.ForwardRequest(method="POST", path="/v1.43/configs/create", body=b"{}")
    req.headers[FORWARDED_HEADER] = "n2"
    chunks = [c async for c in fwd.serve(req)]
    assert local.calls == [("POST", "/v1.43/configs/create", "n2")]
    assert len(chunks) == 1 and chunks[0].status == 201 and chunks[0].data == b'{"ID":"x"}'
    # The body's own length, and no hop-by-hop header of the answer.
    assert dict(chunks[0].headers) == {"Content-Type": "application/json", "Content-Length": "10"}
    with pytest.raises(ShoalError, match="no Engine API socket"):  # a read is not run in process
        [c async for c in fwd.serve(pb.ForwardRequest(method="GET", path="/v1.43/configs"))]
    assert len(local.calls) == 1
