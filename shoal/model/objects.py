"""The domain model: frozen, typed cluster objects, independent of the Engine API's JSON.

Durations are integer nanoseconds (as in the Engine API), timestamps float seconds since the epoch.
Sub-objects that Shoal only hands to an executor unchanged (mounts, ulimits, DNS config, privileges...)
are kept as `JSON` values: the core never interprets them, the executor does, and the wire converter
validates their shape. Everything the core reasons about is a typed field.

Change objects with `dataclasses.replace`; never mutate the mappings inside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.model.state import TaskState

JSON = Any  # a JSON value that the core passes through unchanged

SECOND = 1_000_000_000


def _labels() -> Mapping[str, str]:
    return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class Meta:
    version: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Annotations:
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=_labels)


# --- resources and placement -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GenericResource:
    kind: str
    value: int = 0  # discrete amount
    named: str = ""  # a named resource (e.g. one GPU id); value is 0 then


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    nano_cpus: int = 0
    memory_bytes: int = 0
    pids: int = 0
    generic: tuple[GenericResource, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceRequirements:
    limits: Resources | None = None
    reservations: Resources | None = None


DEFAULT_RESTART_DELAY = 5 * SECOND  # swarmkit defaults.Service.Task.Restart.Delay
DEFAULT_UPDATE_MONITOR = 5 * SECOND  # swarmkit defaults.Service.Update.Monitor (and Rollback's)


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    condition: str = "any"  # none | on-failure | any
    # None: not given, shown as absent (swarmkit keeps a Duration's presence); a restart then waits 5 s
    delay: int | None = None
    max_attempts: int = 0
    window: int | None = None  # None: not given (no window), shown as absent; 0 given is shown as 0

    @property
    def delay_or_default(self) -> int:
        return DEFAULT_RESTART_DELAY if self.delay is None else self.delay


@dataclass(frozen=True, slots=True, kw_only=True)
class Platform:
    architecture: str = ""
    os: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    constraints: tuple[str, ...] = ()
    preferences: tuple[str, ...] = ()  # spread descriptors, e.g. "node.labels.zone"
    max_replicas: int = 0
    platforms: tuple[Platform, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateConfig:
    parallelism: int = 1
    delay: int = 0
    failure_action: str = "pause"  # pause | continue | rollback
    # 0: not given (dockerd leaves swarmkit's Monitor nil and shows none); an update then monitors 5 s
    monitor: int = 0
    max_failure_ratio: float = 0.0
    order: str = "stop-first"  # stop-first | start-first

    @property
    def monitor_or_default(self) -> int:
        return self.monitor or DEFAULT_UPDATE_MONITOR


# --- container spec ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    test: tuple[str, ...] = ()  # [] inherit, ["NONE"] disable, ["CMD", ...], ["CMD-SHELL", "..."]
    interval: int = 0
    timeout: int = 0
    retries: int = 0
    start_period: int = 0
    start_interval: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class FileTarget:
    name: str
    uid: str = "0"
    gid: str = "0"
    mode: int = 0o444


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretReference:
    secret_id: str
    secret_name: str
    file: FileTarget | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigReference:
    config_id: str
    config_name: str
    file: FileTarget | None = None
    runtime: bool = False  # credential specs; accepted, never written to disk


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerSpec:
    image: str = ""
    labels: Mapping[str, str] = field(default_factory=_labels)
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    hostname: str = ""
    env: tuple[str, ...] = ()
    dir: str = ""
    user: str = ""
    groups: tuple[str, ...] = ()
    tty: bool = False
    open_stdin: bool = False
    read_only: bool = False
    mounts: tuple[JSON, ...] = ()
    stop_signal: str = ""
    stop_grace_period: int | None = None
    healthcheck: HealthConfig | None = None
    hosts: tuple[str, ...] = ()
    dns_config: JSON = None
    secrets: tuple[SecretReference, ...] = ()
    configs: tuple[ConfigReference, ...] = ()
    isolation: str = ""
    init: bool | None = None
    privileges: JSON = None
    sysctls: Mapping[str, str] = field(default_factory=_labels)
    capability_add: tuple[str, ...] = ()
    capability_drop: tuple[str, ...] = ()
    ulimits: tuple[JSON, ...] = ()
    oom_score_adj: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkAttachmentConfig:
    target: str  # network ID (names are resolved at create time)
    aliases: tuple[str, ...] = ()
    driver_opts: Mapping[str, str] = field(default_factory=_labels)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogDriver:
    name: str = ""
    options: Mapping[str, str] = field(default_factory=_labels)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    container: ContainerSpec = field(default_factory=ContainerSpec)
    resources: ResourceRequirements | None = None
    restart_policy: RestartPolicy | None = None
    placement: Placement | None = None
    force_update: int = 0
    runtime: str = ""
    networks: tuple[NetworkAttachmentConfig, ...] = ()
    log_driver: LogDriver | None = None


# --- services ----------------------------------------------------------------------------------


REPLICATED = "replicated"
GLOBAL = "global"
REPLICATED_JOB = "replicated-job"
GLOBAL_JOB = "global-job"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceMode:
    kind: str = REPLICATED
    replicas: int = 1  # replicated
    max_concurrent: int = 1  # replicated-job
    total_completions: int = 1  # replicated-job

    @property
    def is_job(self) -> bool:
        return self.kind in (REPLICATED_JOB, GLOBAL_JOB)

    @property
    def is_global(self) -> bool:
        return self.kind in (GLOBAL, GLOBAL_JOB)


@dataclass(frozen=True, slots=True, kw_only=True)
class PortConfig:
    name: str = ""
    protocol: str = "tcp"  # tcp | udp | sctp
    target_port: int = 0
    published_port: int = 0
    publish_mode: str = "ingress"  # ingress | host


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSpec:
    mode: str = "vip"  # vip | dnsrr
    ports: tuple[PortConfig, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    annotations: Annotations = field(default_factory=Annotations)
    task_template: TaskSpec = field(default_factory=TaskSpec)
    mode: ServiceMode = field(default_factory=ServiceMode)
    update_config: UpdateConfig | None = None
    rollback_config: UpdateConfig | None = None
    endpoint_spec: EndpointSpec | None = None

    @property
    def name(self) -> str:
        return self.annotations.name


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualIP:
    network_id: str
    addr: str  # CIDR form, e.g. 10.0.0.2/24


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    spec: EndpointSpec = field(default_factory=EndpointSpec)
    ports: tuple[PortConfig, ...] = ()
    virtual_ips: tuple[VirtualIP, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateStatus:
    state: str = ""  # updating | paused | completed | rollback_started | rollback_paused | rollback_completed
    started_at: float = 0.0
    completed_at: float = 0.0
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStatus:
    job_iteration: int = 0
    last_execution: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CronStatus:
    """What the leader's cron loop last did for a service with a schedule (shoal.manager.cron), replicated with the
    service so that a new leader knows which ticks were handled: the tick and the run it started commit together."""

    key: str = ""  # the schedule (and zone) the ticks below were computed from; a new one re-anchors them
    last_tick: float = 0.0  # the newest tick handled (run or skipped), or the anchor the schedule counts from
    since: float = 0.0  # the anchor: when the schedule (this key) was written; its ticks are the ones after it
    next_run: float = 0.0  # the tick after it
    iteration: int = 0  # runs started so far; a run's tasks carry it as their job iteration (0: none yet)
    last_run: float = 0.0  # when the newest run started
    last_reason: str = ""  # what started it: schedule | missed | trigger | force | api
    skipped: int = 0  # ticks not run (still running, or missed past the deadline)
    message: str = ""  # what the newest tick did, for people
    trigger: str = ""  # the trigger label's value already acted on
    force_update: int = 0  # the task template's ForceUpdate already acted on (`service update --force`)
    requested: int = 0  # runs asked for through the API (POST /_shoal/cron/{id}/run)
    handled: int = 0  # of those, how many were started
    spec_version: int = 0  # the service spec version the running tasks were checked against (on-update=stop)


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    id: str
    meta: Meta = field(default_factory=Meta)
    spec: ServiceSpec = field(default_factory=ServiceSpec)
    spec_version: int = 0  # bumped on every spec change; tasks remember the one they were made from
    previous_spec: ServiceSpec | None = None
    previous_spec_version: int = 0
    endpoint: Endpoint = field(default_factory=Endpoint)
    update_status: UpdateStatus | None = None
    job_status: JobStatus | None = None
    pending_delete: bool = False
    cron: CronStatus | None = None  # set by the cron loop for a service with a schedule

    @property
    def name(self) -> str:
        return self.spec.annotations.name


# --- tasks -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerStatus:
    container_id: str = ""
    pid: int = 0
    exit_code: int = 0
    # True when the kernel's OOM killer ended it (Shoal's own, not on the Engine API's wire); None otherwise, so
    # the log's records of every other task stay as they were.
    oom_killed: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStatus:
    timestamp: float = 0.0
    state: TaskState = TaskState.NEW
    message: str = ""
    err: str = ""
    container: ContainerStatus | None = None
    port_status: tuple[PortConfig, ...] = ()
    healthy: bool | None = None  # None: no health check


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkAttachment:
    network_id: str
    addresses: tuple[str, ...] = ()  # CIDR form
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    id: str
    meta: Meta = field(default_factory=Meta)
    annotations: Annotations = field(default_factory=Annotations)
    spec: TaskSpec = field(default_factory=TaskSpec)
    spec_version: int = 0
    service_id: str = ""
    service_annotations: Annotations = field(default_factory=Annotations)
    slot: int = 0  # replicated: 1..N; global: 0 (the node is the slot)
    node_id: str = ""
    status: TaskStatus = field(default_factory=TaskStatus)
    desired_state: TaskState = TaskState.RUNNING
    networks: tuple[NetworkAttachment, ...] = ()
    endpoint: Endpoint | None = None
    job_iteration: int | None = None
    restart_count: int = 0  # restarts counted towards RestartPolicy.max_attempts in this slot
    restart_history: tuple[float, ...] = ()  # times of those restarts, for RestartPolicy.window
    start_after: float = 0.0  # desired READY until then (restart delay), then the orchestrator starts it


# --- nodes -------------------------------------------------------------------------------------


WORKER = "worker"
MANAGER = "manager"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    annotations: Annotations = field(default_factory=Annotations)
    role: str = WORKER
    availability: str = "active"  # active | pause | drain


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineDescription:
    engine_version: str = ""
    labels: Mapping[str, str] = field(default_factory=_labels)
    plugins: tuple[JSON, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeDescription:
    hostname: str = ""
    platform: Platform = field(default_factory=Platform)
    resources: Resources = field(default_factory=Resources)
    engine: EngineDescription = field(default_factory=EngineDescription)
    tls_info: JSON = None
    # Shoal's own (not in the Engine API): IPv4 subnets the node's engine networks and host routes take, which
    # the manager does not pick for overlays (a docker-executor node turns each overlay into an engine bridge).
    routed_subnets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    state: str = "unknown"  # unknown | down | ready | disconnected
    message: str = ""
    addr: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerStatus:
    leader: bool = False
    reachability: str = "reachable"  # unknown | unreachable | reachable
    addr: str = ""  # the manager's listen address (host:port) other nodes reach it at
    raft_id: int = 0  # its member id in the Raft group (0: not a member yet)


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    id: str
    meta: Meta = field(default_factory=Meta)
    spec: NodeSpec = field(default_factory=NodeSpec)
    description: NodeDescription = field(default_factory=NodeDescription)
    status: NodeStatus = field(default_factory=NodeStatus)
    manager_status: ManagerStatus | None = None
    # The role the node has now (its certificate's), as swarmkit's Node.Role; spec.role is the desired one. A
    # demotion changes it only once the manager left the Raft group; "" (older data) means spec.role.
    observed_role: str = ""
    # The node's own address on the ingress network (the routing mesh connects to tasks from it), set by
    # the allocator, as swarmkit's node attachments.
    attachments: tuple[NetworkAttachment, ...] = ()

    @property
    def role(self) -> str:
        return self.observed_role or self.spec.role


# --- secrets, configs, networks ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Driver:
    name: str = ""
    options: Mapping[str, str] = field(default_factory=_labels)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretSpec:
    annotations: Annotations = field(default_factory=Annotations)
    data: bytes = b""
    driver: Driver | None = None
    templating: Driver | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Secret:
    id: str
    meta: Meta = field(default_factory=Meta)
    spec: SecretSpec = field(default_factory=SecretSpec)

    @property
    def name(self) -> str:
        return self.spec.annotations.name


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigSpec:
    annotations: Annotations = field(default_factory=Annotations)
    data: bytes = b""
    templating: Driver | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    id: str
    meta: Meta = field(default_factory=Meta)
    spec: ConfigSpec = field(default_factory=ConfigSpec)

    @property
    def name(self) -> str:
        return self.spec.annotations.name


@dataclass(frozen=True, slots=True, kw_only=True)
class IPAMConfig:
    subnet: str = ""
    ip_range: str = ""
    gateway: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IPAMOptions:
    driver: Driver = field(default_factory=lambda: Driver(name="default"))
    configs: tuple[IPAMConfig, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkSpec:
    annotations: Annotations = field(default_factory=Annotations)
    driver: Driver = field(default_factory=lambda: Driver(name="overlay"))
    ipv6_enabled: bool = False
    internal: bool = False
    attachable: bool = False
    ingress: bool = False
    ipam: IPAMOptions | None = None
    scope: str = "swarm"


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    id: str
    meta: Meta = field(default_factory=Meta)
    spec: NetworkSpec = field(default_factory=NetworkSpec)
    ipam: IPAMOptions = field(default_factory=IPAMOptions)  # as allocated (subnets filled in)
    vni: int = 0
    pending_delete: bool = False

    @property
    def name(self) -> str:
        return self.spec.annotations.name


# --- the cluster -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalCA:
    protocol: str = "cfssl"
    url: str = ""
    options: Mapping[str, str] = field(default_factory=_labels)
    ca_cert: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CAConfig:
    node_cert_expiry: int = 90 * 24 * 3600 * SECOND
    external_cas: tuple[ExternalCA, ...] = ()
    signing_ca_cert: str = ""
    signing_ca_key: str = ""
    force_rotate: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftConfig:
    snapshot_interval: int = 10000
    keep_old_snapshots: int = 0
    log_entries_for_slow_followers: int = 500
    election_tick: int = 10
    heartbeat_tick: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class SwarmSpec:
    annotations: Annotations = field(default_factory=lambda: Annotations(name="default"))
    task_history_retention_limit: int = 5
    raft: RaftConfig = field(default_factory=RaftConfig)
    heartbeat_period: int = 5 * SECOND
    ca_config: CAConfig = field(default_factory=CAConfig)
    autolock_managers: bool = False
    # (no TaskDefaults: dockerd never converts it, and an older log keeps it harmlessly: unknown keys are ignored)


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinTokens:
    worker: str = ""
    manager: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RootCA:
    ca_cert_pem: str = ""
    ca_key_pem: str = ""  # sealed at rest with the rest of the Raft data
    cert_hash: str = ""  # sha256 digest of the root certificate, pinned by join tokens
    # `swarm ca --rotate` in progress: the next root (and its key), and that root's key signed by the current
    # root (the cross-signed intermediate), so nodes trusting either root keep talking (shoal/ca.py).
    rotation_ca_cert_pem: str = ""
    rotation_ca_key_pem: str = ""
    rotation_cross_signed_pem: str = ""
    last_forced_rotation: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    id: str
    meta: Meta = field(default_factory=Meta)
    spec: SwarmSpec = field(default_factory=SwarmSpec)
    root_ca: RootCA = field(default_factory=RootCA)
    join_tokens: JoinTokens = field(default_factory=JoinTokens)
    default_addr_pool: tuple[str, ...] = ("10.0.0.0/8",)
    subnet_size: int = 24
    data_path_port: int = 4789
    unlock_key: str = ""


StoreObject = Node | Service | Task | Network | Secret | Config | Cluster
