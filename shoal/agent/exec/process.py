"""The `process` executor: runs a task's command as a plain supervised process, no container runtime.

Like Nomad's raw_exec: nothing is isolated except what is listed here. Useful without Docker, and the
default for the demo and fast tests.

Command. argv = `command + args`. The image is never pulled or unpacked. An image of the form
`process:/path/to/executable`, or a bare absolute path `/path/to/executable`, names an executable that acts
as the entrypoint: with an empty `command`, argv = `[executable] + args`. Any other image (e.g. `busybox`)
is ignored, and then `command` or `args` must be given (argv = `args` when `command` is empty); a task
with no command at all is REJECTED. The executable is looked up in the task's PATH.

Environment. Not inherited from the agent: `PATH` (the agent's, or the usual default), `HOME` (the user's
home, or `/`), `HOSTNAME` (the spec's `hostname`, or the node's), then the spec's `env`, then
`SHOAL_SECRETS_DIR` and `SHOAL_CONFIGS_DIR`.

Working directory: the spec's `dir` (it must exist; a missing one REJECTS the task), else the task
directory. User: `user` (`uid[:gid]`, numbers or names) and `groups` need the agent to run as root; the
user's own supplementary groups are added as dockerd does. Not as root, `user` must be empty or the
agent's own user, else the task is REJECTED.

Files. Each task owns `<root>/tasks/<task_id>/`:

    spec.json   what the shim runs (argv, env, cwd, user, cgroups, rlimits); written by prepare()
    state.json  the shim's pid and /proc start time, the command's pid and start time, started_at
    log.jsonl   stdout and stderr, one JSON record per line with its timestamp (see shim.py)
    exit        the command's exit code, written atomically when it ends (128+N for signal N)
    secrets/    the task's secrets; a tmpfs (noexec) when the agent runs as root and `mount -t tmpfs`
                works, else a plain directory
    configs/    the task's configs

Only root and the task's user can enter secrets/ and configs/ (and the directories made in them for
targets): as root they belong to the task's user (root when the spec names none) with mode 0500, so no other
local user can read a secret whatever the file's own mode; not as root they are the agent's own, mode 0700.

Secret and config targets: a relative `file.name` lands under `secrets/` (resp. `configs/`); an absolute
one is rewritten under the same directory without its leading `/` (a config targeting `/etc/app.conf`
is written to `configs/etc/app.conf`). A config without a file target defaults to `/<config name>`, a
secret to `<secret name>`. Targets escaping the directory (`..`) are rejected. Each file gets the mode, uid
and gid of its reference (as Swarm does; the CLI's default is 0444, owned by 0:0); uid/gid are applied when
the agent runs as root (numeric only). Configs marked `runtime` (credential
specs) are not written.

Supervision. `start()` launches `python -m shoal.agent.exec.shim <task_dir>`, which detaches (it is not the
agent's child and survives the agent's `kill -9`), starts the command in its own process group, captures
its output and writes `exit` when it ends. A new executor instance adopts what it finds: `prepare()` and
`start()` are no-ops once `state.json` exists, `inspect()` reads state.json, /proc and `exit`, and `wait()`
waits for the shim to exit (`os.pidfd_open` on the event loop) and reads `exit`.

Stopping. `shutdown(grace)` sends the stop signal (`stop_signal`, default SIGTERM) to the shim, which
forwards it to the command's process group (SIGKILL/SIGSTOP are sent to the group directly), waits up to
`grace` seconds of the injected clock, then SIGKILLs the whole process group.

Resource limits (`resources.limits`). With cgroup v2 (`/sys/fs/cgroup/cgroup.controllers` exists and the
hierarchy is writable) the task gets `/sys/fs/cgroup/<cgroup_parent>/<task_id>` with `memory.max` (and
`memory.swap.max` 0) and `cpu.max`; the controllers are enabled in the parents' `cgroup.subtree_control`.
With a writable cgroup v1 hierarchy (`/sys/fs/cgroup/memory`, `/sys/fs/cgroup/cpu`), the same through
`memory.limit_in_bytes` (+ `memory.memsw.limit_in_bytes`) and `cpu.cfs_quota_us`. The command joins the
cgroups before it execs. Without cgroups, memory is limited with `setrlimit(RLIMIT_AS)` (address space,
a rough stand-in) and CPU is not limited.

Usage (`usage()`, for the agent's reports): the task's cgroup when it has one (v2: `cpu.stat`, `memory.current`;
v1: `cpuacct.usage` where cpuacct is co-mounted with cpu, `memory.usage_in_bytes`), and for what it lacks the
command's process tree in /proc (CPU times of every process under the command, their RSS). A non-zero exit of a
task whose memory cgroup counted an `oom_kill` is reported as killed by the OOM killer (`ExitStatus.oom_killed`).

Health checks (`healthcheck`, CMD or CMD-SHELL) are run by the controller itself, as an asyncio task on the
injected clock, with dockerd's defaults (interval 30 s, timeout 30 s, retries 3, start interval 5 s);
failures during the start period do not count. `inspect().healthy` is None until the first success, then
True; after `retries` consecutive failures it is False, the process is shut down (grace period of the
spec) and `wait()` raises `FatalError("task: non-zero exit (N): dockerexec: unhealthy container")`, as the
docker executor reports it. Health state is kept in memory: an adopted task starts over as "starting".
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.agent import usage as U
from shoal.agent.exec.protocol import DependencyGetter, ExitStatus, RuntimeStatus
from shoal.api.logs import LogLine, LogOptions
from shoal.clock import Clock, SystemClock
from shoal.errors import FatalError, TemporaryError
from shoal.host import nsutil
from shoal.model.objects import (
    SECOND,
    ConfigReference,
    EngineDescription,
    HealthConfig,
    NodeDescription,
    Platform,
    Resources,
    SecretReference,
    Task,
)
from shoal.tasks import cancel_and_wait

ENGINE_VERSION = "shoal-process"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_GRACE = 10.0
SHIM_START_TIMEOUT = 30.0
KILL_TIMEOUT = 10.0  # seconds to wait for the process to go after SIGKILL
LOG_POLL_INTERVAL = 0.1  # seconds between looks at a followed log file
UNHEALTHY = "dockerexec: unhealthy container"
CFS_PERIOD = 100_000  # microseconds

def unsupported_fields(task: Task) -> list[str]:
    """Container-only settings a plain process cannot honour: the task is rejected rather than run
    without them (as Swarm rejects a task on a node that cannot run it)."""
    c = task.spec.container

    def meaningful(v: object) -> bool:
        # The CLI sends empty shells such as {"CredentialSpec": null, "NoNewPrivileges": false}.
        if isinstance(v, dict):
            return any(meaningful(x) for x in v.values())
        if isinstance(v, list | tuple):
            return any(meaningful(x) for x in v)
        return bool(v)

    checks = {
        "Mounts": bool(c.mounts), "ReadOnly": c.read_only, "CapabilityAdd": bool(c.capability_add),
        "CapabilityDrop": bool(c.capability_drop), "Privileges": meaningful(c.privileges), "Sysctls": bool(c.sysctls),
        "Ulimits": bool(c.ulimits), "TTY": c.tty, "OpenStdin": c.open_stdin, "Hosts": bool(c.hosts),
        "DNSConfig": meaningful(c.dns_config), "Init": bool(c.init),
        "Isolation": c.isolation not in ("", "default"),
    }
    return [name for name, used in checks.items() if used]


def _is_root() -> bool:
    return os.geteuid() == 0


# --- cgroups ------------------------------------------------------------------------------------


def _write(path: Path, value: str) -> None:
    path.write_text(value)


class _Cgroups:
    """Which cgroup hierarchy this host offers, and per-task cgroup setup."""

    def __init__(self, parent: str, base: Path = Path("/sys/fs/cgroup")) -> None:
        self.parent = parent.strip("/")
        self.base = base
        self.mode = "none"
        if (base / "cgroup.controllers").exists() and os.access(base, os.W_OK):
            self.mode = "v2"
        elif (base / "memory").is_dir() and os.access(base / "memory", os.W_OK):
            self.mode = "v1"

    def task_dirs(self, task_id: str) -> list[Path]:
        if self.mode == "v2":
            return [self.base / self.parent / task_id]
        if self.mode == "v1":
            return [self.base / c / self.parent / task_id for c in ("memory", "cpu")
                    if (self.base / c).is_dir()]
        return []

    def setup(self, task_id: str, memory: int, nano_cpus: int) -> list[str]:
        """Create the task's cgroups with the limits; return the cgroup.procs files to join."""
        if self.mode == "v2":
            return [str(self._setup_v2(task_id, memory, nano_cpus) / "cgroup.procs")]
        if self.mode == "v1":
            return self._setup_v1(task_id, memory, nano_cpus)
        return []

    def _setup_v2(self, task_id: str, memory: int, nano_cpus: int) -> Path:
        want = [c for c, on in (("memory", memory > 0), ("cpu", nano_cpus > 0)) if on]
        cur = self.base
        for part in [*Path(self.parent).parts, task_id]:
            available = (cur / "cgroup.controllers").read_text().split()
            enabled = (cur / "cgroup.subtree_control").read_text().split()
            missing = [c for c in want if c in available and c not in enabled]
            if missing:
                _write(cur / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
            cur = cur / part
            cur.mkdir(exist_ok=True)
        if memory > 0:
            _write(cur / "memory.max", str(memory))
            if (cur / "memory.swap.max").exists():
                _write(cur / "memory.swap.max", "0")
        if nano_cpus > 0:
            _write(cur / "cpu.max", f"{max(1000, nano_cpus * CFS_PERIOD // SECOND)} {CFS_PERIOD}")
        return cur

    def _setup_v1(self, task_id: str, memory: int, nano_cpus: int) -> list[str]:
        procs: list[str] = []
        if memory > 0 and (self.base / "memory").is_dir():
            d = self.base / "memory" / self.parent / task_id
            d.mkdir(parents=True, exist_ok=True)
            _write(d / "memory.limit_in_bytes", str(memory))
            if (d / "memory.memsw.limit_in_bytes").exists():
                with contextlib.suppress(OSError):
                    _write(d / "memory.memsw.limit_in_bytes", str(memory))
            procs.append(str(d / "cgroup.procs"))
        if nano_cpus > 0 and (self.base / "cpu").is_dir():
            d = self.base / "cpu" / self.parent / task_id
            d.mkdir(parents=True, exist_ok=True)
            _write(d / "cpu.cfs_period_us", str(CFS_PERIOD))
            _write(d / "cpu.cfs_quota_us", str(max(1000, nano_cpus * CFS_PERIOD // SECOND)))
            procs.append(str(d / "cgroup.procs"))
        return procs

    def usage(self, task_id: str) -> U.RawUsage | None:
        """What the task's own cgroup accounts (None without one): v2's directory; v1's memory directory and
        cpuacct (co-mounted with cpu on most hosts; where cpuacct is a hierarchy of its own the task has none
        there, and its CPU comes from /proc)."""
        if self.mode == "v2":
            d = self.base / self.parent / task_id
            return U.read_cgroup_v2(d) if d.is_dir() else None
        if self.mode == "v1":
            dirs: dict[str, Path | None] = {}
            for c in ("cpuacct", "memory"):
                h = U.v1_hierarchy(self.base, c)
                own = h / self.parent / task_id if h is not None else None
                dirs[c] = own if own is not None and own.is_dir() else None
            if dirs["cpuacct"] is None and dirs["memory"] is None:
                return None
            return U.read_cgroup_v1(dirs["cpuacct"], dirs["memory"])
        return None

    def oom_killed(self, task_id: str) -> bool:
        """Whether the OOM killer killed a process of the task's cgroup (v2 `memory.events`, v1
        `memory.oom_control`: their `oom_kill` count); False without a memory cgroup."""
        if self.mode == "v2":
            text = U.read_text(self.base / self.parent / task_id / "memory.events")
        elif self.mode == "v1":
            text = U.read_text(self.base / "memory" / self.parent / task_id / "memory.oom_control")
        else:
            return False
        return (U.stat_field(text, "oom_kill") or 0) > 0

    def remove(self, task_id: str) -> None:
        for d in self.task_dirs(task_id):
            with contextlib.suppress(OSError):
                d.rmdir()


# --- helpers ------------------------------------------------------------------------------------


def _alive(pid: int, start: int | None) -> bool:
    """Is the process with this pid and /proc start time still running (not a zombie)?"""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    rest = data[data.rindex(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):
        return False
    return start is None or int(rest[19]) == start


def parse_signal(name: str) -> signal.Signals:
    if not name:
        return signal.SIGTERM
    s = name.strip().upper()
    if s.isdigit():
        try:
            return signal.Signals(int(s))
        except ValueError:
            raise FatalError(f"invalid signal: {name}") from None
    if not s.startswith("SIG"):
        s = "SIG" + s
    try:
        return signal.Signals[s]
    except KeyError:
        raise FatalError(f"invalid signal: {name}") from None


@dataclass(frozen=True, slots=True)
class _User:
    uid: int | None
    gid: int | None
    groups: list[int] | None
    home: str


def resolve_user(user: str, groups: tuple[str, ...]) -> _User:
    """Turn `user[:group]` and extra groups into numbers (dockerd's messages for unknown names)."""
    if not user and not groups:
        home = "/"
        with contextlib.suppress(KeyError):
            home = pwd.getpwuid(os.getuid()).pw_dir
        return _User(None, None, None, home)
    name, _, group = (user or str(os.getuid())).partition(":")
    pw: pwd.struct_passwd | None = None
    try:
        pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        if not name.isdigit():
            raise FatalError(f"unable to find user {name}: no matching entries in passwd file") from None
    uid = int(name) if name.isdigit() else (pw.pw_uid if pw else 0)
    gid = pw.pw_gid if pw else uid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise FatalError(f"unable to find group {group}: no matching entries in group file") from None
    extra: list[int] = []
    if pw is not None:
        with contextlib.suppress(OSError):
            extra = [g for g in os.getgrouplist(pw.pw_name, gid) if g != gid]
    for g in groups:
        try:
            extra.append(int(g) if g.isdigit() else grp.getgrnam(g).gr_gid)
        except KeyError:
            raise FatalError(f"unable to find group {g}: no matching entries in group file") from None
    if not _is_root():
        if uid != os.getuid() or gid != os.getgid() or groups:
            raise FatalError("the process executor runs tasks as another user only when the agent runs "
                             "as root")
        return _User(None, None, None, pw.pw_dir if pw else "/")
    return _User(uid, gid, sorted(set(extra)), pw.pw_dir if pw else "/")


def _private_dir(d: Path, user: _User) -> None:
    """Let only root and the task's user enter `d` (see the module's docstring)."""
    if _is_root():
        os.chown(d, user.uid or 0, user.gid or 0)
        d.chmod(0o500)
    else:
        d.chmod(0o700)


def _isdir(path: str | Path) -> bool:
    return os.path.isdir(path)


def _ismount(path: str | Path) -> bool:
    return os.path.ismount(path)


def mem_total() -> int:
    """Bytes of memory on this host (MemTotal in /proc/meminfo), 0 if unknown."""
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for ln in f:
            if ln.startswith("MemTotal:"):
                return int(ln.split()[1]) * 1024
    return 0


def _safe_rel(target: str) -> Path:
    rel = os.path.normpath(target.lstrip("/"))
    if rel in (".", "") or rel == ".." or rel.startswith("../"):
        raise FatalError(f"invalid file target: {target!r}")
    return Path(rel)


def _read_exit(task_dir: Path) -> int | None:
    try:
        return int((task_dir / "exit").read_text().strip())
    except (OSError, ValueError):
        return None


def _read_state(task_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((task_dir / "state.json").read_bytes())
    except (OSError, ValueError):
        return None
    return data


def _read_log(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete records from `offset`; returns them and the offset after the last complete one."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    recs = [json.loads(line) for line in data[:end].split(b"\n") if line]
    return recs, offset + end + 1


async def _wait_pid(pid: int, start: int | None, clock: Clock, limit: float | None) -> bool:
    """Wait until the process (pid + start time) has exited; False if `limit` seconds passed first."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        fd = -1
    try:
        if not _alive(pid, start):
            return True
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()
        waiters: set[asyncio.Future[Any]] = {gone}
        if fd >= 0:
            def on_exit() -> None:
                if not gone.done():
                    gone.set_result(None)
            loop.add_reader(fd, on_exit)
        else:  # no pidfd (old kernel): poll /proc
            async def poll() -> None:
                while _alive(pid, start):
                    await clock.sleep(0.1)
            waiters.add(asyncio.ensure_future(poll()))
        timer: asyncio.Future[None] | None = None
        if limit is not None:
            timer = asyncio.ensure_future(clock.sleep(limit))
            waiters.add(timer)
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if fd >= 0:
                loop.remove_reader(fd)
            for w in waiters:
                w.cancel()
        return timer is None or timer not in done or not _alive(pid, start)
    finally:
        if fd >= 0:
            os.close(fd)


# --- the controller -----------------------------------------------------------------------------


class ProcessController:
    def __init__(self, executor: ProcessExecutor, task: Task, deps: DependencyGetter) -> None:
        self.executor = executor
        self.task = task
        self.deps = deps
        self.clock = executor.clock
        self.dir = executor.task_dir(task.id)
        self.secrets_dir = self.dir / "secrets"
        self.configs_dir = self.dir / "configs"
        self._healthy: bool | None = None
        self._unhealthy = asyncio.Event()
        self._health_task: asyncio.Task[None] | None = None

    # -- state on disk --

    def _state(self) -> dict[str, Any] | None:
        return _read_state(self.dir)

    def _running(self, state: dict[str, Any] | None) -> bool:
        if state is None or _read_exit(self.dir) is not None:
            return False
        return _alive(int(state["shim_pid"]), state.get("shim_start")) or \
            _alive(int(state["pid"]), state.get("pid_start"))

    # -- prepare --

    def _argv(self) -> list[str]:
        c = self.task.spec.container
        image = c.image
        exe = None
        if image.startswith("process:"):
            exe = image[len("process:"):]
        elif image.startswith("/"):
            exe = image
        if c.command:
            return [*c.command, *c.args]
        if exe:
            return [exe, *c.args]
        if c.args:
            return list(c.args)
        raise FatalError("the process executor needs a command: give the service a command or args, or an "
                         "image of the form process:/path/to/executable")

    async def prepare(self) -> None:
        if (self.dir / "state.json").exists():
            return  # already started: adopt it
        c = self.task.spec.container
        unsupported = unsupported_fields(self.task)
        if unsupported:
            raise FatalError(f"the process executor cannot honour {', '.join(unsupported)}; "
                             "run this service on a node with the docker executor")
        argv = self._argv()
        user = resolve_user(c.user, c.groups)
        parse_signal(c.stop_signal)
        cwd = c.dir or str(self.dir)
        if c.dir and not _isdir(c.dir):
            raise FatalError(f"the working directory {c.dir!r} does not exist")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        await self._write_secrets(user)
        self._write_configs(user)
        limits = self.task.spec.resources.limits if self.task.spec.resources else None
        memory = limits.memory_bytes if limits else 0
        nano_cpus = limits.nano_cpus if limits else 0
        cgroup_procs: list[str] = []
        rlimit_as: int | None = None
        if memory or nano_cpus:
            try:
                cgroup_procs = self.executor.cgroups.setup(self.task.id, memory, nano_cpus)
            except OSError as e:
                raise TemporaryError(f"setting up cgroups failed: {e}") from e
            if memory and not cgroup_procs:
                rlimit_as = memory
        env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "HOME": user.home,
               "HOSTNAME": c.hostname or self.executor.hostname}
        for kv in c.env:
            k, sep, v = kv.partition("=")
            if sep:
                env[k] = v
            elif k in os.environ:  # `-e NAME` without a value: docker takes the client's; we take ours
                env[k] = os.environ[k]
        env["SHOAL_SECRETS_DIR"] = str(self.secrets_dir)
        env["SHOAL_CONFIGS_DIR"] = str(self.configs_dir)
        spec = {"argv": argv, "env": env, "cwd": cwd, "uid": user.uid, "gid": user.gid,
                "groups": user.groups, "cgroup_procs": cgroup_procs, "rlimit_as": rlimit_as}
        network = self.executor.network
        if network is not None and self.task.networks:
            sandbox = await network.attach_process(self.task)
            if sandbox is not None:
                spec["netns"], spec["resolv_conf"] = sandbox.netns, sandbox.resolv_conf
        tmp = self.dir / "spec.json.tmp"
        tmp.write_text(json.dumps(spec))
        tmp.replace(self.dir / "spec.json")

    async def _write_secrets(self, user: _User) -> None:
        refs: tuple[SecretReference, ...] = self.task.spec.container.secrets
        d = self.secrets_dir
        d.mkdir(mode=0o700, exist_ok=True)
        _private_dir(d, user)
        if _is_root() and refs and not _ismount(d):
            total = sum(len(s.spec.data) for r in refs if (s := self.deps.secret(r.secret_id)))
            size = max(1 << 20, 2 * total + (64 << 10))
            proc = await asyncio.create_subprocess_exec(
                "mount", "-t", "tmpfs", "-o", f"mode=0700,size={size},noexec,nosuid,nodev", "tmpfs",
                str(d), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await proc.wait()  # on failure: a plain directory
            _private_dir(d, user)
        for ref in refs:
            secret = self.deps.secret(ref.secret_id)
            if secret is None:
                raise FatalError("unable to get secret from secret store")
            target = ref.file.name if ref.file else ref.secret_name
            self._write_file(d, target, secret.spec.data, ref.file.mode if ref.file else 0o444,
                             ref.file.uid if ref.file else "0", ref.file.gid if ref.file else "0", user)

    def _write_configs(self, user: _User) -> None:
        refs: tuple[ConfigReference, ...] = self.task.spec.container.configs
        d = self.configs_dir
        d.mkdir(mode=0o700, exist_ok=True)
        _private_dir(d, user)
        for ref in refs:
            if ref.runtime:
                continue
            config = self.deps.config(ref.config_id)
            if config is None:
                raise FatalError("unable to get config from config store")
            target = ref.file.name if ref.file else "/" + ref.config_name
            self._write_file(d, target, config.spec.data, ref.file.mode if ref.file else 0o444,
                             ref.file.uid if ref.file else "0", ref.file.gid if ref.file else "0", user)

    @staticmethod
    def _write_file(base: Path, target: str, data: bytes, mode: int, uid: str, gid: str, user: _User) -> None:
        path = base / _safe_rel(target)
        parent = base
        for part in path.parent.relative_to(base).parts:
            parent = parent / part
            parent.mkdir(mode=0o700, exist_ok=True)
            _private_dir(parent, user)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        if _is_root():
            os.chown(tmp, int(uid) if uid.isdigit() else 0, int(gid) if gid.isdigit() else 0)
        os.chmod(tmp, mode & 0o7777)
        tmp.replace(path)

    # -- start / wait / stop --

    async def start(self) -> None:
        if self._state() is not None:
            self._ensure_health()
            return  # already started (adopted)
        if not (self.dir / "spec.json").exists():
            raise FatalError("task not prepared")
        proc = await asyncio.create_subprocess_exec(
            self.executor.python, "-m", "shoal.agent.exec.shim", str(self.dir),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), SHIM_START_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise FatalError("starting container failed: the process supervisor did not start") from None
        if proc.returncode != 0:
            raise FatalError(err.decode(errors="replace").strip() or "starting container failed")
        self._ensure_health()

    async def wait(self) -> ExitStatus:
        state = self._state()
        if state is None:
            raise FatalError("task not started")
        self._ensure_health()
        shim_pid, shim_start = int(state["shim_pid"]), state.get("shim_start")
        exited = asyncio.ensure_future(_wait_pid(shim_pid, shim_start, self.clock, None))
        unhealthy = asyncio.ensure_future(self._unhealthy.wait())
        try:
            await asyncio.wait({exited, unhealthy}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            unhealthy.cancel()
        if self._unhealthy.is_set():
            await self.shutdown(self._grace())
            code = _read_exit(self.dir)
            if code:
                raise FatalError(f"task: non-zero exit ({code}): {UNHEALTHY}")
            raise FatalError(UNHEALTHY)
        code = _read_exit(self.dir)
        if code is None:
            # The shim died without recording the exit (someone killed it); wait for the command itself.
            await _wait_pid(int(state["pid"]), state.get("pid_start"), self.clock, None)
            raise FatalError("task: the process supervisor exited without recording an exit status")
        if code == 0:
            return ExitStatus(exit_code=0)
        return ExitStatus(exit_code=code, message=f"task: non-zero exit ({code})",
                          oom_killed=self.executor.cgroups.oom_killed(self.task.id))

    def _grace(self) -> float:
        ns = self.task.spec.container.stop_grace_period
        return DEFAULT_GRACE if ns is None else ns / SECOND

    async def shutdown(self, grace_period: float) -> None:
        state = self._state()
        if not self._running(state):
            return
        assert state is not None
        sig = parse_signal(self.task.spec.container.stop_signal)
        shim_pid, shim_start = int(state["shim_pid"]), state.get("shim_start")
        pid, pid_start = int(state["pid"]), state.get("pid_start")
        if sig in (signal.SIGKILL, signal.SIGSTOP) or not _alive(shim_pid, shim_start):
            if _alive(pid, pid_start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(shim_pid, sig)  # the shim forwards it to the process group
        if await self._wait_gone(state, grace_period):
            return
        await self.terminate()

    async def _wait_gone(self, state: dict[str, Any], limit: float) -> bool:
        shim_pid, shim_start = int(state["shim_pid"]), state.get("shim_start")
        pid, pid_start = int(state["pid"]), state.get("pid_start")
        if _alive(shim_pid, shim_start):
            return await _wait_pid(shim_pid, shim_start, self.clock, limit)
        return await _wait_pid(pid, pid_start, self.clock, limit)

    async def terminate(self) -> None:
        state = self._state()
        if not self._running(state):
            return
        assert state is not None
        pid, pid_start = int(state["pid"]), state.get("pid_start")
        if _alive(pid, pid_start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if not await self._wait_gone(state, KILL_TIMEOUT):
            raise TemporaryError("the process did not exit after SIGKILL")

    async def remove(self) -> None:
        await self.close()
        if self._running(self._state()):
            await self.terminate()
        if _ismount(self.secrets_dir):
            proc = await asyncio.create_subprocess_exec(
                "umount", str(self.secrets_dir), stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            if await proc.wait() != 0:
                raise TemporaryError(f"unmounting {self.secrets_dir} failed")
        self.executor.cgroups.remove(self.task.id)
        if self.executor.network is not None:
            await self.executor.network.detach(self.task.id)
        shutil.rmtree(self.dir, ignore_errors=True)

    async def inspect(self) -> RuntimeStatus:
        if not (self.dir / "spec.json").exists():
            return RuntimeStatus(exists=False)
        state = self._state()
        if state is None:
            return RuntimeStatus(exists=True, container_id=self.task.id)
        code = _read_exit(self.dir)
        running = code is None and self._running(state)
        return RuntimeStatus(exists=True, running=running, exit_code=code, container_id=self.task.id,
                             pid=int(state["pid"]) if running else 0, healthy=self._healthy)

    # -- health --

    def _health_config(self) -> HealthConfig | None:
        hc = self.task.spec.container.healthcheck
        if hc is None or not hc.test or hc.test[0] == "NONE":
            return None
        return hc

    def _ensure_health(self) -> None:
        hc = self._health_config()
        if hc is None or self._health_task is not None:
            return
        self._health_task = asyncio.ensure_future(self._health_loop(hc))

    async def _health_loop(self, hc: HealthConfig) -> None:
        interval = (hc.interval or 30 * SECOND) / SECOND
        start_interval = (hc.start_interval or 5 * SECOND) / SECOND
        timeout = (hc.timeout or 30 * SECOND) / SECOND
        retries = hc.retries or 3
        start_period = hc.start_period / SECOND
        began = self.clock.monotonic()
        failures = 0
        while True:
            in_start = self._healthy is None and self.clock.monotonic() - began < start_period
            await self.clock.sleep(start_interval if in_start else interval)
            if not self._running(self._state()):
                return
            in_start = self._healthy is None and self.clock.monotonic() - began < start_period
            if await self._probe(hc, timeout):
                failures = 0
                self._healthy = True
                continue
            if in_start:
                continue
            failures += 1
            if failures >= retries:
                self._healthy = False
                self._unhealthy.set()
                return

    async def _probe(self, hc: HealthConfig, limit: float) -> bool:
        if hc.test[0] == "CMD":
            argv = list(hc.test[1:])
        elif hc.test[0] == "CMD-SHELL":
            argv = ["/bin/sh", "-c", " ".join(hc.test[1:])]
        else:
            return False
        if not argv:
            return False
        try:
            spec = json.loads((self.dir / "spec.json").read_bytes())
            netns, resolv = spec.get("netns"), spec.get("resolv_conf")
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, cwd=spec["cwd"], env=spec["env"],
                user=spec.get("uid"), group=spec.get("gid"), start_new_session=True,
                preexec_fn=(lambda: nsutil.enter(netns, resolv)) if netns else None)
        except (OSError, ValueError):
            return False
        done = asyncio.ensure_future(proc.wait())
        timer = asyncio.ensure_future(self.clock.sleep(limit))
        try:
            await asyncio.wait({done, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if not done.done():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await done
            return False
        return done.result() == 0

    # -- logs --

    async def logs(self, options: LogOptions) -> AsyncIterator[LogLine]:
        path = self.dir / "log.jsonl"
        streams = {s for s, on in (("stdout", options.stdout), ("stderr", options.stderr)) if on}

        def keep(rec: dict[str, Any]) -> bool:
            return rec["s"] in streams and (not options.since or rec["t"] >= options.since)

        def line(rec: dict[str, Any]) -> LogLine:
            return LogLine(stream=rec["s"], timestamp=rec["t"],
                           data=rec["d"].encode("utf-8", "surrogateescape"))

        def past_until(rec: dict[str, Any]) -> bool:
            return bool(options.until) and rec["t"] > options.until

        recs, offset = _read_log(path, 0)
        selected = [r for r in recs if keep(r)]
        if options.tail is not None:
            selected = selected[len(selected) - options.tail:] if options.tail > 0 else []
        for r in selected:
            if past_until(r):
                return
            yield line(r)
        if not options.follow:
            return
        while True:
            finished = not self._running(self._state()) and (self.dir / "state.json").exists()
            recs, offset = _read_log(path, offset)
            for r in recs:
                if past_until(r):
                    return
                if keep(r):
                    yield line(r)
            if finished and not recs:
                return
            if not (self.dir / "spec.json").exists():
                return  # removed
            if options.until and self.clock.now() > options.until:
                return  # following ends at `until` even when no line comes after it
            if not recs:
                await self.clock.sleep(LOG_POLL_INTERVAL)

    async def usage(self) -> U.RawUsage | None:
        """The task's cgroup when it has one (a task with limits), the rest from its command's process tree."""
        state = self._state()
        if not self._running(state):
            return None
        assert state is not None
        pid, start = int(state["pid"]), state.get("pid_start")

        def read() -> U.RawUsage | None:
            try:
                own = self.executor.cgroups.usage(self.task.id)
                if own is not None and own.cpu_seconds is not None and own.memory_bytes is not None:
                    return own
                return U.merge(own, U.tree_usage(pid, self.executor.proc_table(), start))
            except OSError:
                return None

        return await asyncio.to_thread(read)

    async def close(self) -> None:
        t, self._health_task = self._health_task, None
        if t is not None:
            await cancel_and_wait(t)


# --- the executor -------------------------------------------------------------------------------


class ProcessExecutor:
    """Runs tasks as supervised processes; everything lives under `root` (see the module docstring)."""

    def __init__(self, root: Path, *, hostname: str | None = None, clock: Clock | None = None,
                 cgroup_parent: str = "shoal", python: str | None = None, network: Any = None) -> None:
        self.root = Path(root)
        # shoal.net.agent.NetworkAgent: tasks with networks run in a namespace attached to them (None: in
        # the agent's own network, as without networking)
        self.network = network
        self.hostname = hostname or socket.gethostname()
        self.clock: Clock = clock or SystemClock()
        self.cgroups = _Cgroups(cgroup_parent)
        self.python = python or sys.executable
        self._procs: tuple[float, dict[int, Any]] | None = None  # (monotonic time, /proc table)
        (self.root / "tasks").mkdir(parents=True, exist_ok=True)

    def task_dir(self, task_id: str) -> Path:
        if not task_id or "/" in task_id or task_id in (".", ".."):
            raise FatalError(f"invalid task ID {task_id!r}")
        return self.root / "tasks" / task_id

    async def describe(self) -> NodeDescription:
        memory = mem_total()
        return NodeDescription(
            hostname=self.hostname,
            platform=Platform(architecture=platform.machine(), os="linux"),  # uname's, as dockerd
            resources=Resources(nano_cpus=(os.cpu_count() or 1) * SECOND, memory_bytes=memory),
            engine=EngineDescription(engine_version=ENGINE_VERSION, labels={}, plugins=()))

    def controller(self, task: Task, deps: DependencyGetter) -> ProcessController:
        return ProcessController(self, task, deps)

    def proc_table(self) -> dict[int, Any]:
        """The host's processes, read once for all the tasks measured at one time (kept for a second)."""
        now = self.clock.monotonic()
        if self._procs is None or now - self._procs[0] > 1.0 or now < self._procs[0]:
            self._procs = (now, U.proc_table())
        return self._procs[1]

    async def list_task_ids(self) -> set[str]:
        try:
            return {p.name for p in (self.root / "tasks").iterdir() if p.is_dir()}
        except FileNotFoundError:
            return set()

    async def close(self) -> None:
        pass
