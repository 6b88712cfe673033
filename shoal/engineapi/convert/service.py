"""ServiceSpec / Service / Task between Engine API JSON and the domain model.

Wire -> domain follows dockerd in two stages, in dockerd's order, so the first error reported is the one
dockerd reports:

1. dockerd's own conversion (moby daemon/cluster/convert ServiceSpecToGRPC): Go decoding errors
   ("invalid JSON: json: cannot unmarshal ..."), and plain messages such as
   `invalid RestartCondition: "sometimes"`, `unrecognized update order sideways`,
   `must specify only one service mode`, `mismatched Runtime and *Spec fields`, `unsupported runtime`.
2. swarmkit's validateServiceSpec, printed with the gRPC prefix:
   `rpc error: code = InvalidArgument desc = ContainerSpec: image reference must be provided`.

All are `InvalidArgument` (HTTP 400). Placement constraints are carried, not parsed (the scheduler's
constraint parser validates them; dockerd answers 500 `rpc error: code = Unknown desc = constraint
expected one operator from ==, !=` for a bad one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shoal.engineapi.convert._wire import Obj, go_time, meta, put, version
from shoal.errors import InvalidArgument, ShoalError
from shoal.manager.cron.config import LAST_RUN, NEXT_RUN, SHOWN_LABELS, enabled
from shoal.model.objects import (
    DEFAULT_RESTART_DELAY,
    DEFAULT_UPDATE_MONITOR,
    GLOBAL,
    GLOBAL_JOB,
    REPLICATED,
    REPLICATED_JOB,
    SECOND,
    Annotations,
    ConfigReference,
    ContainerSpec,
    EndpointSpec,
    FileTarget,
    GenericResource,
    HealthConfig,
    LogDriver,
    Network,
    NetworkAttachmentConfig,
    Placement,
    Platform,
    PortConfig,
    ResourceRequirements,
    Resources,
    RestartPolicy,
    SecretReference,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskSpec,
    UpdateConfig,
)

JSONDict = dict[str, Any]


# --- wire -> domain ------------------------------------------------------------------------------

_RESTART_CONDITIONS = {"none": "none", "on-failure": "on-failure", "any": "any", "": "any"}
_FAILURE_ACTIONS = {"pause": "pause", "": "pause", "continue": "continue", "rollback": "rollback"}
_ORDERS = {"stop-first": "stop-first", "": "stop-first", "start-first": "start-first"}
_MOUNT_TYPES = {"bind", "volume", "tmpfs", "npipe", "cluster"}
_PROPAGATIONS = {"rprivate", "private", "rshared", "shared", "rslave", "slave"}
_PROTOCOLS = {"tcp", "udp", "sctp"}
_PUBLISH_MODES = {"ingress", "host"}
_ISOLATIONS = {"default", "process", "hyperv"}


def _version_lt(v: str | None, than: str) -> bool:
    if not v:
        return False
    try:
        a = tuple(int(x) for x in v.split("."))
        b = tuple(int(x) for x in than.split("."))
    except ValueError:
        return False
    return a < b


def service_spec_from_wire(
    body: Any,
    *,
    api_version: str | None = None,
    name_generator: Callable[[], str] | None = None,
) -> ServiceSpec:
    """Decode a POST /services/create or /services/{id}/update body (a ServiceSpec); swarmkit's validation of
    it is the control API's (shoal.manager.validation).

    Unknown keys are ignored and keys match case-insensitively, as dockerd's Go decoder does.
    `api_version` is the client's negotiated version (fields newer than it are dropped, as dockerd does).
    An empty Name is replaced by `name_generator()` (dockerd generates a random name).
    """
    root = Obj.root(body, "ServiceSpec")
    name = root.string("Name")
    labels = root.str_map("Labels")
    tt = root.obj("TaskTemplate", "TaskSpec") or Obj({}, "TaskSpec", "TaskTemplate")

    # --- dockerd convert stage ---
    networks = _networks(tt)
    if not networks and (legacy := list(root.objs("Networks", "NetworkAttachmentConfig"))):
        networks = tuple(_network_attachment(n) for n in legacy)
    resources = _resources(tt, api_version)
    runtime = tt.string("Runtime")
    cs_obj = tt.obj("ContainerSpec", "ContainerSpec")
    if runtime in ("container", ""):
        if cs_obj is None:
            raise InvalidArgument("mismatched Runtime and *Spec fields")
        container = _container_spec(cs_obj, api_version)
    elif runtime == "plugin":
        if tt.get("PluginSpec") is None:
            raise InvalidArgument("mismatched Runtime and *Spec fields")
        # A plain error in dockerd (daemon/cluster/services.go): 500.
        raise ShoalError('runtime type "plugin" only supported in experimental')
    else:
        raise InvalidArgument("unsupported runtime")
    restart = _restart_policy(tt.obj("RestartPolicy", "RestartPolicy"))
    placement = _placement(tt.obj("Placement", "Placement"), api_version)
    log_driver = _log_driver(tt.obj("LogDriver", "Driver"))
    update = _update_config(root.obj("UpdateConfig", "UpdateConfig"))
    rollback = _update_config(root.obj("RollbackConfig", "UpdateConfig"))
    endpoint = _endpoint_spec(root.obj("EndpointSpec", "EndpointSpec"))
    mode = _mode(root.obj("Mode", "ServiceMode") or Obj({}, "ServiceMode", "Mode"), api_version)

    if not name and name_generator is not None:
        name = name_generator()

    # The cron labels Shoal shows are not the user's: a spec read, changed and sent back does not store them.
    labels = {k: v for k, v in labels.items() if k not in SHOWN_LABELS}
    spec = ServiceSpec(
        annotations=Annotations(name=name, labels=labels),
        task_template=TaskSpec(
            container=container,
            resources=resources,
            restart_policy=restart,
            placement=placement,
            force_update=tt.integer("ForceUpdate", "uint64"),
            runtime="container",
            networks=networks,
            log_driver=log_driver,
        ),
        mode=mode,
        update_config=update,
        rollback_config=rollback,
        endpoint_spec=endpoint,
    )
    return spec


def _network_attachment(n: Obj) -> NetworkAttachmentConfig:
    return NetworkAttachmentConfig(
        target=n.string("Target"), aliases=n.str_list("Aliases"), driver_opts=n.str_map("DriverOpts")
    )


def _networks(tt: Obj) -> tuple[NetworkAttachmentConfig, ...]:
    return tuple(_network_attachment(n) for n in tt.objs("Networks", "NetworkAttachmentConfig"))


def _res(o: Obj | None, *, limit: bool) -> Resources | None:
    if o is None:
        return None
    generic: list[GenericResource] = []
    if not limit:
        for g in o.objs("GenericResources", "GenericResource"):
            named = g.obj("NamedResourceSpec", "NamedGenericResource")
            discrete = g.obj("DiscreteResourceSpec", "DiscreteGenericResource")
            if named is not None:
                generic.append(GenericResource(kind=named.string("Kind"), named=named.string("Value")))
            elif discrete is not None:
                generic.append(GenericResource(kind=discrete.string("Kind"), value=discrete.integer("Value")))
    return Resources(
        nano_cpus=o.integer("NanoCPUs"),
        memory_bytes=o.integer("MemoryBytes"),
        pids=o.integer("Pids") if limit else 0,
        generic=tuple(generic),
    )


def _resources(tt: Obj, api_version: str | None) -> ResourceRequirements | None:
    r = tt.obj("Resources", "ResourceRequirements")
    if r is None:
        return None
    limits = _res(r.obj("Limits", "Limit"), limit=True)
    reservations = _res(r.obj("Reservations", "Resources"), limit=False)
    for field in ("SwapBytes", "MemorySwappiness"):
        if r.get(field) is not None:
            r.integer(field)  # type check as dockerd decodes it
            if not _version_lt(api_version, "1.52"):
                raise InvalidArgument(f"TaskTemplate.Resources.{field} is not supported by Shoal")
            # API < 1.52: dockerd drops the field, and so do we
    return ResourceRequirements(limits=limits, reservations=reservations)


def _duration(o: Obj, name: str) -> int | None:
    return o.opt_int(name, "time.Duration")


def _restart_policy(o: Obj | None) -> RestartPolicy | None:
    if o is None:
        return None
    cond = o.string("Condition")
    if cond not in _RESTART_CONDITIONS:
        raise InvalidArgument(f'invalid RestartCondition: "{cond}"')
    # Delay and Window are Durations in swarmkit's protobuf: given (0 included) or not, and shown so.
    return RestartPolicy(
        condition=_RESTART_CONDITIONS[cond],
        delay=_duration(o, "Delay"),
        max_attempts=o.integer("MaxAttempts", "uint64"),
        window=_duration(o, "Window"),
    )


def _placement(o: Obj | None, api_version: str | None) -> Placement | None:
    if o is None:
        return None
    prefs: list[str] = []
    for p in o.objs("Preferences", "PlacementPreference"):
        spread = p.obj("Spread", "SpreadOver")
        if spread is not None:  # dockerd drops preferences without Spread
            prefs.append(spread.string("SpreadDescriptor"))
    max_replicas = o.integer("MaxReplicas", "uint64")
    if _version_lt(api_version, "1.40"):
        max_replicas = 0
    return Placement(
        constraints=o.str_list("Constraints"),
        preferences=tuple(prefs),
        max_replicas=max_replicas,
        platforms=tuple(
            Platform(architecture=p.string("Architecture"), os=p.string("OS"))
            for p in o.objs("Platforms", "Platform")
        ),
    )


def _log_driver(o: Obj | None) -> LogDriver | None:
    if o is None:
        return None
    return LogDriver(name=o.string("Name"), options=o.str_map("Options"))


def _update_config(o: Obj | None) -> UpdateConfig | None:
    if o is None:
        return None
    fa = o.string("FailureAction")
    if fa not in _FAILURE_ACTIONS:
        raise InvalidArgument(f"unrecognized update failure action {fa}")
    order = o.string("Order")
    if order not in _ORDERS:
        raise InvalidArgument(f"unrecognized update order {order}")
    monitor = o.integer("Monitor", "time.Duration")
    return UpdateConfig(
        parallelism=o.integer("Parallelism", "uint64"),
        delay=o.integer("Delay", "time.Duration"),
        failure_action=_FAILURE_ACTIONS[fa],
        # 0 means "default" to swarmkit: dockerd leaves the proto field nil, so it is shown absent
        monitor=monitor,
        max_failure_ratio=o.number("MaxFailureRatio"),
        order=_ORDERS[order],
    )


def _endpoint_spec(o: Obj | None) -> EndpointSpec | None:
    if o is None:
        return None
    mode = o.string("Mode")
    if mode not in ("", "vip", "dnsrr"):
        raise InvalidArgument(f'invalid resolution mode: "{mode}"')
    ports = []
    for p in o.objs("Ports", "PortConfig"):
        proto = p.string("Protocol").lower()
        pmode = p.string("PublishMode").lower()
        ports.append(
            PortConfig(
                name=p.string("Name"),
                protocol=proto if proto in _PROTOCOLS else "tcp",  # Go maps unknown enum names to 0 (tcp)
                target_port=p.integer("TargetPort", "uint32"),
                published_port=p.integer("PublishedPort", "uint32"),
                publish_mode=pmode if pmode in _PUBLISH_MODES else "ingress",
            )
        )
    return EndpointSpec(mode=mode or "vip", ports=tuple(ports))


def _mode(o: Obj, api_version: str | None) -> ServiceMode:
    rep = o.obj("Replicated", "ReplicatedService")
    glob = o.obj("Global", "GlobalService")
    rjob = o.obj("ReplicatedJob", "ReplicatedJob")
    gjob = o.obj("GlobalJob", "GlobalJob")
    if _version_lt(api_version, "1.41"):
        rjob = gjob = None
    if sum(x is not None for x in (rep, glob, rjob, gjob)) > 1:
        raise InvalidArgument("must specify only one service mode")
    if glob is not None:
        return ServiceMode(kind=GLOBAL)
    if gjob is not None:
        return ServiceMode(kind=GLOBAL_JOB)
    if rjob is not None:
        mc = rjob.opt_int("MaxConcurrent", "uint64")
        tc = rjob.opt_int("TotalCompletions", "uint64")
        mc = 1 if mc is None else mc
        return ServiceMode(kind=REPLICATED_JOB, max_concurrent=mc, total_completions=mc if tc is None else tc)
    replicas = rep.opt_int("Replicas", "uint64") if rep is not None else None
    return ServiceMode(kind=REPLICATED, replicas=1 if replicas is None else replicas)


def _file_target(o: Obj | None) -> FileTarget | None:
    if o is None:
        return None
    return FileTarget(
        name=o.string("Name"), uid=o.string("UID"), gid=o.string("GID"), mode=o.integer("Mode", "os.FileMode")
    )


def _health(o: Obj | None, api_version: str | None) -> HealthConfig | None:
    if o is None:
        return None
    return HealthConfig(
        test=o.str_list("Test"),
        interval=o.integer("Interval", "time.Duration"),
        timeout=o.integer("Timeout", "time.Duration"),
        retries=o.integer("Retries", "int"),
        start_period=o.integer("StartPeriod", "time.Duration"),
        start_interval=0 if _version_lt(api_version, "1.44") else o.integer("StartInterval", "time.Duration"),
    )


def _check_mounts(cs: Obj) -> tuple[Any, ...]:
    raw = cs.get("Mounts")
    if raw is None:
        return ()
    out = []
    for m in cs.objs("Mounts", "Mount"):
        typ = m.string("Type")
        if typ.lower() not in _MOUNT_TYPES and typ != "":
            raise InvalidArgument(f'invalid MountType: "{typ}"')
        m.string("Source")
        m.string("Target")
        m.boolean("ReadOnly")
        bo = m.obj("BindOptions", "BindOptions")
        if bo is not None:
            prop = bo.string("Propagation")
            if prop and prop.lower() not in _PROPAGATIONS:
                raise InvalidArgument(f'invalid MountPropagation: "{prop}"')
        vo = m.obj("VolumeOptions", "VolumeOptions")
        if vo is not None:
            vo.boolean("NoCopy")
            vo.str_map("Labels")
            dc = vo.obj("DriverConfig", "Driver")
            if dc is not None:
                dc.string("Name")
                dc.str_map("Options")
        to = m.obj("TmpfsOptions", "TmpfsOptions")
        if to is not None:
            to.integer("SizeBytes")
            to.integer("Mode", "os.FileMode")
        raw = m._d
        bk = m._key("BindOptions")
        if bk is not None and isinstance(raw[bk], dict) and not any(raw[bk].values()):
            # dockerd's containerToGRPC makes swarmkit BindOptions only from a propagation or a set flag:
            # an empty one is gone when read back
            raw = {k: v for k, v in raw.items() if k != bk}
        out.append(raw)
    return tuple(out)


# Privileges fields an API version below 1.44 does not know: dockerd's adjustForAPIVersion drops what such a
# client sent.
_PRIVILEGES_1_44 = frozenset({"seccomp", "apparmor", "nonewprivileges"})


def _check_privileges(cs: Obj, api_version: str | None) -> Any:
    p = cs.obj("Privileges", "Privileges")
    if p is None:
        return None
    old = _version_lt(api_version, "1.44")
    # Kept as sent, but without what dockerd would not keep: the fields an old version does not know, and
    # the unset ones (omitempty), so that the stored spec equals what GET shows.
    p = Obj({k: v for k, v in p._d.items() if not (k.lower() in _PRIVILEGES_1_44 and (old or not v))},
            "Privileges", p.path)
    cred = p.obj("CredentialSpec", "CredentialSpec")
    if cred is not None:
        opts = [f'"{k.lower()}"' for k in ("Config", "File", "Registry") if cred.string(k)]
        if not opts:
            raise InvalidArgument('must either provide "file", "registry", or "config" for credential spec')
        if len(opts) == 2:
            raise InvalidArgument(f"cannot specify both {opts[0]} and {opts[1]} credential specs")
        if len(opts) > 2:
            raise InvalidArgument(
                f"cannot specify both {', '.join(opts[:-1])}, and {opts[-1]} credential specs"
            )
    se = p.obj("SELinuxContext", "SELinuxContext")
    if se is not None:
        se.boolean("Disable")
        for k in ("User", "Role", "Type", "Level"):
            se.string(k)
    p.boolean("NoNewPrivileges")
    return p._d


def _privileges_to_wire(p: Mapping[str, Any]) -> JSONDict:
    """types.Privileges as dockerd marshals it: its two pointers and every SELinuxContext field have no
    omitempty, so they are shown (null, false, "") when not set; Seccomp, AppArmor and NoNewPrivileges have
    omitempty."""
    out: JSONDict = {"CredentialSpec": None, "SELinuxContext": None,
                     **{k: v for k, v in p.items() if v or k.lower() not in _PRIVILEGES_1_44}}
    se = Obj(p, "Privileges").get("SELinuxContext")
    for k in list(out):
        if k.lower() == "selinuxcontext":
            del out[k]
    if isinstance(se, dict):
        o = Obj(se, "SELinuxContext")
        out["SELinuxContext"] = {"Disable": bool(o.get("Disable")),
                                 **{k: o.get(k) or "" for k in ("User", "Role", "Type", "Level")}}
    else:
        out["SELinuxContext"] = None
    return out


def _container_spec(cs: Obj, api_version: str | None) -> ContainerSpec:
    secrets = []
    for s in cs.objs("Secrets", "SecretReference"):
        secrets.append(
            SecretReference(
                secret_id=s.string("SecretID"),
                secret_name=s.string("SecretName"),
                file=_file_target(s.obj("File", "SecretReferenceFileTarget")),
            )
        )
    configs = []
    for c in cs.objs("Configs", "ConfigReference"):
        f = c.obj("File", "ConfigReferenceFileTarget")
        rt = c.obj("Runtime", "ConfigReferenceRuntimeTarget")
        if _version_lt(api_version, "1.40"):
            rt = None
        if f is None and rt is None:
            raise InvalidArgument("either File or Runtime should be set")
        if f is not None and rt is not None:
            raise InvalidArgument("cannot specify both File and Runtime")
        configs.append(
            ConfigReference(
                config_id=c.string("ConfigID"),
                config_name=c.string("ConfigName"),
                file=_file_target(f),
                runtime=rt is not None,
            )
        )
    mounts = _check_mounts(cs)
    privileges = _check_privileges(cs, api_version)
    dns = cs.obj("DNSConfig", "DNSConfig")
    if dns is not None:
        dns.str_list("Nameservers", "[]netip.Addr")
        dns.str_list("Search")
        dns.str_list("Options")
    ulimits = []
    for u in cs.objs("Ulimits", "Ulimit"):
        u.string("Name")
        u.integer("Hard")
        u.integer("Soft")
        ulimits.append(u._d)
    isolation = cs.string("Isolation")
    new41 = not _version_lt(api_version, "1.41")
    return ContainerSpec(
        image=cs.string("Image"),
        labels=cs.str_map("Labels"),
        command=cs.str_list("Command"),
        args=cs.str_list("Args"),
        hostname=cs.string("Hostname"),
        env=cs.str_list("Env"),
        dir=cs.string("Dir"),
        user=cs.string("User"),
        groups=cs.str_list("Groups"),
        tty=cs.boolean("TTY"),
        open_stdin=cs.boolean("OpenStdin"),
        read_only=cs.boolean("ReadOnly"),
        mounts=mounts,
        stop_signal=cs.string("StopSignal"),
        stop_grace_period=_duration(cs, "StopGracePeriod"),
        healthcheck=_health(cs.obj("Healthcheck", "HealthConfig"), api_version),
        hosts=cs.str_list("Hosts"),
        dns_config=None if dns is None else dns._d,
        secrets=tuple(secrets),
        configs=tuple(configs),
        # swarmkit's enum: unknown names become "default"
        isolation=isolation.lower() if isolation.lower() in _ISOLATIONS else "default",
        init=cs.opt_bool("Init"),
        privileges=privileges,
        sysctls=cs.str_map("Sysctls") if not _version_lt(api_version, "1.40") else {},
        capability_add=cs.str_list("CapabilityAdd") if new41 else (),
        capability_drop=cs.str_list("CapabilityDrop") if new41 else (),
        ulimits=tuple(ulimits) if new41 else (),
        oom_score_adj=cs.integer("OomScoreAdj") if not _version_lt(api_version, "1.46") else 0,
    )


# --- domain -> wire ------------------------------------------------------------------------------


def _resources_to_wire(r: Resources, *, limit: bool) -> JSONDict:
    d: JSONDict = {}
    put(d, "NanoCPUs", r.nano_cpus)
    put(d, "MemoryBytes", r.memory_bytes)
    if limit:
        put(d, "Pids", r.pids)
    else:
        put(d, "GenericResources", generic_resources_to_wire(r.generic))
    return d


def generic_resources_to_wire(gs: tuple[GenericResource, ...]) -> list[JSONDict]:
    out: list[JSONDict] = []
    for g in gs:
        spec: JSONDict = {}
        put(spec, "Kind", g.kind)
        if g.named:
            put(spec, "Value", g.named)
            out.append({"NamedResourceSpec": spec})
        else:
            put(spec, "Value", g.value)
            out.append({"DiscreteResourceSpec": spec})
    return out


def _file_target_to_wire(f: FileTarget) -> JSONDict:
    return {"Name": f.name, "UID": f.uid, "GID": f.gid, "Mode": f.mode}


def _health_to_wire(h: HealthConfig) -> JSONDict:
    d: JSONDict = {}
    put(d, "Test", h.test)
    put(d, "Interval", h.interval)
    put(d, "Timeout", h.timeout)
    put(d, "StartPeriod", h.start_period)
    put(d, "StartInterval", h.start_interval)
    put(d, "Retries", h.retries)
    return d


def container_spec_to_wire(c: ContainerSpec) -> JSONDict:
    d: JSONDict = {}
    put(d, "Image", c.image)
    put(d, "Labels", dict(c.labels))
    put(d, "Command", c.command)
    put(d, "Args", c.args)
    put(d, "Hostname", c.hostname)
    put(d, "Env", c.env)
    put(d, "Dir", c.dir)
    put(d, "User", c.user)
    put(d, "Groups", c.groups)
    if c.privileges is not None:
        d["Privileges"] = _privileges_to_wire(c.privileges)
    if c.init is not None:
        d["Init"] = c.init
    put(d, "StopSignal", c.stop_signal)
    put(d, "TTY", c.tty)
    put(d, "OpenStdin", c.open_stdin)
    put(d, "ReadOnly", c.read_only)
    put(d, "Mounts", [dict(m) for m in c.mounts])
    if c.stop_grace_period is not None:
        d["StopGracePeriod"] = c.stop_grace_period
    if c.healthcheck is not None:
        d["Healthcheck"] = _health_to_wire(c.healthcheck)
    put(d, "Hosts", c.hosts)
    if c.dns_config is not None:
        d["DNSConfig"] = c.dns_config
    put(
        d,
        "Secrets",
        [
            {
                "File": None if s.file is None else _file_target_to_wire(s.file),
                "SecretID": s.secret_id,
                "SecretName": s.secret_name,
            }
            for s in c.secrets
        ],
    )
    configs = []
    for r in c.configs:
        cd: JSONDict = {}
        if r.file is not None:
            cd["File"] = _file_target_to_wire(r.file)
        if r.runtime:
            cd["Runtime"] = {}
        cd["ConfigID"] = r.config_id
        cd["ConfigName"] = r.config_name
        configs.append(cd)
    put(d, "Configs", configs)
    d["Isolation"] = c.isolation or "default"
    put(d, "Sysctls", dict(c.sysctls))
    put(d, "CapabilityAdd", c.capability_add)
    put(d, "CapabilityDrop", c.capability_drop)
    put(d, "Ulimits", [dict(u) for u in c.ulimits])
    put(d, "OomScoreAdj", c.oom_score_adj)
    return d


def _restart_to_wire(rp: RestartPolicy) -> JSONDict:
    d: JSONDict = {"Condition": rp.condition or "any"}
    if rp.delay is not None:
        d["Delay"] = rp.delay
    d["MaxAttempts"] = rp.max_attempts  # a plain uint64 in swarmkit: dockerd always shows it
    if rp.window is not None:
        d["Window"] = rp.window
    return d


def _placement_to_wire(p: Placement) -> JSONDict:
    d: JSONDict = {}
    put(d, "Constraints", p.constraints)
    put(d, "Preferences", [{"Spread": {"SpreadDescriptor": s}} for s in p.preferences])
    put(d, "MaxReplicas", p.max_replicas)
    plats = []
    for pl in p.platforms:
        pd: JSONDict = {}
        put(pd, "Architecture", pl.architecture)
        put(pd, "OS", pl.os)
        plats.append(pd)
    put(d, "Platforms", plats)
    return d


def _driver_to_wire(name: str, options: Mapping[str, str]) -> JSONDict:
    d: JSONDict = {}
    put(d, "Name", name)
    put(d, "Options", dict(options))
    return d


def network_attachment_config_to_wire(n: NetworkAttachmentConfig) -> JSONDict:
    d: JSONDict = {}
    put(d, "Target", n.target)
    put(d, "Aliases", n.aliases)
    put(d, "DriverOpts", dict(n.driver_opts))
    return d


def task_spec_to_wire(ts: TaskSpec, *, runtime_field: bool = True) -> JSONDict:
    """TaskSpec as dockerd shows it. Tasks (unlike services) show no `Runtime` (dockerd's own quirk)."""
    d: JSONDict = {"ContainerSpec": container_spec_to_wire(ts.container)}
    res = ts.resources
    if res is not None:
        rd: JSONDict = {}
        if res.limits is not None:
            rd["Limits"] = _resources_to_wire(res.limits, limit=True)
        if res.reservations is not None:
            rd["Reservations"] = _resources_to_wire(res.reservations, limit=False)
        d["Resources"] = rd
    if ts.restart_policy is not None:
        d["RestartPolicy"] = _restart_to_wire(ts.restart_policy)
    if ts.placement is not None:
        d["Placement"] = _placement_to_wire(ts.placement)
    put(d, "Networks", [network_attachment_config_to_wire(n) for n in ts.networks])
    if ts.log_driver is not None:
        d["LogDriver"] = _driver_to_wire(ts.log_driver.name, ts.log_driver.options)
    d["ForceUpdate"] = ts.force_update
    if runtime_field:
        d["Runtime"] = ts.runtime or "container"
    return d


def _mode_to_wire(m: ServiceMode) -> JSONDict:
    if m.kind == GLOBAL:
        return {"Global": {}}
    if m.kind == GLOBAL_JOB:
        return {"GlobalJob": {}}
    if m.kind == REPLICATED_JOB:
        return {"ReplicatedJob": {"MaxConcurrent": m.max_concurrent, "TotalCompletions": m.total_completions}}
    return {"Replicated": {"Replicas": m.replicas}}


def update_config_to_wire(u: UpdateConfig) -> JSONDict:
    d: JSONDict = {"Parallelism": u.parallelism}
    put(d, "Delay", u.delay)
    put(d, "FailureAction", u.failure_action)
    put(d, "Monitor", u.monitor)
    d["MaxFailureRatio"] = (
        u.max_failure_ratio if u.max_failure_ratio != int(u.max_failure_ratio) else int(u.max_failure_ratio)
    )
    d["Order"] = u.order
    return d


def port_config_to_wire(p: PortConfig) -> JSONDict:
    d: JSONDict = {}
    put(d, "Name", p.name)
    put(d, "Protocol", p.protocol)
    put(d, "TargetPort", p.target_port)
    put(d, "PublishedPort", p.published_port)
    put(d, "PublishMode", p.publish_mode)
    return d


def endpoint_spec_to_wire(e: EndpointSpec) -> JSONDict:
    d: JSONDict = {"Mode": e.mode or "vip"}
    put(d, "Ports", [port_config_to_wire(p) for p in e.ports])
    return d


def service_spec_to_wire(spec: ServiceSpec) -> JSONDict:
    """A ServiceSpec exactly as dockerd shows it (GET /services/{id} without insertDefaults)."""
    d: JSONDict = {}
    put(d, "Name", spec.annotations.name)
    d["Labels"] = dict(spec.annotations.labels)
    d["TaskTemplate"] = task_spec_to_wire(spec.task_template)
    d["Mode"] = _mode_to_wire(spec.mode)
    if spec.update_config is not None:
        d["UpdateConfig"] = update_config_to_wire(spec.update_config)
    if spec.rollback_config is not None:
        d["RollbackConfig"] = update_config_to_wire(spec.rollback_config)
    if spec.endpoint_spec is not None:
        d["EndpointSpec"] = endpoint_spec_to_wire(spec.endpoint_spec)
    return d


_DEFAULT_UPDATE = UpdateConfig(monitor=DEFAULT_UPDATE_MONITOR)  # parallelism 1, pause, monitor 5s, stop-first


def with_defaults(spec: ServiceSpec) -> ServiceSpec:
    """swarmkit's defaults.InterpolateService: what `GET /services/{id}?insertDefaults=true` shows.

    (`docker service inspect` asks for this; `docker service update` does not.)
    """
    from dataclasses import replace

    c = spec.task_template.container
    c = replace(
        c,
        stop_grace_period=10 * SECOND if c.stop_grace_period is None else c.stop_grace_period,
        dns_config={} if c.dns_config is None else c.dns_config,
    )
    tt = spec.task_template
    tt = replace(
        tt,
        container=c,
        resources=tt.resources if tt.resources is not None else ResourceRequirements(),
        # swarmkit's InterpolateService: the default policy, or the default delay in a policy without one
        restart_policy=RestartPolicy(delay=DEFAULT_RESTART_DELAY) if tt.restart_policy is None
        else replace(tt.restart_policy, delay=tt.restart_policy.delay_or_default),
        placement=tt.placement if tt.placement is not None else Placement(),
    )
    def update(u: UpdateConfig | None) -> UpdateConfig:
        # InterpolateService: the default config, or the default Monitor in a config without one
        return _DEFAULT_UPDATE if u is None else replace(u, monitor=u.monitor_or_default)

    return replace(
        spec,
        task_template=tt,
        update_config=update(spec.update_config),
        rollback_config=update(spec.rollback_config),
    )


def service_to_wire(
    svc: Service,
    *,
    include_status: Any = None,
    insert_defaults: bool = False,
) -> JSONDict:
    """A Service as dockerd shows it.

    `include_status` is None (omit ServiceStatus) or any object with running_tasks, desired_tasks and
    completed_tasks (or a mapping with RunningTasks/DesiredTasks/CompletedTasks), for `?status=true`.
    """
    spec = with_defaults(svc.spec) if insert_defaults else svc.spec
    d: JSONDict = {"ID": svc.id, **meta(svc.meta), "Spec": service_spec_to_wire(spec)}
    cron = svc.cron
    if cron is not None and cron.next_run and enabled(svc.spec.annotations.labels):
        # Shoal's own: the next and last run of a service with a schedule (shoal.manager.cron), read-only
        shown = d["Spec"]["Labels"]
        shown[NEXT_RUN] = go_time(cron.next_run)
        if cron.last_run:
            shown[LAST_RUN] = go_time(cron.last_run)
    if svc.previous_spec is not None:
        prev = with_defaults(svc.previous_spec) if insert_defaults else svc.previous_spec
        d["PreviousSpec"] = service_spec_to_wire(prev)
    ep: JSONDict = {}
    # Endpoint.Spec is the spec swarmkit's allocator copied, which it does only for a service that needs
    # allocating (published ports, or VIPs on networks): {} otherwise, a dnsrr service without ports included,
    # and {} for a service whose spec has no EndpointSpec (nil in swarmkit, nothing to copy).
    e = svc.endpoint
    if svc.spec.endpoint_spec is not None and (e.spec.ports or e.virtual_ips or e.ports):
        ep["Spec"] = endpoint_spec_to_wire(svc.endpoint.spec)
    else:
        ep["Spec"] = {}
    put(ep, "Ports", [port_config_to_wire(p) for p in svc.endpoint.ports])
    put(ep, "VirtualIPs", [{"NetworkID": v.network_id, "Addr": v.addr} for v in svc.endpoint.virtual_ips])
    d["Endpoint"] = ep
    us = svc.update_status
    if us is not None:
        ud: JSONDict = {}
        put(ud, "State", us.state)
        if us.started_at:
            ud["StartedAt"] = go_time(us.started_at)
        if us.completed_at:
            ud["CompletedAt"] = go_time(us.completed_at)
        put(ud, "Message", us.message)
        d["UpdateStatus"] = ud
    if include_status is not None:
        d["ServiceStatus"] = _service_status(include_status)
    if svc.job_status is not None:
        jd: JSONDict = {"JobIteration": version(svc.job_status.job_iteration)}
        jd["LastExecution"] = go_time(svc.job_status.last_execution)
        d["JobStatus"] = jd
    return d


def _service_status(s: Any) -> JSONDict:
    if isinstance(s, Mapping):
        return {
            "RunningTasks": int(s.get("RunningTasks", 0)),
            "DesiredTasks": int(s.get("DesiredTasks", 0)),
            "CompletedTasks": int(s.get("CompletedTasks", 0)),
        }
    return {
        "RunningTasks": int(s.running_tasks),
        "DesiredTasks": int(s.desired_tasks),
        "CompletedTasks": int(s.completed_tasks),
    }


def task_to_wire(task: Task, *, networks: Mapping[str, Network] | None = None) -> JSONDict:
    """A Task as dockerd shows it. `networks` resolves NetworksAttachments[].Network by ID."""
    from shoal.engineapi.convert.cluster import network_swarm_object

    d: JSONDict = {"ID": task.id, **meta(task.meta)}
    put(d, "Name", task.annotations.name)
    d["Labels"] = dict(task.annotations.labels)
    d["Spec"] = task_spec_to_wire(task.spec, runtime_field=False)
    put(d, "ServiceID", task.service_id)
    put(d, "Slot", task.slot)
    put(d, "NodeID", task.node_id)
    st = task.status
    sd: JSONDict = {"Timestamp": go_time(st.timestamp), "State": st.state.wire}
    put(sd, "Message", st.message)
    put(sd, "Err", st.err)
    if st.container is not None:
        sd["ContainerStatus"] = {
            "ContainerID": st.container.container_id,
            "PID": st.container.pid,
            "ExitCode": st.container.exit_code,
        }
    ps: JSONDict = {}
    put(ps, "Ports", [port_config_to_wire(p) for p in st.port_status])
    sd["PortStatus"] = ps
    d["Status"] = sd
    d["DesiredState"] = task.desired_state.wire
    atts = []
    for na in task.networks:
        net = (networks or {}).get(na.network_id)
        nd = (
            network_swarm_object(net)
            if net is not None
            else {
                "ID": na.network_id,
                "Version": {},
                "CreatedAt": go_time(0),
                "UpdatedAt": go_time(0),
                "Spec": {"Labels": {}, "Scope": "swarm"},
                "DriverState": {},
            }
        )
        ad: JSONDict = {"Network": nd}
        put(ad, "Addresses", na.addresses)
        atts.append(ad)
    put(d, "NetworksAttachments", atts)
    # GenericResources assigned by the scheduler are not modelled yet; dockerd omits them when none
    if task.job_iteration is not None:
        d["JobIteration"] = version(task.job_iteration)
    d["Volumes"] = None
    return d
