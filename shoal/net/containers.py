"""The docker executor's containers in the network agent: their engine endpoints, and their namespaces.

A container's namespace is held by a handle of its own (`<root>/ns/c-<task>`, bound from the namespace opened
with a pidfd of the container's process, see shoal.host.nsutil), never reached through `/proc/<pid>`: a pid
names another process once the container's is reaped, possibly in the node's own namespace. VIP rules go into
it once the container runs; until then the gateway DNS holds its answers to it (shoal.net.engine). The handle
is let go when the container stops or its task ends.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import FatalError, TemporaryError
from shoal.host import ipcmd, nsutil
from shoal.model.objects import Network, Task
from shoal.net.links import ip_of
from shoal.net.overlay import Overlays
from shoal.net.shared import DNS_ADDR, NO_NS, Box, Shared
from shoal.net.vips import VipRules

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ContainerNetworks:
    """What the docker executor connects a container to: (engine network name, IPv4 address, aliases) in
    order (the first one at create), and the resolv.conf to bind over /etc/resolv.conf."""

    endpoints: tuple[tuple[str, str, tuple[str, ...]], ...]
    resolv_conf: str


class Containers:
    """Sandboxes of containers (`Box.container`): made at attach, their namespaces held while they run. Every
    method runs under the shared lock."""

    def __init__(self, shared: Shared, overlays: Overlays, vips: VipRules) -> None:
        self.shared = shared
        self.overlays = overlays
        self.vips = vips

    async def attach(self, task: Task, nets: list[Network]) -> ContainerNetworks:
        """Engine networks for the task's overlays `nets` (made when missing) and how to connect its container."""
        shared = self.shared
        eps: list[tuple[str, str, tuple[str, ...]]] = []
        dns_ip = ""
        for att, net in zip(task.networks, nets, strict=True):
            try:
                ln = await self.overlays.ensure(net)
            except FatalError as e:  # the task is rejected with it: one line here, no traceback anywhere
                log.warning("task %s cannot attach to network %s: %s", task.id, net.name, e.message)
                raise
            if not att.addresses:
                raise TemporaryError(f"task {task.id} has no address on network {net.name}")
            eps.append((ln.engine_name, ip_of(att.addresses[0]), ()))
            if not dns_ip and not net.spec.ingress:
                dns_ip = ln.gateway
        resolv = shared.resolv(task.id)
        resolv.write_text(f"nameserver {dns_ip or DNS_ADDR}\noptions ndots:0\n")
        box = Box(task.id, NO_NS, [n.id for n in nets], list(eps[i][1] for i in range(len(eps))), container=True)
        shared.boxes.setdefault(task.id, box)
        for ip in box.addrs:
            shared.by_ip[ip] = shared.boxes[task.id]
        return ContainerNetworks(endpoints=tuple(eps), resolv_conf=str(resolv))

    async def started(self, task: Task, pid: int, still_running: Callable[[], Awaitable[bool]] | None) -> None:
        """The container runs (`pid`): hold its namespace, then its VIP rules in it."""
        shared = self.shared
        box = shared.boxes.get(task.id)
        if box is None:
            box = Box(task.id, NO_NS, [a.network_id for a in task.networks],
                      [ip_of(a.addresses[0]) for a in task.networks if a.addresses], container=True)
            shared.boxes[task.id] = box
            shared.index(box)
            for nid in box.networks:
                net = shared.state.networks.get(nid)
                if net is not None:
                    await self.overlays.ensure(net)
        if box.seen and task.id not in shared.state.tasks:
            return  # ended meanwhile
        if (box.pid == pid and ipcmd.is_netns(box.ns)) or await self.hold_netns(box, pid, still_running):
            await self.vips.program(box)

    async def stopped(self, task_id: str) -> None:
        """The task's container exited: let its namespace go (a task's container never starts again)."""
        box = self.shared.boxes.get(task_id)
        if box is not None and box.container:
            await self.release_netns(box)
            box.rules_in.set()

    def handle(self, key: str) -> Path:
        """Where the namespace of the container of task (or plain container key) `key` is held."""
        return self.shared.ns_dir / f"c-{key}"

    async def hold_netns(self, box: Box, pid: int, still_running: Callable[[], Awaitable[bool]] | None) -> bool:
        """Hold the namespace of the container `box` stands for by a handle of our own: the one of process
        `pid`, if after opening it (with a pidfd) `still_running()` says `pid` is the container's and the
        pidfd's process has not been reaped since (so it is that process). A former handle is let go first.
        False (nothing held, nothing programmed) when the process is gone or not the container's."""
        await self.release_netns(box)
        handle = self.handle(box.task_id)
        try:
            pidfd, nsfd = nsutil.open_netns_of(pid)
        except OSError as e:
            log.info("sandbox %s: process %d is gone (%s); no VIP rules", box.task_id, pid, e.strerror)
            return False
        try:
            if still_running is not None and not await still_running():
                log.info("sandbox %s: process %d is no longer the container's; no VIP rules", box.task_id, pid)
                return False
            if not nsutil.alive(pidfd):
                log.info("sandbox %s: process %d ended; no VIP rules", box.task_id, pid)
                return False
            handle.touch(exist_ok=True)
            nsutil.bind_fd(nsfd, str(handle))
        except OSError as e:
            handle.unlink(missing_ok=True)
            log.warning("sandbox %s: cannot hold the namespace of process %d: %s", box.task_id, pid, e)
            return False
        finally:
            os.close(nsfd)
            os.close(pidfd)
        box.ns, box.nft_script, box.pid = handle, "", pid
        return True

    async def release_netns(self, box: Box) -> None:
        """Let go of a container's namespace handle (the kernel frees the namespace once nothing else holds
        it); its rules are written again if it is held anew."""
        await ipcmd.delete_netns(self.handle(box.task_id))
        box.ns, box.nft_script, box.pid = NO_NS, "", 0
