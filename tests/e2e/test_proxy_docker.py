"""The stock docker CLI through EngineProxy to a real dockerd: ps, run, logs -f, exec -i, run -i, cp, rm.

The proxy runs in-process on a unix socket. Like Shoal, the test app answers /_ping itself and announces a
newer API version (the CLI's own, 1.50) than dockerd 20.10 supports (1.41): every call the CLI then makes
is /v1.50/..., which only works because the proxy lowers the prefix to the engine's version.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from shoal.engineapi.proxy import EngineProxy

pytestmark = pytest.mark.e2e

ANNOUNCED_API_VERSION = "1.50"


@pytest.fixture
async def proxy_host(dockerd: str) -> AsyncIterator[str]:
    tmp = tempfile.mkdtemp(prefix="pxe", dir="/tmp")
    proxy = EngineProxy(dockerd)

    async def ping(request: web.Request) -> web.Response:
        return web.Response(
            text="OK",
            headers={"Api-Version": ANNOUNCED_API_VERSION, "Ostype": "linux", "Cache-Control": "no-cache"},
        )

    app = web.Application()
    app.router.add_route("*", "/_ping", ping)
    app.router.add_route("*", "/{v:v[0-9.]+}/_ping", ping)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = f"{tmp}/shoal.sock"
    await web.UnixSite(runner, sock).start()
    try:
        yield f"unix://{sock}"
    finally:
        await proxy.close()
        await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def _env(host: str, config_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=host, DOCKER_CONFIG=config_dir, DOCKER_CLI_HINTS="false")
    return env


async def _docker(host: str, *args: str, stdin: bytes | None = None, timeout: float = 60) -> tuple[int, str]:
    config = tempfile.mkdtemp(prefix="pxc", dir="/tmp")
    try:
        proc = await asyncio.create_subprocess_exec(
            "docker",
            *args,
            env=_env(host, config),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")
    finally:
        shutil.rmtree(config, ignore_errors=True)


async def _ok(host: str, *args: str, stdin: bytes | None = None) -> str:
    rc, out = await _docker(host, *args, stdin=stdin)
    assert rc == 0, f"docker {' '.join(args)} -> {rc}: {out}"
    return out


async def test_docker_cli_through_proxy(proxy_host: str, test_image: str) -> None:
    host = proxy_host
    name = f"shoal-px-{uuid.uuid4().hex[:8]}"
    assert "CONTAINER ID" in await _ok(host, "ps")
    # A container that prints, then blocks on a fifo until an exec writes to it, then prints and exits.
    cid = (
        await _ok(
            host,
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            test_image,
            "sh",
            "-c",
            "mkfifo /f; echo start; cat /f; echo done",
        )
    ).strip()
    try:
        assert name in await _ok(host, "ps", "--format", "{{.Names}}")

        # exec with stdin piped: the hijacked stream, CloseWrite after stdin EOF, output still flows back.
        assert await _ok(host, "exec", "-i", name, "cat", stdin=b"hi\n") == "hi\n"

        # docker cp both ways (PUT archive streams a tar upload; HEAD/GET archive).
        tmp = Path(tempfile.mkdtemp(prefix="pxf", dir="/tmp"))
        try:
            src = tmp / "payload.txt"
            src.write_bytes(b"copied through shoal\n" * 1000)
            await _ok(host, "cp", str(src), f"{name}:/payload.txt")
            await _ok(host, "cp", f"{name}:/payload.txt", str(tmp / "back.txt"))
            assert (tmp / "back.txt").read_bytes() == src.read_bytes()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

        # logs -f streams: "start" arrives while the container still runs; it ends when the container exits.
        config = tempfile.mkdtemp(prefix="pxc", dir="/tmp")
        logs = await asyncio.create_subprocess_exec(
            "docker",
            "logs",
            "-f",
            name,
            env=_env(host, config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert logs.stdout is not None
            assert await asyncio.wait_for(logs.stdout.readline(), 60) == b"start\n"
            await _ok(host, "exec", name, "sh", "-c", "echo released > /f")
            rest = await asyncio.wait_for(logs.stdout.read(), 60)
            assert rest == b"released\ndone\n"
            assert await asyncio.wait_for(logs.wait(), 60) == 0
        finally:
            if logs.returncode is None:
                logs.kill()
                await logs.wait()
            shutil.rmtree(config, ignore_errors=True)
        assert (await _ok(host, "wait", name)).strip() == "0"
    finally:
        await _ok(host, "rm", "-f", cid)
    assert name not in await _ok(host, "ps", "-a", "--format", "{{.Names}}")


async def test_docker_run_interactive_rm(proxy_host: str, test_image: str) -> None:
    # attach (hijacked, before start) + stdin + half-close + --rm.
    out = await _ok(proxy_host, "run", "--rm", "-i", "--network", "none", test_image, "cat", stdin=b"hello\nworld\n")
    assert out == "hello\nworld\n"


async def test_docker_image_save_streams(proxy_host: str, test_image: str) -> None:
    # A large streamed response (image tarball) arrives intact.
    rc, _ = await _docker(proxy_host, "image", "inspect", test_image)
    assert rc == 0
    config = tempfile.mkdtemp(prefix="pxc", dir="/tmp")
    try:
        proc = await asyncio.create_subprocess_exec(
            "docker",
            "save",
            test_image,
            env=_env(proxy_host, config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err
    finally:
        shutil.rmtree(config, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        assert "manifest.json" in tar.getnames()
