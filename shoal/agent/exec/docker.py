"""The `docker` executor: tasks run as containers on a local Docker Engine, through aiodocker.

The translation from task to container config is pure and lives in `shoal.agent.exec.container`; this
module does the I/O and is the boundary where aiodocker/aiohttp errors become Shoal errors:

- the engine cannot be reached (connection refused, socket missing, timeouts) -> `TemporaryError`;
- any error answer from the engine (404 no such image/container, 400 invalid config, 500...) ->
  `FatalError` carrying dockerd's message.

Secrets and configs. A plain dockerd (not in swarm mode) has no secret store, so the controller writes
each referenced secret/config as a file on the host under `<root>/tasks/<task id>/secrets` and
`<root>/tasks/<task id>/configs`, with the reference's mode/uid/gid, and bind-mounts each file read-only
into the container (secrets at `/run/secrets/<name>` unless the name is absolute, configs at `/<name>`
unless absolute). When running as root the secrets directory is a private tmpfs (never hits the disk);
otherwise, or when mounting fails (e.g. no CAP_SYS_ADMIN), it is a plain 0700 directory. `remove()`
unmounts and deletes the task directory.

Removal is final. The agent cancels a task's step when the task leaves the node, but an engine operation already
sent carries on (see `_once`); when one is still under way as `remove()` runs, it removes what it made (the
container, started or not, the secrets tmpfs, the network endpoints) once it ends.

Containers carry Swarm's labels plus `com.shoal.node.id`, so several Shoal nodes sharing one dockerd
only see (and adopt) their own containers.

Overlays become bridge networks of the engine (shoal.net.engine), which refuses one whose subnet overlaps
another of its networks. So `describe()` reports the IPv4 subnets of the engine's networks and of the host's
routes (`NodeDescription.routed_subnets`, less this node's own overlays) and the manager allocates overlay
subnets around them; the agent registers again when that changes. A network the engine refuses all the same
(a subnet the user gave) rejects the task with the engine's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import shutil
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from shoal.agent import usage as U
from shoal.agent.exec import container as ctr
from shoal.agent.exec.protocol import DependencyGetter, ExitStatus, RuntimeStatus
from shoal.api.logs import LogLine, LogOptions
from shoal.errors import FatalError, ShoalError, TemporaryError
from shoal.model.objects import (
    SECOND,
    EngineDescription,
    NodeDescription,
    Platform,
    Resources,
    Task,
)

log = logging.getLogger(__name__)

DEFAULT_ENGINE_HOST = "unix:///var/run/docker.sock"
DEFAULT_STOP_GRACE = 10 * SECOND  # dockerd's default stop timeout

_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None, connect=30)


def _translate(err: BaseException) -> ShoalError:
    if isinstance(err, ShoalError):
        return err
    if isinstance(err, DockerError):
        # aiodocker reports connection failures as status 900.
        if err.status == 900 or err.status in (502, 503, 504):
            return TemporaryError(str(err.message))
        return FatalError(str(err.message))
    if isinstance(err, aiohttp.ClientError | OSError | TimeoutError):
        return TemporaryError(f"cannot reach the Docker Engine: {err}")
    return FatalError(str(err))


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """Translate everything aiodocker/aiohttp raise into TemporaryError/FatalError."""
    try:
        yield
    except ShoalError:
        raise
    except (DockerError, aiohttp.ClientError, OSError, TimeoutError) as e:
        raise _translate(e) from e


def parse_timestamp(text: str) -> float:
    """RFC 3339 with nanoseconds (`2024-05-01T10:11:12.123456789Z`) -> seconds since the epoch."""
    main, _, rest = text.partition(".")
    frac = ""
    tz = "Z"
    if rest:
        i = 0
        while i < len(rest) and rest[i].isdigit():
            i += 1
        frac, tz = rest[:i], rest[i:] or "Z"
    else:
        for sep in ("Z", "+", "-"):
            idx = main.find(sep, 10)
            if idx != -1:
                main, tz = main[:idx], main[idx:]
                break
    if tz == "Z":
        tz = "+00:00"
    dt = datetime.datetime.fromisoformat(main + tz)
    return dt.timestamp() + (float("0." + frac) if frac else 0.0)


def _engine_time(seconds: float) -> str:
    return f"{seconds:.9f}"


# --- executor ----------------------------------------------------------------------------------


class DockerExecutor:
    """Runs tasks as containers on the Docker Engine at `engine_host`.

    `root` is this node's state directory (task files go under `<root>/tasks`); `hostname` overrides
    the engine's `Name` in `describe()`; `node_id` is this Shoal node's ID (settable later, once the
    node has joined), written to each container's `com.shoal.node.id` label."""

    def __init__(
        self,
        *,
        engine_host: str = DEFAULT_ENGINE_HOST,
        root: Path,
        hostname: str | None = None,
        node_id: str = "",
        network: Any = None,
    ) -> None:
        self.engine_host = engine_host
        self.network = network  # shoal.net.agent.NetworkAgent: containers join Shoal's networks (None: none)
        self.root = Path(root)
        self.hostname = hostname
        self.node_id = node_id
        self._client: aiodocker.Docker | None = None

    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            self._client = aiodocker.Docker(url=self.engine_host)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def describe(self) -> NodeDescription:
        with _engine_errors():
            info: dict[str, Any] = await self.client._query_json("info")
        labels: dict[str, str] = {}
        for item in info.get("Labels") or []:
            key, _, value = str(item).partition("=")
            labels[key] = value
        plugins: list[dict[str, str]] = []
        for kind, names in sorted((info.get("Plugins") or {}).items()):
            plugins.extend({"Type": kind, "Name": str(n)} for n in names or [])
        return NodeDescription(
            hostname=self.hostname or str(info.get("Name", "")),
            platform=Platform(
                # /info's Architecture is uname's (x86_64), and so is what dockerd reports for the node
                architecture=str(info.get("Architecture", "")),
                os=str(info.get("OSType", "")),
            ),
            resources=Resources(
                nano_cpus=int(info.get("NCPU", 0)) * SECOND,
                memory_bytes=int(info.get("MemTotal", 0)),
            ),
            engine=EngineDescription(
                engine_version=str(info.get("ServerVersion", "")),
                labels=labels,
                plugins=tuple(plugins),
            ),
            routed_subnets=await self._routed_subnets(),
        )

    async def _routed_subnets(self) -> tuple[str, ...]:
        """IPv4 subnets of the engine's networks (an overlay becomes an engine network, and the engine refuses
        one that overlaps another of its own) and of the host's routes, less this node's own overlays' (so
        the description stays the same as they come and go)."""
        with _engine_errors():
            nets: list[dict[str, Any]] = await self.client._query_json("networks")
        found: set[str] = set()
        own: set[str] = set()
        for n in nets:
            mine = self.node_id and (n.get("Labels") or {}).get(ctr.LABEL_SHOAL_NODE_ID) == self.node_id
            for c in (n.get("IPAM") or {}).get("Config") or []:
                subnet = str((c or {}).get("Subnet") or "")
                if subnet and ":" not in subnet:
                    (own if mine else found).add(subnet)
        return tuple(sorted((found | await _host_routes()) - own))

    def controller(self, task: Task, deps: DependencyGetter) -> DockerController:
        return DockerController(self, task, deps)

    async def list_task_ids(self) -> set[str]:
        """Tasks with a container of this node, and tasks with files here (secrets, configs): a node killed
        between writing a task's files and creating its container left only those, the secrets tmpfs
        still mounted."""
        try:
            found_dirs = {p.name for p in (self.root / "tasks").iterdir() if p.is_dir()}
        except FileNotFoundError:
            found_dirs = set()
        wanted = [ctr.LABEL_TASK_ID]
        if self.node_id:
            wanted.append(f"{ctr.LABEL_SHOAL_NODE_ID}={self.node_id}")
        with _engine_errors():
            found: list[dict[str, Any]] = await self.client._query_json(
                "containers/json", params={"all": "1", "filters": json.dumps({"label": wanted})}
            )
        return {c["Labels"][ctr.LABEL_TASK_ID] for c in found if c.get("Labels")} | found_dirs


