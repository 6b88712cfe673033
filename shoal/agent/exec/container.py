"""Pure translation from a Task to the Engine API's container-create body (Config + HostConfig).

No I/O here: `shoal.agent.exec.docker` calls `create_body` and sends the result to
`POST /containers/create`. The shapes follow what dockerd's own swarm executor produces
(moby daemon/cluster/executor/container/container.go), so `docker inspect` of a Shoal task container
looks like one made by Swarm mode.

Pass-through sub-objects of `ContainerSpec` (mounts, ulimits, dns_config, privileges) are the Engine
API's JSON shapes (PascalCase keys: `{"Type": "bind", "Source": ..., "Target": ..., "ReadOnly": ...}`,
`{"Name": "nofile", "Soft": 1, "Hard": 2}`, `{"Nameservers": [...], "Search": [...], "Options": [...]}`,
`{"NoNewPrivileges": true, "Seccomp": {"Mode": "unconfined"}, ...}`); snake_case keys are accepted too.
"""

from __future__ import annotations

import base64
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.errors import FatalError
from shoal.model.objects import (
    SECOND,
    ConfigReference,
    HealthConfig,
    SecretReference,
    Task,
)

SYSTEM_LABEL_PREFIX = "com.docker.swarm"
LABEL_TASK = "com.docker.swarm.task"
LABEL_TASK_ID = "com.docker.swarm.task.id"
LABEL_TASK_NAME = "com.docker.swarm.task.name"
LABEL_NODE_ID = "com.docker.swarm.node.id"
LABEL_SERVICE_ID = "com.docker.swarm.service.id"
LABEL_SERVICE_NAME = "com.docker.swarm.service.name"
# Which Shoal node owns the container: several Shoal nodes may share one dockerd (tests do).
LABEL_SHOAL_NODE_ID = "com.shoal.node.id"

SECRETS_DIR = "/run/secrets"

# moby daemon/cluster/executor/container/errors.go
ERR_IMAGE_REQUIRED = "dockerexec: image required"
ERR_CONTAINER_DESTROYED = "dockerexec: container destroyed"
ERR_CONTAINER_UNHEALTHY = "dockerexec: unhealthy container"


@dataclass(frozen=True, slots=True, kw_only=True)
class FileMount:
    """A file written on the host (secret or config) and bind-mounted read-only into the container."""

    source: str  # absolute host path
    target: str  # absolute path inside the container


# --- names -------------------------------------------------------------------------------------


def container_name(task: Task) -> str:
    """`<service>.<slot>.<task id>`, or `<service>.<node id>.<task id>` for global services (slot 0).
    The orchestrator's task annotation name wins when set, as in moby."""
    if task.annotations.name:
        return task.annotations.name
    slot = str(task.slot) if task.slot else task.node_id
    return f"{task.service_annotations.name}.{slot}.{task.id}"


def split_digest(image: str) -> tuple[str, str]:
    """`name:tag@sha256:abc` -> (`name:tag`, `sha256:abc`); no digest -> (image, "")."""
    name, sep, digest = image.partition("@")
    return (name, digest) if sep else (image, "")


def _has_tag(name: str) -> bool:
    last = name.rsplit("/", 1)[-1]
    return ":" in last


def image_ref(image: str) -> str:
    """The reference to create the container from: a tag is added when there is neither a tag nor a
    digest (`busybox` -> `busybox:latest`), as moby's `reference.TagNameOnly` does."""
    name, digest = split_digest(image)
    if digest:
        return image
    if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
        return name  # a bare image ID
    if name.startswith("sha256:"):
        return name
    return name if _has_tag(name) else name + ":latest"


def secret_target(ref: SecretReference) -> str:
    name = ref.file.name if ref.file is not None and ref.file.name else ref.secret_name
    return name if posixpath.isabs(name) else posixpath.join(SECRETS_DIR, name)


