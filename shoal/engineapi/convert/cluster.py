"""Nodes, the swarm (cluster), secrets, configs and networks between Engine API JSON and the domain model."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shoal.api.messages import INVALID_ARGUMENT, rpc
from shoal.engineapi.convert._wire import Obj, go_time, meta, put
from shoal.errors import InvalidArgument, ShoalError
from shoal.model.objects import (
    Annotations,
    CAConfig,
    Cluster,
    Config,
    ConfigSpec,
    Driver,
    ExternalCA,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkSpec,
    Node,
    NodeSpec,
    RaftConfig,
    Secret,
    SecretSpec,
    SwarmSpec,
)

JSONDict = dict[str, Any]

MAX_SECRET_SIZE = 500 * 1024
MAX_CONFIG_SIZE = 1000 * 1024
_SECRET_NAME = re.compile(r"^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$")
_DNS_NAME = re.compile(r"^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$")
VXLANID_OPTION = "com.docker.network.driver.overlay.vxlanid_list"


def _rpc_invalid(desc: str) -> InvalidArgument:
    return InvalidArgument(rpc(INVALID_ARGUMENT, desc))


# --- nodes -------------------------------------------------------------------------------------------


def node_spec_from_wire(body: Any) -> NodeSpec:
    """POST /nodes/{id}/update body. Role and Availability are required, as in dockerd.

    (`invalid Role: ""`)
    """
    o = Obj.root(body, "NodeSpec")
    name = o.string("Name")
    labels = o.str_map("Labels")
    role = o.string("Role")
    if role.lower() not in ("worker", "manager"):
        raise InvalidArgument(f'invalid Role: "{role}"')
    avail = o.string("Availability")
    if avail.lower() not in ("active", "pause", "drain"):
        raise InvalidArgument(f'invalid Availability: "{avail}"')
    return NodeSpec(
        annotations=Annotations(name=name, labels=labels), role=role.lower(), availability=avail.lower()
    )


def node_spec_to_wire(s: NodeSpec) -> JSONDict:
    d: JSONDict = {}
    put(d, "Name", s.annotations.name)
    d["Labels"] = dict(s.annotations.labels)
    d["Role"] = s.role
    d["Availability"] = s.availability
    return d


def tls_info_to_wire(tls: Any) -> JSONDict:
    """TLSInfo is kept as JSON ({TrustRoot, CertIssuerSubject, CertIssuerPublicKey}; the last two base64)."""
    d: JSONDict = {}
    if isinstance(tls, Mapping):
        for k in ("TrustRoot", "CertIssuerSubject", "CertIssuerPublicKey"):
            put(d, k, tls.get(k))
    return d


def node_to_wire(node: Node) -> JSONDict:
    desc = node.description
    dd: JSONDict = {}
    put(dd, "Hostname", desc.hostname)
    plat: JSONDict = {}
    put(plat, "Architecture", desc.platform.architecture)
    put(plat, "OS", desc.platform.os)
    dd["Platform"] = plat
    res: JSONDict = {}
    put(res, "NanoCPUs", desc.resources.nano_cpus)
    put(res, "MemoryBytes", desc.resources.memory_bytes)
    from shoal.engineapi.convert.service import generic_resources_to_wire

    put(res, "GenericResources", generic_resources_to_wire(desc.resources.generic))
    dd["Resources"] = res
    eng: JSONDict = {}
    put(eng, "EngineVersion", desc.engine.engine_version)
    put(eng, "Labels", dict(desc.engine.labels))
    put(eng, "Plugins", [dict(p) for p in desc.engine.plugins])
    dd["Engine"] = eng
    dd["TLSInfo"] = tls_info_to_wire(desc.tls_info)
    st: JSONDict = {}
    put(st, "State", node.status.state)
    put(st, "Message", node.status.message)
    put(st, "Addr", node.status.addr)
    d: JSONDict = {
        "ID": node.id,
        **meta(node.meta),
        "Spec": node_spec_to_wire(node.spec),
        "Description": dd,
        "Status": st,
    }
    ms = node.manager_status
    if ms is not None:
        md: JSONDict = {}
        put(md, "Leader", ms.leader)
        put(md, "Reachability", ms.reachability)
        put(md, "Addr", ms.addr)
        d["ManagerStatus"] = md
    return d


# --- swarm -------------------------------------------------------------------------------------------


def swarm_spec_from_wire(body: Any, base: SwarmSpec | None = None) -> SwarmSpec:
    """A swarm Spec merged onto `base` the way dockerd merges it (MergeSwarmSpecToGRPC).

    Zero values keep `base`'s value (so `docker swarm update --cert-expiry 48h` leaves everything else),
    except CAConfig.ForceRotate and EncryptionConfig.AutoLockManagers, which are always taken from the body,
    and, on update, Labels (an empty or absent map clears them, as dockerd's), CAConfig.ExternalCAs (the
    ones sent; init appends them to the base's) and Dispatcher.HeartbeatPeriod
    (stored as sent: 0, or none, is no period, omitted from GET /swarm; the dispatcher then runs by swarmkit's
    default of 5s). dockerd's update replaces the whole spec (a zero election tick... is stored as sent);
    Shoal keeps the current value for the others, so that a partial spec cannot zero what the cluster runs by.
    For POST /swarm/init pass no base (the defaults); for POST /swarm/update pass the current spec.
    """
    o = Obj.root(body, "Spec")
    return _merge_spec(o, base or SwarmSpec(), update=base is not None)


def _merge_spec(o: Obj, s: SwarmSpec, *, update: bool = False) -> SwarmSpec:
    name = o.string("Name")
    labels = o.opt_str_map("Labels")
    if update:
        # dockerd's Update takes the labels as sent, as for nodes and services: {} or none clears them.
        keep_labels = False
    else:
        keep_labels = not labels  # init merges: only a non-empty map replaces (MergeSwarmSpecToGRPC's len != 0)
    ann = Annotations(name=name or s.annotations.name, labels=s.annotations.labels if keep_labels else labels or {})
    orch = o.obj("Orchestration", "OrchestrationConfig")
    thrl = orch.opt_int("TaskHistoryRetentionLimit") if orch is not None else None
    raft_o = o.obj("Raft", "RaftConfig") or Obj({}, "RaftConfig", "Raft")
    r = s.raft
    keep = raft_o.opt_int("KeepOldSnapshots", "uint64")
    raft = RaftConfig(
        snapshot_interval=raft_o.integer("SnapshotInterval", "uint64") or r.snapshot_interval,
        keep_old_snapshots=r.keep_old_snapshots if keep is None else keep,
        log_entries_for_slow_followers=raft_o.integer("LogEntriesForSlowFollowers", "uint64")
        or r.log_entries_for_slow_followers,
        heartbeat_tick=raft_o.integer("HeartbeatTick", "int") or r.heartbeat_tick,
        election_tick=raft_o.integer("ElectionTick", "int") or r.election_tick,
    )
    disp = o.obj("Dispatcher", "DispatcherConfig")
    hb = disp.integer("HeartbeatPeriod", "time.Duration") if disp is not None else 0
    ca_o = o.obj("CAConfig", "CAConfig") or Obj({}, "CAConfig", "CAConfig")
    ca = s.ca_config
    # dockerd's update converts the spec from scratch: the external CAs are the ones sent (a spec read from
    # GET /swarm and sent back lists each once); init's merge appends them to the base's
    ext = [] if update else list(ca.external_cas)
    for e in ca_o.objs("ExternalCAs", "ExternalCA"):
        proto = e.string("Protocol")
        if proto.lower() != "cfssl":
            raise InvalidArgument(f'invalid protocol: "{proto}"')
        ext.append(
            ExternalCA(
                protocol="cfssl",
                url=e.string("URL"),
                options=e.str_map("Options"),
                ca_cert=e.string("CACert"),
            )
        )
    ca = CAConfig(
        node_cert_expiry=ca_o.integer("NodeCertExpiry", "time.Duration") or ca.node_cert_expiry,
        external_cas=tuple(ext),
        signing_ca_cert=ca_o.string("SigningCACert") or ca.signing_ca_cert,
        signing_ca_key=ca_o.string("SigningCAKey") or ca.signing_ca_key,
        force_rotate=ca_o.integer("ForceRotate", "uint64"),
    )
    enc = o.obj("EncryptionConfig", "EncryptionConfig")
    td = o.obj("TaskDefaults", "TaskDefaults")
    ld = td.obj("LogDriver", "Driver") if td is not None else None
    if ld is not None:  # decoded (a wrong type is still a 400), then dropped: no dockerd converts it to swarmkit
        ld.string("Name")
        ld.str_map("Options")
    spec = replace(
        s,
        annotations=ann,
        task_history_retention_limit=s.task_history_retention_limit if thrl is None else thrl,
        raft=raft,
        heartbeat_period=hb if update else hb or s.heartbeat_period,
        ca_config=ca,
        autolock_managers=enc.boolean("AutoLockManagers") if enc is not None else False,
    )
    if spec.heartbeat_period < 0:
        raise _rpc_invalid("heartbeat time period cannot be a negative duration")
    if 0 < spec.ca_config.node_cert_expiry < 3600 * 1_000_000_000:
        raise _rpc_invalid("minimum certificate expiry time is: 1h0m0s")
    return spec


def swarm_spec_to_wire(s: SwarmSpec) -> JSONDict:
    ca: JSONDict = {}
    put(ca, "NodeCertExpiry", s.ca_config.node_cert_expiry)
    ext = []
    for e in s.ca_config.external_cas:
        ed: JSONDict = {"Protocol": e.protocol, "URL": e.url}
        put(ed, "Options", dict(e.options))
        ed["CACert"] = e.ca_cert
        ext.append(ed)
    put(ca, "ExternalCAs", ext)
    put(ca, "ForceRotate", s.ca_config.force_rotate)  # signing cert/key are never shown
    td: JSONDict = {}
    # Spec.TaskDefaults is never converted by dockerd (20.10 to 28): GET /swarm always shows {}, even for a
    # cluster stored with a log driver by an older Shoal.
    raft: JSONDict = {}
    put(raft, "SnapshotInterval", s.raft.snapshot_interval)
    raft["KeepOldSnapshots"] = s.raft.keep_old_snapshots
    put(raft, "LogEntriesForSlowFollowers", s.raft.log_entries_for_slow_followers)
    raft["ElectionTick"] = s.raft.election_tick
    raft["HeartbeatTick"] = s.raft.heartbeat_tick
    disp: JSONDict = {}
    put(disp, "HeartbeatPeriod", s.heartbeat_period)
    d: JSONDict = {}
    put(d, "Name", s.annotations.name)
    d["Labels"] = dict(s.annotations.labels)
    d["Orchestration"] = {"TaskHistoryRetentionLimit": s.task_history_retention_limit}
    d["Raft"] = raft
    d["Dispatcher"] = disp
    d["CAConfig"] = ca
    d["TaskDefaults"] = td
    d["EncryptionConfig"] = {"AutoLockManagers": s.autolock_managers}
    return d


def swarm_to_wire(
    cluster: Cluster,
    *,
    tls_info: Any = None,
    root_rotation_in_progress: bool = False,
    include_join_tokens: bool = True,
) -> JSONDict:
    """GET /swarm.

    `tls_info` is {TrustRoot, CertIssuerSubject, CertIssuerPublicKey} (computed by the CA code);
    TrustRoot defaults to the cluster's root CA certificate. /info's Swarm.Cluster is this without JoinTokens.
    """
    tls = dict(tls_info) if isinstance(tls_info, Mapping) else {}
    tls.setdefault("TrustRoot", cluster.root_ca.ca_cert_pem)
    d: JSONDict = {
        "ID": cluster.id,
        **meta(cluster.meta),
        "Spec": swarm_spec_to_wire(cluster.spec),
        "TLSInfo": tls_info_to_wire(tls),
        "RootRotationInProgress": root_rotation_in_progress,
        "DefaultAddrPool": list(cluster.default_addr_pool) or None,
        "SubnetSize": cluster.subnet_size,
        "DataPathPort": cluster.data_path_port,
    }
    if include_join_tokens:
        d["JoinTokens"] = {"Worker": cluster.join_tokens.worker, "Manager": cluster.join_tokens.manager}
    return d


@dataclass(frozen=True, slots=True, kw_only=True)
class InitRequest:
    """POST /swarm/init, validated and defaulted as dockerd does (ListenAddr resolution is the caller's)."""

    listen_addr: str = "0.0.0.0:2377"
    advertise_addr: str = ""
    data_path_addr: str = ""
    data_path_port: int = 4789
    default_addr_pool: tuple[str, ...] = ("10.0.0.0/8",)
    subnet_size: int = 24
    force_new_cluster: bool = False
    spec: SwarmSpec = field(default_factory=SwarmSpec)
    autolock_managers: bool = False
    availability: str = "active"


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinRequest:
    listen_addr: str = "0.0.0.0:2377"
    advertise_addr: str = ""
    data_path_addr: str = ""
    remote_addrs: tuple[str, ...] = ()
    join_token: str = ""
    availability: str = "active"


def _availability(o: Obj) -> str:
    a = o.string("Availability")
    if a and a.lower() not in ("active", "pause", "drain"):
        raise InvalidArgument(f'invalid Availability: "{a}"')
    return a.lower() or "active"


def init_request_from_wire(body: Any) -> InitRequest:
    o = Obj.root(body, "InitRequest")
    listen = o.string("ListenAddr") or "0.0.0.0:2377"
    spec_o = o.obj("Spec", "Spec") or Obj({}, "Spec", "Spec")
    sname = spec_o.string("Name")
    if sname and sname != "default":
        raise InvalidArgument('swarm spec must be named "default"')
    spec = _merge_spec(spec_o, SwarmSpec())
    pools = o.str_list("DefaultAddrPool", "[]netip.Prefix")
    parsed = []
    for p in pools:
        try:
            parsed.append(ipaddress.ip_network(p, strict=False))
        except ValueError:
            raise InvalidArgument(f'invalid JSON: ParseAddr("{p}"): unable to parse IP') from None
    size = o.integer("SubnetSize", "uint32")
    if parsed:
        if size == 0:
            size = 24
        if size > 29:
            raise InvalidArgument(f"subnet size is out of range: {size}")
        for n, raw in zip(parsed, pools, strict=True):
            if size < n.prefixlen:
                raise InvalidArgument(f'invalid CIDR: "{raw}". Subnet size is too small for pool: {size}')
    port = o.integer("DataPathPort", "uint32")
    if port == 0:
        port = 4789
    elif port < 1024 or port > 49151:
        raise InvalidArgument(f"Datapath port number is not in valid range (1024-49151) : {port}")
    # The top-level AutoLockManagers only starts the node locked: dockerd's initClusterSpec then sets the
    # cluster's autolock from Spec.EncryptionConfig (the CLI sends both), so the Spec's flag is what lasts.
    autolock = o.boolean("AutoLockManagers")
    return InitRequest(
        listen_addr=listen,
        advertise_addr=o.string("AdvertiseAddr"),
        data_path_addr=o.string("DataPathAddr"),
        data_path_port=port,
        default_addr_pool=tuple(pools) if pools else ("10.0.0.0/8",),
        subnet_size=size or 24,
        force_new_cluster=o.boolean("ForceNewCluster"),
        spec=spec,
        autolock_managers=autolock,
        availability=_availability(o),
    )


def init_spec_onto(body: Any, base: SwarmSpec) -> SwarmSpec:
    """POST /swarm/init's Spec merged onto the spec of the cluster the init made or kept (dockerd's
    initClusterSpec, MergeSwarmSpecToGRPC): what is zero or absent keeps `base`'s value, except
    EncryptionConfig.AutoLockManagers and CAConfig.ForceRotate, always the request's."""
    spec_o = Obj.root(body, "InitRequest").obj("Spec", "Spec") or Obj({}, "Spec", "Spec")
    return _merge_spec(spec_o, base)


def join_request_from_wire(body: Any) -> JoinRequest:
    o = Obj.root(body, "JoinRequest")
    remotes = o.str_list("RemoteAddrs")
    if not remotes:
        raise InvalidArgument("at least 1 RemoteAddr is required to join")
    return JoinRequest(
        listen_addr=o.string("ListenAddr") or "0.0.0.0:2377",
        advertise_addr=o.string("AdvertiseAddr"),
        data_path_addr=o.string("DataPathAddr"),
        remote_addrs=remotes,
        join_token=o.string("JoinToken"),
        availability=_availability(o),
    )


# --- secrets and configs ---------------------------------------------------------------------------------


def _b64(o: Obj, name: str) -> bytes:
    v = o.get(name)
    if v is None:
        return b""
    if not isinstance(v, str):
        raise o.err(name, v, "[]uint8")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        pos = _first_bad_b64(v)
        raise InvalidArgument(f"illegal base64 data at input byte {pos}") from None


def _first_bad_b64(s: str) -> int:
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    for i, ch in enumerate(s):
        if ch == "=":
            return i if (len(s) % 4) else max(i, 0)
        if ch not in alphabet:
            return i
    return len(s) - len(s) % 4


def _validate_secret_name(name: str) -> None:
    if not name:
        raise _rpc_invalid("name must be provided")
    if len(name) > 64 or not _SECRET_NAME.match(name):
        raise _rpc_invalid(
            "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end "
            "character must be [a-zA-Z0-9]"
        )


def _driver(o: Obj | None) -> Driver | None:
    if o is None:
        return None
    return Driver(name=o.string("Name"), options=o.str_map("Options"))


def secret_spec_from_wire(body: Any, *, update: bool = False) -> SecretSpec:
    """POST /secrets/create, or with `update` the Spec of /secrets/{id}/update: swarmkit validates the name,
    the data and the driver of a new secret only (an update may change the labels alone, and carries no Data
    when it comes from what GET returned). Data is base64 on the wire."""
    o = Obj.root(body, "SecretSpec")
    name = o.string("Name")
    labels = o.str_map("Labels")
    data = _b64(o, "Data")
    driver = _driver(o.obj("Driver", "Driver"))
    templating = _driver(o.obj("Templating", "Driver"))
    if not update:
        _validate_secret_name(name)
        if driver is not None:
            if not driver.name:
                raise _rpc_invalid("secret driver must have a name")
        elif not 0 < len(data) < MAX_SECRET_SIZE:
            raise _rpc_invalid(f"secret data must be larger than 0 and less than {MAX_SECRET_SIZE} bytes")
    return SecretSpec(
        annotations=Annotations(name=name, labels=labels), data=data, driver=driver, templating=templating
    )


def config_spec_from_wire(body: Any) -> ConfigSpec:
    o = Obj.root(body, "ConfigSpec")
    name = o.string("Name")
    labels = o.str_map("Labels")
    data = _b64(o, "Data")
    templating = _driver(o.obj("Templating", "Driver"))
    _validate_secret_name(name)
    if not 0 < len(data) < MAX_CONFIG_SIZE:
        raise _rpc_invalid(f"config data must be larger than 0 and less than {MAX_CONFIG_SIZE} bytes")
    return ConfigSpec(annotations=Annotations(name=name, labels=labels), data=data, templating=templating)


def _driver_to_wire(d: Driver) -> JSONDict:
    out: JSONDict = {}
    put(out, "Name", d.name)
    put(out, "Options", dict(d.options))
    return out


def secret_to_wire(secret: Secret) -> JSONDict:
    """Never includes Data."""
    s = secret.spec
    spec: JSONDict = {}
    put(spec, "Name", s.annotations.name)
    spec["Labels"] = dict(s.annotations.labels)
    if s.driver is not None:
        spec["Driver"] = _driver_to_wire(s.driver)
    if s.templating is not None:
        spec["Templating"] = _driver_to_wire(s.templating)
    return {"ID": secret.id, **meta(secret.meta), "Spec": spec}


def config_to_wire(config: Config) -> JSONDict:
    s = config.spec
    spec: JSONDict = {}
    put(spec, "Name", s.annotations.name)
    spec["Labels"] = dict(s.annotations.labels)
    put(spec, "Data", base64.b64encode(s.data).decode())
    if s.templating is not None:
        spec["Templating"] = _driver_to_wire(s.templating)
    return {"ID": config.id, **meta(config.meta), "Spec": spec}


# --- networks ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkCreate:
    """POST /networks/create, for a swarm-scoped network. `check_duplicate` is informational (dockerd
    always refuses duplicate names since API 1.44). `scope` is what the client asked for ("" or "swarm")."""

    spec: NetworkSpec
    check_duplicate: bool = False
    requested_scope: str = ""


def _ip(s: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(s, strict=False)
    except ValueError:
        raise InvalidArgument(f"invalid {what}: {s}") from None


def _go_cidr(s: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """`s` as Go's net.ParseCIDR reads it (address/prefix-length, host bits allowed), or None where Go refuses
    it (no prefix length, a netmask instead of one, a length past the address's bits)."""
    addr, slash, length = s.partition("/")
    if not slash or not length.isascii() or not length.isdigit():
        return None
    try:
        return ipaddress.ip_network(f"{addr}/{int(length)}", strict=False)
    except ValueError:
        return None


def network_create_from_wire(body: Any) -> NetworkCreate:
    o = Obj.root(body, "CreateRequest")
    name = o.string("Name")
    if not name:
        raise _rpc_invalid("meta: name must be provided")
    if not _DNS_NAME.match(name):
        raise _rpc_invalid("name must be valid as a DNS name component")
    if len(name) > 63:
        raise _rpc_invalid("name must be 63 characters or fewer")
    driver = o.string("Driver") or "overlay"
    scope = o.string("Scope")
    if o.boolean("ConfigOnly") or o.get("ConfigFrom") is not None:
        raise InvalidArgument("config-only networks (ConfigOnly/ConfigFrom) are not supported by Shoal")
    if driver != "overlay":
        raise InvalidArgument(
            f'network driver "{driver}" is not supported by Shoal: only "overlay" networks '
            "can be created on a swarm manager"
        )
    if scope not in ("", "swarm"):
        raise InvalidArgument(f'network scope "{scope}" is not supported by Shoal: only "swarm"')
    ipam_o = o.obj("IPAM", "IPAM")
    ipam: IPAMOptions | None = None
    if ipam_o is not None:
        configs = []
        for c in ipam_o.objs("Config", "IPAMConfig"):
            subnet = c.string("Subnet")
            ip_range = c.string("IPRange")
            gateway = c.string("Gateway")
            if c.get("AuxiliaryAddresses"):
                raise InvalidArgument("IPAM.Config.AuxiliaryAddresses is not supported by Shoal")
            net = _go_cidr(subnet)
            if net is None:
                # dockerd 20.10 reads the IPAM config (its local network code, before any handoff to the
                # swarm) with net.ParseCIDR and returns the error untyped: 500
                raise ShoalError(f"Invalid subnet {subnet} : invalid CIDR address: {subnet}")
            if ip_range:
                rng = _ip(ip_range, "range")
                if not rng.subnet_of(net):  # type: ignore[arg-type]
                    raise _rpc_invalid(
                        f"ipam configuration: subnet {subnet} does not contain range {ip_range}"
                    )
            if gateway:
                try:
                    gw = ipaddress.ip_address(gateway)
                except ValueError:
                    raise _rpc_invalid(f"ipam configuration: invalid gateway {gateway}") from None
                if gw not in net:
                    raise _rpc_invalid(
                        f"ipam configuration: subnet {subnet} does not contain gateway {gateway}"
                    )
            configs.append(IPAMConfig(subnet=str(net), ip_range=ip_range, gateway=gateway))
        ipam = IPAMOptions(
            driver=Driver(name=ipam_o.string("Driver") or "default", options=ipam_o.str_map("Options")),
            configs=tuple(configs),
        )
    ingress = o.boolean("Ingress")
    attachable = o.boolean("Attachable")
    if ingress and attachable:
        raise _rpc_invalid("ingress network cannot be attachable")
    labels = o.str_map("Labels")
    for k in labels:
        if k == "com.docker.swarm.predefined":
            raise InvalidArgument(
                rpc(
                    "PermissionDenied",
                    f"label {k} is for internally created predefined networks and cannot be applied by users",
                )
            )
    spec = NetworkSpec(
        annotations=Annotations(name=name, labels=labels),
        driver=Driver(name=driver, options=o.str_map("Options")),
        ipv6_enabled=bool(o.opt_bool("EnableIPv6")),
        internal=o.boolean("Internal"),
        attachable=attachable,
        ingress=ingress,
        ipam=ipam,
        scope="swarm",
    )
    o.opt_bool("EnableIPv4")
    return NetworkCreate(spec=spec, check_duplicate=o.boolean("CheckDuplicate"), requested_scope=scope)


def _gateway_for(cfg: IPAMConfig) -> str:
    if cfg.gateway:
        return cfg.gateway
    try:
        net = ipaddress.ip_network(cfg.subnet, strict=False)
    except ValueError:
        return ""
    return str(net.network_address + 1)


def _driver_options(n: Network) -> dict[str, str]:
    opts = dict(n.spec.driver.options)
    if n.vni:
        opts[VXLANID_OPTION] = str(n.vni)
    return opts


def network_to_wire(
    n: Network,
    *,
    containers: Mapping[str, Any] | None = None,
    services: Mapping[str, Any] | None = None,
    api_version: str | None = None,
    listed: bool = False,
) -> JSONDict:
    """A swarm-scope overlay network as `GET /networks/{id}` (or, `listed`, the list) shows it on a manager.

    `containers` are the local endpoint resources: dockerd shows null for a network without a local endpoint
    (the cluster's view of it); `services` is the verbose (`?verbose=true`) service map, omitted when None.
    The ingress network's inspect is the local engine's view, whose Containers and Labels are {} when
    empty; the list shows the cluster's, null.
    """
    ipam = n.ipam
    cfgs = []
    for c in ipam.configs:
        cd: JSONDict = {}
        put(cd, "Subnet", c.subnet)
        put(cd, "IPRange", c.ip_range)
        put(cd, "Gateway", _gateway_for(c))
        cfgs.append(cd)
    d: JSONDict = {
        "Name": n.spec.annotations.name,
        "Id": n.id,
        "Created": go_time(n.meta.created_at),
        "Scope": "swarm",
        "Driver": n.spec.driver.name or "overlay",
    }
    if api_version is None or not _lt(api_version, "1.47"):
        d["EnableIPv4"] = True
    d["EnableIPv6"] = n.spec.ipv6_enabled
    d["IPAM"] = {
        "Driver": ipam.driver.name or "default",
        "Options": dict(ipam.driver.options) or None,
        "Config": cfgs,
    }
    d["Internal"] = n.spec.internal
    d["Attachable"] = n.spec.attachable
    d["Ingress"] = n.spec.ingress
    d["ConfigFrom"] = {"Network": ""}
    d["ConfigOnly"] = False
    local_view = n.spec.ingress and not listed  # the ingress is attached on every node
    d["Containers"] = dict(containers) if containers else ({} if local_view else None)
    d["Options"] = _driver_options(n)
    d["Labels"] = dict(n.spec.annotations.labels) if (n.spec.annotations.labels or local_view) else None
    if services is not None:
        d["Services"] = dict(services)
    return d


def _lt(v: str, than: str) -> bool:
    try:
        return tuple(int(x) for x in v.split(".")) < tuple(int(x) for x in than.split("."))
    except ValueError:
        return False


def _ipam_swarm(ipam: IPAMOptions | None) -> JSONDict | None:
    if ipam is None:
        return None
    drv: JSONDict = {}
    put(drv, "Name", ipam.driver.name)
    put(drv, "Options", dict(ipam.driver.options))
    d: JSONDict = {"Driver": drv}
    cfgs = []
    for c in ipam.configs:
        cd: JSONDict = {}
        put(cd, "Subnet", c.subnet)
        put(cd, "Range", c.ip_range)
        put(cd, "Gateway", c.gateway)
        cfgs.append(cd)
    put(d, "Configs", cfgs)
    return d


def network_swarm_object(n: Network) -> JSONDict:
    """The swarm API's Network object, as found in a task's NetworksAttachments[].Network."""
    spec: JSONDict = {}
    put(spec, "Name", n.spec.annotations.name)
    spec["Labels"] = dict(n.spec.annotations.labels)
    spec["DriverConfiguration"] = _driver_to_wire(n.spec.driver)
    put(spec, "IPv6Enabled", n.spec.ipv6_enabled)
    put(spec, "Internal", n.spec.internal)
    put(spec, "Attachable", n.spec.attachable)
    put(spec, "Ingress", n.spec.ingress)
    if (ip := _ipam_swarm(n.spec.ipam)) is not None:
        spec["IPAMOptions"] = ip
    spec["Scope"] = "swarm"
    d: JSONDict = {
        "ID": n.id,
        **meta(n.meta),
        "Spec": spec,
        "DriverState": _driver_to_wire(
            Driver(name=n.spec.driver.name or "overlay", options=_driver_options(n))
        ),
    }
    if (ip := _ipam_swarm(n.ipam)) is not None:
        d["IPAMOptions"] = ip
    return d
