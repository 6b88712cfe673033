"""swarmkit's validation of service specs (controlapi/service.go: validateServiceSpec and what it calls), with
swarmkit's texts behind the gRPC prefix dockerd prints. The control API runs it on every create and update, so
the simulation exercises the same rules as the Engine API."""

from __future__ import annotations

import re

from shoal.api.messages import INVALID_ARGUMENT, rpc
from shoal.errors import InvalidArgument
from shoal.manager.cron.config import cron_config
from shoal.model.objects import GLOBAL, GLOBAL_JOB, REPLICATED, REPLICATED_JOB, Resources, ServiceSpec, TaskSpec

MIN_DURATION = 1_000_000  # 1ms, swarmkit's minimum for health check durations


def _rpc_invalid(desc: str) -> InvalidArgument:
    return InvalidArgument(rpc(INVALID_ARGUMENT, desc))


_DNS_NAME = re.compile(r"^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$")

# distribution/reference grammar (ParseNormalizedNamed)
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_HEX64 = re.compile(r"^[a-f0-9]{64}$")


def valid_image_reference(image: str) -> bool:
    """True if `image` parses as docker's normalized reference (busybox, a/b:1, h:5000/x@sha256:..)."""
    m = _REFERENCE.match(image)
    if m is None:
        return False
    if m.group("domain") is not None and not (
        "." in m.group("domain")
        or ":" in m.group("domain")
        or m.group("domain") == "localhost"
        or m.group("domain").startswith("[")
    ):
        # "a/b": treated as a path, so the "domain" must itself be a valid lowercase path component
        if not re.fullmatch(_PATH_COMPONENT, m.group("domain")):
            return False
    name = image.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    return not (_HEX64.match(name) or len(name) > 255)


# --- swarmkit validation -------------------------------------------------------------------------


def validate_service_spec(spec: ServiceSpec) -> None:
    """swarmkit's validateServiceSpec (controlapi/service.go), minus constraint parsing.

    Raises InvalidArgument with swarmkit's text behind the gRPC prefix dockerd prints.
    """
    name = spec.annotations.name
    if not name:
        raise _rpc_invalid("meta: name must be provided")
    if not _DNS_NAME.match(name):
        raise _rpc_invalid("name must be valid as a DNS name component")
    if len(name) > 63:
        raise _rpc_invalid("name must be 63 characters or fewer")
    validate_task_spec(spec.task_template)
    # validateMode: replicas are unsigned on the wire, so negatives fail at decoding already
    m = spec.mode
    if m.kind not in (REPLICATED, GLOBAL, REPLICATED_JOB, GLOBAL_JOB):
        raise _rpc_invalid("Unrecognized service mode")
    if m.kind == REPLICATED and m.replicas < 0:
        raise _rpc_invalid("Number of replicas must be non-negative")
    if m.kind == REPLICATED_JOB:
        if m.max_concurrent < 0:
            raise _rpc_invalid("Maximum concurrent jobs must not be negative")
        if m.total_completions < 0:
            raise _rpc_invalid("Total completed jobs must not be negative")
    if m.is_job:
        if spec.update_config is not None:
            raise _rpc_invalid("Jobs may not have an update config")
    elif (uc := spec.update_config) is not None:
        if uc.delay < 0:
            raise _rpc_invalid("TaskSpec: update-delay cannot be negative")
        if uc.monitor < 0:
            raise _rpc_invalid("TaskSpec: update-monitor cannot be negative")
        if uc.max_failure_ratio < 0 or uc.max_failure_ratio > 1:
            raise _rpc_invalid("TaskSpec: update-maxfailureratio cannot be less than 0 or bigger than 1")
    ep = spec.endpoint_spec
    if ep is not None:
        seen: set[tuple[int, str]] = set()
        for p in ep.ports:
            if ep.mode == "dnsrr" and p.publish_mode == "ingress":
                raise _rpc_invalid(
                    "EndpointSpec: port published with ingress mode can't be used with dnsrr mode"
                )
            if p.published_port == 0:
                continue
            key = (p.published_port, p.protocol)
            if key in seen:
                raise _rpc_invalid("EndpointSpec: duplicate published ports provided")
            seen.add(key)
    cron_config(spec)  # Shoal's own: swarm-cronjob's labels and com.shoal.cron.* must parse (shoal.manager.cron)