def config_target(ref: ConfigReference) -> str:
    name = ref.file.name if ref.file is not None and ref.file.name else ref.config_name
    return name if posixpath.isabs(name) else "/" + name


# --- pieces ------------------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Read a PascalCase Engine-API key, accepting snake_case/lowercase spellings too."""
    if key in obj:
        return obj[key]
    snake = "".join("_" + c.lower() if c.isupper() else c for c in key).lstrip("_")
    if snake in obj:
        return obj[snake]
    low = key.lower()
    if low in obj:
        return obj[low]
    return default


def labels(task: Task, node_id: str) -> dict[str, str]:
    out: dict[str, str] = dict(task.spec.container.labels)
    out.update(task.annotations.labels)
    out.update(
        {
            LABEL_TASK: "",
            LABEL_TASK_ID: task.id,
            LABEL_TASK_NAME: container_name(task),
            LABEL_NODE_ID: task.node_id or node_id,
            LABEL_SERVICE_ID: task.service_id,
            LABEL_SERVICE_NAME: task.service_annotations.name,
            LABEL_SHOAL_NODE_ID: node_id or task.node_id,
        }
    )
    return out


def healthcheck(hc: HealthConfig) -> dict[str, Any]:
    return {
        "Test": list(hc.test),
        "Interval": hc.interval,
        "Timeout": hc.timeout,
        "Retries": hc.retries,
        "StartPeriod": hc.start_period,
        "StartInterval": hc.start_interval,
    }


_MOUNT_TYPES = {"bind", "volume", "tmpfs", "npipe"}


def mount(m: Mapping[str, Any]) -> dict[str, Any]:
    typ = str(_get(m, "Type", "") or "volume").lower()
    if typ == "cluster":
        raise FatalError("cluster volumes are not supported by Shoal")
    if typ not in _MOUNT_TYPES:
        raise FatalError(f"invalid mount type: {typ}")
    out: dict[str, Any] = {"Type": typ, "Target": _get(m, "Target", "")}
    source = _get(m, "Source", "")
    if source:
        out["Source"] = source
    if _get(m, "ReadOnly", False):
        out["ReadOnly"] = True
    consistency = _get(m, "Consistency", "")
    if consistency:
        out["Consistency"] = consistency
    bind = _get(m, "BindOptions")
    if bind:
        opts: dict[str, Any] = {}
        for key in (
            "Propagation",
            "NonRecursive",
            "CreateMountpoint",
            "ReadOnlyNonRecursive",
            "ReadOnlyForceRecursive",
        ):
            v = _get(bind, key)
            if v:
                opts[key] = v.lower() if key == "Propagation" else v
        out["BindOptions"] = opts
    vol = _get(m, "VolumeOptions")
    if vol:
        vopts: dict[str, Any] = {}
        if _get(vol, "NoCopy", False):
            vopts["NoCopy"] = True
        if _get(vol, "Labels"):
            vopts["Labels"] = dict(_get(vol, "Labels"))
        if _get(vol, "Subpath"):
            vopts["Subpath"] = _get(vol, "Subpath")
        driver = _get(vol, "DriverConfig")
        if driver:
            dc: dict[str, Any] = {"Name": _get(driver, "Name", "")}
            if _get(driver, "Options"):
                dc["Options"] = dict(_get(driver, "Options"))
            vopts["DriverConfig"] = dc
        out["VolumeOptions"] = vopts
    tmpfs = _get(m, "TmpfsOptions")
    if tmpfs:
        topts: dict[str, Any] = {}
        if _get(tmpfs, "SizeBytes"):
            topts["SizeBytes"] = int(_get(tmpfs, "SizeBytes"))
        if _get(tmpfs, "Mode"):
            topts["Mode"] = int(_get(tmpfs, "Mode"))
        if _get(tmpfs, "Options"):
            topts["Options"] = [list(o) for o in _get(tmpfs, "Options")]
        out["TmpfsOptions"] = topts
    return out


