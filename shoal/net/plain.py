"""Plain containers on attachable swarm networks (`docker run --network <overlay>`), on a docker-executor node.

The Engine API endpoints that attach a container (container create, network connect/disconnect:
shoal.engineapi.attach) ask the leader for an address through `Attacher` (shoal.node.attacher), then hand the
container to the engine on the engine's bridge network that stands for the overlay (the one the docker
executor's tasks use), with that address. This module is the node's side of what follows, for as long as the
container exists:

- its sandbox in the network agent (`Box`, `container=True`): the gateway DNS answers it by its address,
  its VIP rules go into its namespace each time it starts (engine `start` events), held by a handle of the
  agent's own from then until it stops (`die`; see `NetworkAgent.hold_netns`);
- the address is held while the container exists (from create to destroy, also while it is stopped, so a
  restart finds it) and released when the engine reports it destroyed (`docker rm`, `--rm`), or disconnected;
- a record on disk (`<net root>/plain.json`: container -> attachments), so a restarted daemon finds its
  containers again and releases what belongs to containers that went while it was down, or to attachments
  no container ever received (a create that failed midway);
- the connects of a container that is not running, deferred as dockerd defers them (recorded, attached when
  the container starts through the API; `<net root>/plain-deferred.json`), dropped when it is destroyed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.api.attachments import LABEL_CONTAINER, is_attachment
from shoal.host import ipcmd
from shoal.model.objects import Network
from shoal.net.engine import engine_network_name
from shoal.net.links import ip_of
from shoal.net.shared import Box
from shoal.tasks import cancel_and_wait

if TYPE_CHECKING:
    from shoal.net.agent import NetworkAgent

log = logging.getLogger(__name__)

EVENTS = {"type": ["container", "network"], "event": ["start", "die", "destroy", "disconnect"]}


@dataclass
class Endpoint:
    """What the engine is given for one swarm network of a plain container."""

    network: Network
    engine_name: str
    address: str  # CIDR
    gateway: str


@dataclass
class _Record:
    container: str
    attachments: dict[str, tuple[str, str]] = field(default_factory=dict)  # attachment id -> (network id, CIDR)


class PlainContainers:
    def __init__(self, agent: NetworkAgent, release: Any = None) -> None:
        self.agent = agent
        self.release = release  # async (attachment id) -> None: the leader frees the address
        self.path = agent.root / "plain.json"
        self.deferred_path = agent.root / "plain-deferred.json"
        self.records: dict[str, _Record] = {}
        # container -> network id -> (the reference the client named, its endpoint config)
        self.deferred: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
        self.inflight: set[str] = set()  # container keys of a create/connect still under way (see `pending`)
        self._task: asyncio.Task[None] | None = None
        self._load()

    # --- records ------------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        for cid, atts in dict(raw).items():
            self.records[cid] = _Record(cid, {a: (str(v[0]), str(v[1])) for a, v in dict(atts).items()})
        with contextlib.suppress(OSError, ValueError, TypeError, IndexError):
            deferred = json.loads(self.deferred_path.read_text())
            self.deferred = {str(cid): {str(n): (str(v[0]), dict(v[1])) for n, v in dict(nets).items()}
                             for cid, nets in dict(deferred).items()}

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({cid: {a: list(v) for a, v in r.attachments.items()}
                                   for cid, r in self.records.items()}))
        tmp.replace(self.path)

    def _save_deferred(self) -> None:
        tmp = self.deferred_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({cid: {n: list(v) for n, v in nets.items()} for cid, nets in self.deferred.items()
                                   if nets}))
        tmp.replace(self.deferred_path)

    def defer(self, container: str, network_id: str, ref: str, config: dict[str, Any]) -> None:
        """Record a connect of a container that is not running (a second one to the same network replaces it,
        as in dockerd); `take_deferred` hands it over when the container starts."""
        self.deferred.setdefault(container, {})[network_id] = (ref, config)
        self._save_deferred()

    def undefer(self, container: str, network_id: str) -> bool:
        """Forget a deferred connect; False when there was none."""
        nets = self.deferred.get(container) or {}
        if nets.pop(network_id, None) is None:
            return False
        if not nets:
            self.deferred.pop(container, None)
        self._save_deferred()
        return True

    def deferred_of(self, container: str) -> dict[str, tuple[str, dict[str, Any]]]:
        return dict(self.deferred.get(container) or {})

    def _forget_deferred(self, container: str) -> None:
        if self.deferred.pop(container, None) is not None:
            self._save_deferred()

    @staticmethod
    def key(container: str) -> str:
        return f"ctr-{container}"

    def engine_name(self, net: Network) -> str:
        """The engine network standing for `net` on this node."""
        return engine_network_name(net)

    def attachment_of(self, container: str, network_id: str) -> str | None:
        r = self.records.get(container)
        if r is None:
            return None
        return next((a for a, (n, _c) in r.attachments.items() if n == network_id), None)

    @contextlib.contextmanager
    def pending(self, key: str) -> Any:
        """While a create or connect asks for attachments under `key` (the container's, as the manager's
        attachment label has it) and hands them to the engine: reconciliation leaves them alone."""
        self.inflight.add(key)
        try:
            yield
        finally:
            self.inflight.discard(key)

    # --- the agent's side ---------------------------------------------------------------------------

    async def endpoints(self, nets: list[tuple[Network, str]]) -> list[Endpoint]:
        """The engine networks for these (network, CIDR) pairs, made when missing (with their VXLAN device and
        gateway DNS)."""
        agent = self.agent
        out: list[Endpoint] = []
        async with agent.lock:
            for net, cidr in nets:
                ln = await agent.ensure_network(net)
                out.append(Endpoint(net, ln.engine_name, cidr, ln.gateway))
        return out

    async def attached(self, container: str, atts: dict[str, tuple[str, str]], pid: int = 0) -> None:
        """The engine has the container on these attachments (id -> (network id, CIDR)): record it, give it
        its DNS view, and its VIP rules when it runs (`pid`)."""
        agent = self.agent
        async with agent.lock:
            r = self.records.setdefault(container, _Record(container))
            r.attachments.update(atts)
            self._save()
            box = agent.container_sandbox(self.key(container))
            self._sync_box(box, r)
            if pid > 0 and not ipcmd.is_netns(box.ns):
                await agent.hold_netns(box, pid, self._still_running(container, pid))
            await agent.program_vips(box)

    def _sync_box(self, box: Box, r: _Record) -> None:
        self.agent.readdress(box, [n for n, _c in r.attachments.values()],
                             [ip_of(c) for _n, c in r.attachments.values()])

    def _still_running(self, container: str, pid: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await self._pid(container) == pid
        return check

    async def started(self, container: str, pid: int) -> None:
        """The container (re)started: its namespace is new, so are its VIP rules."""
        agent = self.agent
        async with agent.lock:
            box = agent.sandbox(self.key(container))
            if box is None or container not in self.records or pid <= 0:
                return
            if await agent.hold_netns(box, pid, self._still_running(container, pid)):
                await agent.program_vips(box)

    async def stopped(self, container: str) -> None:
        """The container's process ended: let its namespace go (a restart is held anew)."""
        agent = self.agent
        async with agent.lock:
            box = agent.sandbox(self.key(container))
            if box is not None:
                await agent.release_netns(box)

    async def detached(self, container: str, attachment_ids: set[str] | None = None) -> None:
        """The container left these attachments (None: all of them; it is gone): release them."""
        agent = self.agent
        async with agent.lock:
            r = self.records.get(container)
            if r is None:
                return
            ids = set(r.attachments) if attachment_ids is None else attachment_ids & set(r.attachments)
            for a in ids:
                del r.attachments[a]
            box = agent.sandbox(self.key(container))
            if not r.attachments:
                del self.records[container]
                if box is not None:
                    await agent.remove_sandbox(box)
            elif box is not None:
                self._sync_box(box, r)
                await agent.program_vips(box)
            self._save()
            await agent.gc_networks()
        for a in ids:
            await self.release_attachment(a)

    async def release_attachment(self, attachment_id: str) -> None:
        """Give the leader an attachment back; failures are logged (the next reconciliation tries again)."""
        if self.release is None:
            return
        try:
            await self.release(attachment_id)
        except Exception as e:  # the next reconciliation tries again
            log.warning("releasing network attachment %s: %s", attachment_id, e)

    # --- following the engine -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="plain-containers")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        await self.agent.ready.wait()
        backoff = 0.5
        while True:
            try:
                await self._follow()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.info("engine events for plain containers: %s; again in %.1fs", e, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _follow(self) -> None:
        """Reconcile once the event stream is open (nothing that happens after is missed), then follow it."""
        docker = self.agent.engine_client()
        async with docker._query("events", params={"filters": json.dumps(EVENTS)},
                                 timeout=_no_timeout()) as resp:
            await self.reconcile()
            async for raw in resp.content:
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                await self._on_event(ev)

    async def _on_event(self, ev: dict[str, Any]) -> None:
        action = str(ev.get("Action") or ev.get("status") or "")
        actor = ev.get("Actor") or {}
        if ev.get("Type") == "container":
            cid = str(actor.get("ID") or ev.get("id") or "")
            if action == "destroy":
                self._forget_deferred(cid)
            if cid not in self.records:
                return
            if action == "destroy":
                await self.detached(cid)
            elif action == "die":
                await self.stopped(cid)
            elif action == "start":
                await self.started(cid, await self._pid(cid))
        elif ev.get("Type") == "network" and action == "disconnect":
            cid = str((actor.get("Attributes") or {}).get("container") or "")
            if cid in self.records:
                await self._check_disconnect(cid)

    async def _inspect(self, container: str) -> dict[str, Any] | None:
        from aiodocker.exceptions import DockerError

        try:
            data: dict[str, Any] = await self.agent.engine_client()._query_json(f"containers/{container}/json")
            return data
        except DockerError as e:
            if e.status == 404:
                return None
            raise

    async def _pid(self, container: str) -> int:
        data = await self._inspect(container)
        return int(((data or {}).get("State") or {}).get("Pid") or 0)

    async def _check_disconnect(self, container: str) -> None:
        """A network disconnect also happens when a container stops; only one that is no longer configured
        (`docker network disconnect`, straight on the engine) gives its address back."""
        data = await self._inspect(container)
        if data is None:
            await self.detached(container)
            return
        configured = set((data.get("NetworkSettings") or {}).get("Networks") or {})
        r = self.records.get(container)
        if r is None:
            return
        gone = set()
        for a, (nid, _c) in r.attachments.items():
            net = self.agent.state.networks.get(nid)
            if net is None or self.engine_name(net) not in configured:
                gone.add(a)
        if gone:
            await self.detached(container, gone)

    async def reconcile(self) -> None:
        """Release what no container holds any more: records of containers that are gone, and this node's
        attachments that no record knows (a create or connect that broke off, or a record lost), and the deferred
        connects of containers that are gone."""
        for cid in list(self.deferred):
            if await self._inspect(cid) is None:
                self._forget_deferred(cid)
        for cid in list(self.records):
            data = await self._inspect(cid)
            if data is None:
                await self.detached(cid)
                continue
            pid = int((data.get("State") or {}).get("Pid") or 0)
            await self.attached(cid, {}, pid)
            await self._check_disconnect(cid)
        known = {a for r in self.records.values() for a in r.attachments}
        for t in list(self.agent.state.tasks.values()):
            if is_attachment(t) and t.node_id == self.agent.node_id and t.id not in known \
                    and t.annotations.labels.get(LABEL_CONTAINER, "") not in self.inflight:
                await self.release_attachment(t.id)


def _no_timeout() -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=None, sock_read=None, connect=30)