def _validate_resources(r: Resources | None) -> None:
    if r is None:
        return
    if r.nano_cpus != 0 and r.nano_cpus < 1_000_000:
        raise _rpc_invalid(f"invalid cpu value {_go_g(r.nano_cpus / 1e9)}: Must be at least 0.001")
    if r.memory_bytes != 0 and r.memory_bytes < 4 * 1024 * 1024:
        raise _rpc_invalid(f"invalid memory value {r.memory_bytes}: Must be at least 4MiB")


def _go_g(x: float) -> str:
    """Go's %g for the small values this is used with (1e-08, 0.0005)."""
    s = f"{x:g}"
    if "e" in s:
        mant, exp = s.split("e")
        sign = exp[0]
        digits = exp[1:].lstrip("0").rjust(2, "0")
        s = f"{mant}e{sign}{digits}"
    return s


def _go_duration(ns: int) -> str:
    if ns == 1_000_000:
        return "1ms"
    return f"{ns}ns"


def validate_task_spec(ts: TaskSpec) -> None:
    if ts.resources is not None:
        _validate_resources(ts.resources.limits)
        _validate_resources(ts.resources.reservations)
    rp = ts.restart_policy
    if rp is not None:
        if rp.delay is not None and rp.delay < 0:
            raise _rpc_invalid("TaskSpec: restart-delay cannot be negative")
        if rp.window is not None and rp.window < 0:
            raise _rpc_invalid("TaskSpec: restart-window cannot be negative")
    c = ts.container
    targets: dict[str, str] = {}
    for s in c.secrets:
        if not s.secret_id or not s.secret_name:
            raise _rpc_invalid("malformed secret reference")
        if s.file is None:
            raise _rpc_invalid("malformed secret reference, no target provided")
        if not s.file.name:
            raise _rpc_invalid("malformed file secret reference, invalid target file name provided")
        if s.file.name in targets:
            raise _rpc_invalid(
                f"secret references '{targets[s.file.name]}' and '{s.secret_name}' have a "
                f"conflicting target: '{s.file.name}'"
            )
        targets[s.file.name] = s.secret_name
    cred_config = ""
    if isinstance(c.privileges, dict):
        cs = c.privileges.get("CredentialSpec")
        if isinstance(cs, dict):
            cred_config = str(cs.get("Config") or "")
    found = False
    ctargets: dict[str, str] = {}
    for r in c.configs:
        if not r.config_id or not r.config_name:
            raise _rpc_invalid("malformed config reference")
        if r.file is None and not r.runtime:
            raise _rpc_invalid("malformed config reference, no target provided")
        if r.file is not None:
            if not r.file.name:
                raise _rpc_invalid("malformed file config reference, invalid target file name provided")
            if r.file.name in ctargets:
                raise _rpc_invalid(
                    f"config references '{ctargets[r.file.name]}' and '{r.config_name}' have a "
                    f"conflicting target: '{r.file.name}'"
                )
            ctargets[r.file.name] = r.config_name
        if r.runtime and r.config_id == cred_config:
            found = True
    if cred_config and not found:
        raise _rpc_invalid(
            f"CredentialSpec references config '{cred_config}', but that config isn't in config "
            "references with RuntimeTarget"
        )
    if not c.image:
        raise _rpc_invalid("ContainerSpec: image reference must be provided")
    if "{{" not in c.image and not valid_image_reference(c.image):
        raise _rpc_invalid(f'ContainerSpec: "{c.image}" is not a valid repository/tag')
    seen: set[str] = set()
    for m in c.mounts:
        t = m.get("Target", "") if isinstance(m, dict) else ""
        if t in seen:
            raise _rpc_invalid(f"ContainerSpec: duplicate mount point: {t}")
        seen.add(t)
    hc = c.healthcheck
    if hc is not None:
        for label, v in (
            ("Interval", hc.interval),
            ("Timeout", hc.timeout),
            ("StartPeriod", hc.start_period),
            ("StartInterval", hc.start_interval),
        ):
            if v != 0 and v < MIN_DURATION:
                raise _rpc_invalid(
                    f"ContainerSpec: {label} in HealthConfig cannot be less than {_go_duration(MIN_DURATION)}"
                )
        if hc.retries < 0:
            raise _rpc_invalid("ContainerSpec: Retries in HealthConfig cannot be negative")