def extra_hosts(hosts: Sequence[str]) -> list[str]:
    """hosts(5) lines `IP name [aliases...]` -> HostConfig.ExtraHosts `name:IP` (one per name)."""
    out: list[str] = []
    for entry in hosts:
        parts = entry.split()
        if len(parts) < 2:
            continue
        ip = parts[0]
        out.extend(f"{name}:{ip}" for name in parts[1:])
    return out


def _seccomp_profile(raw: Any) -> str:
    """The Engine API's Seccomp.Profile is a Go []byte, i.e. base64 text in JSON."""
    if isinstance(raw, bytes | bytearray):
        return bytes(raw).decode()
    text = str(raw or "")
    try:
        return base64.b64decode(text, validate=True).decode()
    except ValueError:
        return text


def security_opts(privileges: Mapping[str, Any] | None) -> list[str]:
    """Privileges (Engine API shape) -> HostConfig.SecurityOpt, as moby's applyPrivileges does."""
    if not privileges:
        return []
    out: list[str] = []
    cred = _get(privileges, "CredentialSpec")
    if cred:
        for key, scheme in (("File", "file"), ("Registry", "registry"), ("Config", "config")):
            v = _get(cred, key)
            if v:
                out.append(f"credentialspec={scheme}://{v}")
                break
    selinux = _get(privileges, "SELinuxContext")
    if selinux:
        if _get(selinux, "Disable", False):
            out.append("label=disable")
        for key in ("User", "Role", "Level", "Type"):
            v = _get(selinux, key)
            if v:
                out.append(f"label={key.lower()}:{v}")
    seccomp = _get(privileges, "Seccomp")
    if seccomp:
        mode = str(_get(seccomp, "Mode", "default") or "default").lower()
        if mode == "unconfined":
            out.append("seccomp=unconfined")
        elif mode == "custom":
            out.append(f"seccomp={_seccomp_profile(_get(seccomp, 'Profile', ''))}")
        elif mode != "default":
            raise FatalError(f"unknown seccomp mode: {mode}")
    apparmor = _get(privileges, "AppArmor") or _get(privileges, "Apparmor")
    if apparmor:
        mode = str(_get(apparmor, "Mode", "default") or "default").lower()
        if mode == "disabled":
            out.append("apparmor=unconfined")
        elif mode != "default":
            raise FatalError(f"unknown apparmor mode: {mode}")
    if _get(privileges, "NoNewPrivileges", False):
        out.append("no-new-privileges=true")
    return out


def port_bindings(task: Task) -> tuple[dict[str, Any], dict[str, list[dict[str, str]]]]:
    """Host-mode published ports -> (Config.ExposedPorts, HostConfig.PortBindings). Ingress-mode
    ports are the routing mesh's business, not the container's."""
    exposed: dict[str, Any] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    if task.endpoint is None:
        return exposed, bindings
    for p in task.endpoint.ports:
        if p.publish_mode != "host" or not 0 < p.target_port <= 65535:
            continue
        key = f"{p.target_port}/{p.protocol or 'tcp'}"
        exposed[key] = {}
        binding: dict[str, str] = {}
        if p.published_port:
            binding["HostPort"] = str(p.published_port)
        bindings[key] = [binding]
    return exposed, bindings


