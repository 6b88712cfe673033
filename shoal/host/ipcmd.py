"""iproute2, nft and util-linux commands, run asynchronously, optionally inside a network namespace.

Shoal drives the kernel through the stock tools rather than a netlink library: `ip`, `bridge` and `nft` are on
every host that has namespaces, one code path serves the host namespace and any other (`nsenter --net=PATH`),
many changes go in one process (`ip -batch -`, `nft -f -`), and there is no extra dependency. Namespaces are
files (bind mounts of `/proc/<pid>/ns/net`) under Shoal's own data directory, never names in /run/netns, so two
nodes on one machine never collide and a node's namespaces go away with its data directory's mounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from shoal.errors import TemporaryError

log = logging.getLogger(__name__)


class CommandFailed(TemporaryError):
    pass


def _wrap(argv: list[str], netns: str | None) -> list[str]:
    return ["nsenter", f"--net={netns}", "--", *argv] if netns else argv


async def run(*argv: str, netns: str | None = None, input: str | None = None, check: bool = True,
              timeout: float = 30.0) -> str:
    """Run a command (in `netns` when given); its stdout. Raises CommandFailed with its stderr."""
    cmd = _wrap(list(argv), netns)
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(input.encode() if input is not None else None), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise CommandFailed(f"{' '.join(cmd)}: timed out") from None
    if check and proc.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


async def ip_batch(lines: list[str], netns: str | None = None, tool: str = "ip") -> None:
    """Several `ip` (or `bridge`) commands in one process; every line is tried (`-force`), the first error
    is raised after."""
    if lines:
        await run(tool, "-force", "-batch", "-", netns=netns, input="\n".join(lines) + "\n")


async def create_netns(path: Path) -> None:
    """A new network namespace held by a bind mount at `path` (nothing when one is there already)."""
    if is_netns(path):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)
    await run("unshare", f"--net={path}", "true")
    await run("ip", "link", "set", "lo", "up", netns=str(path))


def is_netns(path: Path) -> bool:
    """Is a namespace bound at `path`? (a bind-mounted nsfs file is on another device than its directory)"""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except OSError:
        return False


async def delete_netns(path: Path) -> None:
    """Unbind the namespace at `path`: the kernel frees it, with every virtual device in it, once no process
    runs inside."""
    if is_netns(path):
        await run("umount", str(path), check=False)
        if is_netns(path):
            await run("umount", "-l", str(path), check=False)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def nft(script: str, netns: str | None = None) -> None:
    await run("nft", "-f", "-", netns=netns, input=script)