# --- controller --------------------------------------------------------------------------------


class DockerController:
    def __init__(self, executor: DockerExecutor, task: Task, deps: DependencyGetter) -> None:
        self._executor = executor
        self.task = task
        self._deps = deps
        self.name = ctr.container_name(task)
        self._id = ""
        # Engine operations under way, by name. The agent cancels a step when the task changes; the engine
        # carries on with a request already sent (the name stays reserved, the start proceeds), so these
        # run shielded and the next step joins the same operation instead of racing it.
        self._ops: dict[str, asyncio.Future[None]] = {}
        # Set by remove(): an operation still under way then (its step was cancelled when the task left the
        # node) undoes what it made once it ends, since remove() could not see it yet.
        self._removed = False

    @property
    def _docker(self) -> aiodocker.Docker:
        return self._executor.client

    @property
    def _node_id(self) -> str:
        return self._executor.node_id or self.task.node_id

    @property
    def task_dir(self) -> Path:
        return self._executor.root / "tasks" / self.task.id

    # -- engine helpers --

    async def _inspect_raw(self) -> dict[str, Any] | None:
        """The container's inspect JSON, or None if there is none for this task. Looked up by ID once
        known, else by name, else by the task ID label (a controller made from a bare Task(id=...) to
        clean up after a restart does not know the name)."""
        for ref in (self._id, self.name, None):
            if ref is None:
                ref = await self._find_by_label()
            if not ref:
                continue
            with _engine_errors():
                try:
                    data: dict[str, Any] = await self._docker._query_json(f"containers/{ref}/json")
                except DockerError as e:
                    if e.status != 404:
                        raise
                    continue
            labels = (data.get("Config") or {}).get("Labels") or {}
            if labels.get(ctr.LABEL_TASK_ID) == self.task.id:
                self._id = str(data["Id"])
                return data
        self._id = ""
        return None

    async def _find_by_label(self) -> str:
        wanted = [f"{ctr.LABEL_TASK_ID}={self.task.id}"]
        if self._executor.node_id:
            wanted.append(f"{ctr.LABEL_SHOAL_NODE_ID}={self._executor.node_id}")
        with _engine_errors():
            found: list[dict[str, Any]] = await self._docker._query_json(
                "containers/json", params={"all": "1", "filters": json.dumps({"label": wanted})}
            )
        return str(found[0]["Id"]) if found else ""

    async def _require(self) -> dict[str, Any]:
        data = await self._inspect_raw()
        if data is None:
            raise FatalError(f"No such container: {self.name}")
        return data

    async def _image_present(self, ref: str) -> bool:
        with _engine_errors():
            try:
                await self._docker._query_json(f"images/{ref}/json")
            except DockerError as e:
                if e.status == 404:
                    return False
                raise
        return True

    async def _pull(self, ref: str) -> None:
        with _engine_errors():
            async with self._docker._query(
                "images/create", method="POST", params={"fromImage": ref}, timeout=_NO_TIMEOUT
            ) as resp:
                async for raw in resp.content:
                    line = raw.strip()
                    if not line:
                        continue
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(msg, dict) and msg.get("error"):
                        raise DockerError(500, str(msg["error"]))

    async def _resolve_image(self) -> str:
        """The local reference to create the container from, pulling it when absent."""
        spec_image = self.task.spec.container.image
        if not spec_image:
            raise FatalError(ctr.ERR_IMAGE_REQUIRED)
        ref = ctr.image_ref(spec_image)
        if await self._image_present(ref):
            return ref
        plain, digest = ctr.split_digest(ref)
        if digest and plain and await self._image_present(ctr.image_ref(plain)):
            # The CLI pins `name:tag@sha256:...`; the plain tag present locally will do.
            return ctr.image_ref(plain)
        try:
            await self._pull(ref)
        except TemporaryError:
            raise
        except FatalError as e:
            log.info("pulling %s failed: %s", ref, e.message)
            raise FatalError(f"No such image: {ref}") from e
        return ref

    # -- secrets and configs --

    async def _mount_tmpfs(self, path: Path) -> None:
        if _is_mount(path):
            return
        if os.geteuid() != 0:
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "mode=0700",
                "tmpfs",
                str(path),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
        except OSError as e:
            log.warning("cannot mount a tmpfs for secrets at %s (%s); using a 0700 directory", path, e)
            return
        if proc.returncode != 0:
            log.warning(
                "cannot mount a tmpfs for secrets at %s (%s); using a 0700 directory",
                path,
                err.decode(errors="replace").strip(),
            )

    async def _write_files(self) -> list[ctr.FileMount]:
        spec = self.task.spec.container
        files: list[ctr.FileMount] = []
        to_write: list[tuple[Path, bytes, str, str, int]] = []
        secrets_dir = self.task_dir / "secrets"
        configs_dir = self.task_dir / "configs"
        for i, sref in enumerate(spec.secrets):
            secret = self._deps.secret(sref.secret_id)
            if secret is None:
                raise FatalError(f"unable to get secret from secret store: secret {sref.secret_id} not found")
            if sref.file is None:
                continue
            host = secrets_dir / f"{i}-{sref.secret_id}"
            to_write.append((host, secret.spec.data, sref.file.uid, sref.file.gid, sref.file.mode))
            files.append(ctr.FileMount(source=str(host), target=ctr.secret_target(sref)))
        for i, cref in enumerate(spec.configs):
            if cref.runtime or cref.file is None:
                continue  # credential specs are not files
            config = self._deps.config(cref.config_id)
            if config is None:
                raise FatalError(f"unable to get config from config store: config {cref.config_id} not found")
            host = configs_dir / f"{i}-{cref.config_id}"
            to_write.append((host, config.spec.data, cref.file.uid, cref.file.gid, cref.file.mode))
            files.append(ctr.FileMount(source=str(host), target=ctr.config_target(cref)))
        if not to_write:
            return files
        try:
            for d in (secrets_dir, configs_dir):
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
                d.chmod(0o700)
            if any(p.parent == secrets_dir for p, *_ in to_write):
                await self._mount_tmpfs(secrets_dir)
            for path, data, uid, gid, mode in to_write:
                _write_file(path, data, uid, gid, mode)
        except OSError as e:
            raise FatalError(f"cannot write secret/config files for task {self.task.id}: {e}") from e
        return files

    async def _remove_files(self) -> None:
        secrets_dir = self.task_dir / "secrets"
        if _is_mount(secrets_dir):
            proc = await asyncio.create_subprocess_exec(
                "umount",
                str(secrets_dir),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await proc.wait()
        shutil.rmtree(self.task_dir, ignore_errors=True)

    # -- Controller --

    async def _once(self, key: str, op: Callable[[], Awaitable[None]]) -> None:
        """Run `op` shielded from the caller's cancellation; a call while one is under way joins it."""
        fut = self._ops.get(key)
        if fut is None:
            fut = self._ops[key] = asyncio.ensure_future(self._undone_if_removed(op))
        try:
            await asyncio.shield(fut)
        finally:
            if fut.done():
                if self._ops.get(key) is fut:
                    del self._ops[key]
                if not fut.cancelled():
                    fut.exception()  # retrieved: raised above to the caller that saw it finish

    async def _undone_if_removed(self, op: Callable[[], Awaitable[None]]) -> None:
        """Run `op`; if the task was removed meanwhile, remove what it made (container, files, network
        endpoints): remove() ran before they existed, and nothing else would ever remove them."""
        try:
            await op()
        finally:
            if self._removed:
                try:
                    await self._remove_now()
                except Exception as e:
                    log.warning("removing what %s made after the task was removed failed: %s", self.name, e)

    async def _adopt_conflict(self, timeout: float = 15.0) -> bool:
        """After a 409 on create: the name is ours (it holds the task ID), but dockerd reserves a name
        before the container can be inspected. Poll until it can, within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.02
        while True:
            if await self._inspect_raw() is not None:
                return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(delay)  # polling the engine for a condition, bounded by the deadline
            delay = min(delay * 2, 0.5)

    async def prepare(self) -> None:
        await self._once("prepare", self._prepare)

    async def _prepare(self) -> None:
        if await self._inspect_raw() is not None:
            await self._write_files()  # the host may have lost them (reboot); rewrite in place
            return  # adopt the existing container
        image = await self._resolve_image()
        files = await self._write_files()
        network = self._executor.network
        nets = await network.attach_container(self.task) if network is not None else None
        if nets is not None:
            files = [*files, ctr.FileMount(source=nets.resolv_conf, target="/etc/resolv.conf")]
        body = ctr.create_body(self.task, node_id=self._node_id, files=files, image=image)
        if nets is not None:
            first, ip, aliases = nets.endpoints[0]
            body["HostConfig"]["NetworkMode"] = first
            body["NetworkingConfig"] = {"EndpointsConfig": {first: {"IPAMConfig": {"IPv4Address": ip},
                                                                    "Aliases": list(aliases)}}}
        with _engine_errors():
            try:
                created: dict[str, Any] = await self._docker._query_json(
                    "containers/create",
                    method="POST",
                    params={"name": self.name},
                    data=json.dumps(body),
                )
            except DockerError as e:
                if e.status == 409 and await self._adopt_conflict():
                    return  # created concurrently (or by a request cancelled midway): adopt it
                raise
        self._id = str(created["Id"])
        for name, ip, aliases in nets.endpoints[1:] if nets is not None else ():
            # The engine (API 1.41) takes one network at create; the others before the container starts.
            with _engine_errors():
                async with self._docker._query(f"networks/{name}/connect", method="POST", data=json.dumps({
                        "Container": self._id, "EndpointConfig": {"IPAMConfig": {"IPv4Address": ip},
                                                                   "Aliases": list(aliases)}})):
                    pass

    async def _networks_started(self) -> None:
        """Once the container runs: Shoal's VIP rules in its network namespace."""
        network = self._executor.network
        if network is None or not self.task.networks:
            return
        pid = await self._running_pid()
        if pid:
            await network.container_started(self.task, pid, self._still_running(pid))

    async def _running_pid(self) -> int:
        state = ((await self._inspect_raw()) or {}).get("State") or {}
        return int(state.get("Pid") or 0) if state.get("Running") else 0

    def _still_running(self, pid: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await self._running_pid() == pid
        return check

    async def start(self) -> None:
        await self._once("start", self._start)
        await self._networks_started()

    async def _start(self) -> None:
        data = await self._require()
        if data["State"]["Status"] != "created":
            return  # started before (maybe already exited): never start it twice
        with _engine_errors():
            try:
                async with self._docker._query(f"containers/{self._id}/start", method="POST"):
                    pass
            except DockerError as e:
                if e.status != 304:
                    raise

    async def _wait_exit(self) -> int:
        with _engine_errors():
            try:
                res: dict[str, Any] = await self._docker._query_json(
                    f"containers/{self._id}/wait",
                    method="POST",
                    params={"condition": "not-running"},
                    timeout=_NO_TIMEOUT,
                )
            except DockerError as e:
                if e.status == 404:
                    raise FatalError(ctr.ERR_CONTAINER_DESTROYED) from e
                raise
        return int(res.get("StatusCode", 0))

    async def _oom_killed(self) -> bool:
        """Whether the engine says the kernel's OOM killer ended the container (`State.OOMKilled`)."""
        try:
            data = await self._inspect_raw()
        except ShoalError:
            return False
        return bool(((data or {}).get("State") or {}).get("OOMKilled"))

    async def _watch_unhealthy(self, opened: asyncio.Future[None]) -> bool:
        """True once the container is reported unhealthy; False if the event stream ends."""
        filters = json.dumps({"type": ["container"], "container": [self._id]})
        with _engine_errors():
            async with self._docker._query(
                "events", params={"filters": filters}, timeout=_NO_TIMEOUT
            ) as resp:
                if not opened.done():
                    opened.set_result(None)
                async for raw in resp.content:
                    try:
                        event = json.loads(raw)
                    except ValueError:
                        continue
                    action = str(event.get("Action") or event.get("status") or "")
                    if action.startswith("health_status") and action.endswith("unhealthy"):
                        return True
                    if action in ("die", "destroy"):
                        return False
        return False

    async def wait(self) -> ExitStatus:
        await self._networks_started()  # again after an agent restart: the rules of an adopted container
        data = await self._require()
        has_health = bool((data.get("State") or {}).get("Health"))
        watcher: asyncio.Task[bool] | None = None
        waiter: asyncio.Task[int] | None = None
        try:
            if has_health:
                opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                watcher = asyncio.create_task(self._watch_unhealthy(opened))
                # Subscribe first, then look at the current state: no unhealthy event can slip between.
                first: set[asyncio.Future[Any]] = {watcher, opened}
                await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
                state = (await self._require()).get("State") or {}
                if (state.get("Health") or {}).get("Status") == "unhealthy" and state.get("Running"):
                    return await self._fail_unhealthy()
            waiter = asyncio.create_task(self._wait_exit())
            pending: set[asyncio.Task[Any]] = {waiter}
            if watcher is not None:
                pending.add(watcher)
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if waiter in done:
                    code = waiter.result()
                    if self._executor.network is not None and self.task.networks:
                        await self._executor.network.container_stopped(self.task.id)
                    break
                if watcher in done:
                    unhealthy = False
                    try:
                        unhealthy = watcher.result()
                    except ShoalError as e:
                        log.warning("watching health of %s failed: %s", self.name, e.message)
                    if unhealthy:
                        return await self._fail_unhealthy()
                    watcher = None
            if code != 0:
                return ExitStatus(exit_code=code, message=f"task: non-zero exit ({code})",
                                  oom_killed=await self._oom_killed())
            return ExitStatus(exit_code=0)
        finally:
            for t in (watcher, waiter):
                if t is not None and not t.done():
                    t.cancel()
                    with contextlib.suppress(BaseException):
                        await t

    async def _fail_unhealthy(self) -> ExitStatus:
        grace = self.task.spec.container.stop_grace_period
        await self.shutdown((DEFAULT_STOP_GRACE if grace is None else grace) / SECOND)
        code = await self._wait_exit()
        if code != 0:
            raise FatalError(f"task: non-zero exit ({code}): {ctr.ERR_CONTAINER_UNHEALTHY}")
        raise FatalError(ctr.ERR_CONTAINER_UNHEALTHY)

    async def shutdown(self, grace_period: float) -> None:
        if await self._inspect_raw() is None:
            return
        t = max(0, -(-int(grace_period * 1000) // 1000))  # whole seconds, rounded up
        with _engine_errors():
            try:
                async with self._docker._query(
                    f"containers/{self._id}/stop",
                    method="POST",
                    params={"t": str(t)},
                    timeout=_NO_TIMEOUT,
                ):
                    pass
            except DockerError as e:
                if e.status not in (304, 404):
                    raise

    async def terminate(self) -> None:
        if await self._inspect_raw() is None:
            return
        with _engine_errors():
            try:
                async with self._docker._query(
                    f"containers/{self._id}/kill", method="POST", params={"signal": "SIGKILL"}
                ):
                    pass
            except DockerError as e:
                # 409: "is not running"
                if e.status not in (404, 409):
                    raise

    async def remove(self) -> None:
        self._removed = True
        await self._remove_now()

    async def _remove_now(self) -> None:
        if await self._inspect_raw() is not None:
            with _engine_errors():
                try:
                    async with self._docker._query(
                        f"containers/{self._id}",
                        method="DELETE",
                        params={"force": "1", "v": "1"},
                        timeout=_NO_TIMEOUT,
                    ):
                        pass
                except DockerError as e:
                    # 409: removal already in progress
                    if e.status not in (404, 409):
                        raise
        self._id = ""
        await self._remove_files()
        if self._executor.network is not None:
            await self._executor.network.detach(self.task.id)

    async def inspect(self) -> RuntimeStatus:
        data = await self._inspect_raw()
        if data is None:
            return RuntimeStatus(exists=False)
        state = data.get("State") or {}
        running = bool(state.get("Running"))
        status = str(state.get("Status", ""))
        exit_code = None if running or status == "created" else int(state.get("ExitCode", 0))
        healthy: bool | None = None
        health = state.get("Health")
        if health:
            hs = health.get("Status")
            healthy = True if hs == "healthy" else False if hs == "unhealthy" else None
        return RuntimeStatus(
            exists=True,
            running=running,
            exit_code=exit_code,
            container_id=self._id,
            pid=int(state.get("Pid") or 0),
            healthy=healthy,
            health_check=bool(health),
        )

    async def usage(self) -> U.RawUsage | None:
        """The container's cgroup, found through its main process (/proc/<pid>/cgroup, on either hierarchy);
        the engine's one-shot statistics when this host cannot see that process (a remote engine, another
        PID namespace)."""
        try:
            data = await self._inspect_raw()
            state = (data or {}).get("State") or {}
            if data is None or not state.get("Running"):
                return None
            pid = int(state.get("Pid") or 0)
            if pid > 0:
                got = await asyncio.to_thread(U.read_pid_cgroup, pid)
                if got is not None:
                    return got
            with _engine_errors():
                stats: dict[str, Any] = await self._docker._query_json(
                    f"containers/{self._id}/stats", params={"stream": "false", "one-shot": "true"})
            return U.engine_stats_usage(stats)
        except Exception as e:  # an engine away for a moment: no reading this time
            log.debug("measuring the container of task %s: %s", self.task.id, e)
            return None

    async def logs(self, options: LogOptions) -> AsyncIterator[LogLine]:
        data = await self._require()
        tty = bool((data.get("Config") or {}).get("Tty"))
        params: dict[str, str] = {
            "stdout": "1" if options.stdout else "0",
            "stderr": "1" if options.stderr else "0",
            "timestamps": "1",
            "follow": "1" if options.follow else "0",
            "tail": "all" if options.tail is None else str(max(0, options.tail)),
        }
        if options.since:
            params["since"] = _engine_time(options.since)
        if options.until:
            params["until"] = _engine_time(options.until)
        pending: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        with _engine_errors():
            async with self._docker._query(
                f"containers/{self._id}/logs", params=params, timeout=_NO_TIMEOUT
            ) as resp:
                while True:
                    if tty:
                        chunk = await resp.content.read(65536)
                        if not chunk:
                            break
                        stream = "stdout"
                    else:
                        try:
                            header = await resp.content.readexactly(8)
                        except asyncio.IncompleteReadError:
                            break
                        kind, size = struct.unpack(">BxxxL", header)
                        try:
                            chunk = await resp.content.readexactly(size)
                        except asyncio.IncompleteReadError as e:
                            chunk = e.partial
                        stream = "stderr" if kind == 2 else "stdout"
                    buf = pending[stream] + chunk
                    *lines, rest = buf.split(b"\n")
                    pending[stream] = rest
                    for line in lines:
                        yield _log_line(stream, line + b"\n")
        for stream, rest in pending.items():
            if rest:
                yield _log_line(stream, rest)

    async def close(self) -> None:
        """Wait for engine operations under way (the executor owns the engine client). Their outcome is not
        ours to raise; a cancellation of the caller is (the agent's session ends by one)."""
        for fut in list(self._ops.values()):
            try:
                await asyncio.wait_for(asyncio.shield(fut), 30)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            except Exception:
                pass
        self._ops.clear()


async def _host_routes() -> set[str]:
    """IPv4 destinations of this host's main routing table other than the default route: an overlay's bridge
    on one of them would capture (or lose) that traffic. Empty when `ip` cannot tell."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip", "-j", "-4", "route", "show", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        routes = json.loads(out or b"[]")
    except (OSError, TimeoutError, ValueError) as e:
        log.debug("reading host routes: %s", e)
        return set()
    dsts: set[str] = set()
    for r in routes if isinstance(routes, list) else []:
        dst = str(r.get("dst") or "") if isinstance(r, dict) else ""
        if dst and dst != "default":
            dsts.add(dst if "/" in dst else f"{dst}/32")
    return dsts


def _log_line(stream: str, raw: bytes) -> LogLine:
    """Split dockerd's `<RFC3339Nano timestamp> <data>` prefix off one line."""
    ts_text, sep, data = raw.partition(b" ")
    if sep:
        try:
            return LogLine(stream=stream, timestamp=parse_timestamp(ts_text.decode()), data=data)
        except ValueError:
            pass
    return LogLine(stream=stream, timestamp=0.0, data=raw)


def _is_mount(path: Path) -> bool:
    return path.is_mount()


def _write_file(path: Path, data: bytes, uid: str, gid: str, mode: int) -> None:
    try:
        uid_n, gid_n = int(uid or "0"), int(gid or "0")
    except ValueError as e:
        raise FatalError(f"invalid uid/gid {uid!r}:{gid!r} for {path.name}") from e
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if os.geteuid() == 0:
            os.fchown(fd, uid_n, gid_n)
        os.fchmod(fd, mode & 0o7777)
    finally:
        os.close(fd)