def stop_timeout_seconds(grace_ns: int) -> int:
    """Nanoseconds -> the Engine's whole seconds, rounding up (a 1.5s grace period waits 2s)."""
    return -(-grace_ns // SECOND)


# --- the body ----------------------------------------------------------------------------------


def create_body(
    task: Task,
    *,
    node_id: str = "",
    files: Sequence[FileMount] = (),
    image: str | None = None,
) -> dict[str, Any]:
    """The JSON body of `POST /containers/create?name=<container_name(task)>`.

    `node_id` is the Shoal node running the task (defaults to `task.node_id`); `files` are the secret
    and config files already written on the host; `image` overrides the image reference (the executor
    passes the one it found locally, e.g. without a digest)."""
    spec = task.spec.container
    if not spec.image:
        raise FatalError(ERR_IMAGE_REQUIRED)
    node_id = node_id or task.node_id

    config: dict[str, Any] = {
        "Image": image if image is not None else image_ref(spec.image),
        "Labels": labels(task, node_id),
        "Env": list(spec.env),
        "Tty": spec.tty,
        "OpenStdin": spec.open_stdin,
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
    }
    if spec.command:
        # Command replaces the image's whole invocation; Args then become its arguments.
        config["Entrypoint"] = list(spec.command)
        config["Cmd"] = list(spec.args)
    elif spec.args:
        config["Cmd"] = list(spec.args)
    if spec.dir:
        config["WorkingDir"] = spec.dir
    if spec.user:
        config["User"] = spec.user
    if spec.hostname:
        config["Hostname"] = spec.hostname
    if spec.stop_signal:
        config["StopSignal"] = spec.stop_signal
    if spec.stop_grace_period is not None:
        config["StopTimeout"] = stop_timeout_seconds(spec.stop_grace_period)
    if spec.healthcheck is not None:
        config["Healthcheck"] = healthcheck(spec.healthcheck)
    exposed, bindings = port_bindings(task)
    if exposed:
        config["ExposedPorts"] = exposed

    host: dict[str, Any] = {}
    mounts = [mount(m) for m in spec.mounts]
    mounts.extend({"Type": "bind", "Source": f.source, "Target": f.target, "ReadOnly": True} for f in files)
    if mounts:
        host["Mounts"] = mounts
    if bindings:
        host["PortBindings"] = bindings
    if spec.groups:
        host["GroupAdd"] = list(spec.groups)
    if spec.read_only:
        host["ReadonlyRootfs"] = True
    if spec.isolation:
        host["Isolation"] = spec.isolation
    if spec.init is not None:
        host["Init"] = spec.init
    if spec.sysctls:
        host["Sysctls"] = dict(spec.sysctls)
    if spec.capability_add:
        host["CapAdd"] = list(spec.capability_add)
    if spec.capability_drop:
        host["CapDrop"] = list(spec.capability_drop)
    if spec.oom_score_adj:
        host["OomScoreAdj"] = spec.oom_score_adj
    if spec.ulimits:
        host["Ulimits"] = [
            {"Name": _get(u, "Name", ""), "Soft": int(_get(u, "Soft", 0)), "Hard": int(_get(u, "Hard", 0))}
            for u in spec.ulimits
        ]
    if spec.dns_config:
        dns = spec.dns_config
        if _get(dns, "Nameservers"):
            host["Dns"] = list(_get(dns, "Nameservers"))
        if _get(dns, "Search"):
            host["DnsSearch"] = list(_get(dns, "Search"))
        if _get(dns, "Options"):
            host["DnsOptions"] = list(_get(dns, "Options"))
    hosts = extra_hosts(spec.hosts)
    if hosts:
        host["ExtraHosts"] = hosts
    sec = security_opts(spec.privileges)
    if sec:
        host["SecurityOpt"] = sec
    log_driver = task.spec.log_driver
    if log_driver is not None and log_driver.name:
        host["LogConfig"] = {"Type": log_driver.name, "Config": dict(log_driver.options)}

    res = task.spec.resources
    if res is not None:
        if res.limits is not None:
            if res.limits.nano_cpus > 0:
                host["NanoCpus"] = res.limits.nano_cpus
            if res.limits.memory_bytes > 0:
                host["Memory"] = res.limits.memory_bytes
            if res.limits.pids > 0:
                host["PidsLimit"] = res.limits.pids
        reserve = res.reservations.memory_bytes if res.reservations is not None else 0
        # dockerd refuses a reservation above the limit; Swarm accepts such specs, so drop it then.
        if reserve > 0 and reserve <= host.get("Memory", reserve):
            host["MemoryReservation"] = reserve

    config["HostConfig"] = host
    return config
