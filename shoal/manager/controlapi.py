"""The control API: validate requests, resolve references, write the store, map errors.

The Engine API handlers call these methods with domain objects; this layer owns the rules a request must
satisfy (names, references, versions, objects in use) and raises `shoal.errors` with dockerd's texts.
Reads are plain functions over `store.view()`.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace
from typing import Any

from shoal.api import messages as M
from shoal.clock import Clock
from shoal.errors import Conflict, InvalidArgument, NotFound, NotImplementedFeature, SequenceConflict, ShoalError
from shoal.ids import new_id
from shoal.manager.allocator import PoolExhausted, allocate_subnet
from shoal.manager.membership import Membership
from shoal.manager.scheduler.constraints import parse_constraints
from shoal.manager.scheduler.core import STRATEGIES, STRATEGY_LABEL
from shoal.manager.validation import validate_service_spec
from shoal.model.objects import (
    Cluster,
    Config,
    ConfigReference,
    ConfigSpec,
    EndpointSpec,
    IPAMConfig,
    IPAMOptions,
    JobStatus,
    Network,
    NetworkAttachmentConfig,
    NetworkSpec,
    Node,
    NodeSpec,
    Secret,
    SecretReference,
    SecretSpec,
    Service,
    ServiceSpec,
    SwarmSpec,
    UpdateStatus,
)
from shoal.model.state import TaskState
from shoal.names import random_service_name
from shoal.store.memory import MemoryStore, ReadTx, Tx


def _grpc_invalid(desc: str) -> InvalidArgument:
    return InvalidArgument(M.rpc(M.INVALID_ARGUMENT, desc))


class ControlAPI:
    def __init__(self, store: MemoryStore, clock: Clock, rng: random.Random) -> None:
        self.store = store
        self.clock = clock
        self.rng = rng
        self.membership: Membership | None = None  # of a replicated manager

    def view(self) -> ReadTx:
        return self.store.view()

    # --- lookups ----------------------------------------------------------------------------------

    def _find(self, v: ReadTx, kind: str, ref: str, not_found: str) -> object:
        try:
            obj = v.lookup(kind, ref)
        except Conflict as e:
            raise InvalidArgument(e.message) from None
        if obj is None:
            raise NotFound(not_found)
        return obj

    def get_service(self, ref: str, v: ReadTx | None = None) -> Service:
        obj = self._find(v or self.view(), "service", ref, M.service_not_found(ref))
        assert isinstance(obj, Service)
        return obj

    def get_node(self, ref: str, v: ReadTx | None = None) -> Node:
        obj = self._find(v or self.view(), "node", ref, M.node_not_found(ref))
        assert isinstance(obj, Node)
        return obj

    def get_secret(self, ref: str, v: ReadTx | None = None) -> Secret:
        obj = self._find(v or self.view(), "secret", ref, M.secret_not_found(ref))
        assert isinstance(obj, Secret)
        return obj

    def get_config(self, ref: str, v: ReadTx | None = None) -> Config:
        obj = self._find(v or self.view(), "config", ref, M.config_not_found(ref))
        assert isinstance(obj, Config)
        return obj

    def get_network(self, ref: str, v: ReadTx | None = None) -> Network:
        obj = self._find(v or self.view(), "network", ref, M.network_not_found(ref))
        assert isinstance(obj, Network)
        return obj

    def get_task(self, ref: str) -> object:
        return self._find(self.view(), "task", ref, M.task_not_found(ref))

    def cluster(self) -> Cluster:
        c = self.view().cluster()
        if c is None:
            raise NotFound(M.NO_SWARM)
        return c

    # --- services ---------------------------------------------------------------------------------

    def random_name(self) -> str:
        """An unused `adjective_noun` name for a service created without one (injected randomness)."""
        return self._random_name(self.store.view())

    def _random_name(self, v: ReadTx) -> str:
        while True:
            name = random_service_name(self.rng)
            if v.by_name("service", name) is None:
                return name

    def _validate_service(self, tx: Tx, spec: ServiceSpec, service_id: str | None) -> ServiceSpec:
        if not spec.name:
            spec = replace(spec, annotations=replace(spec.annotations, name=self._random_name(tx)))
        validate_service_spec(spec)
        tmpl = spec.task_template
        if tmpl.placement is not None and tmpl.placement.constraints:
            try:
                parse_constraints(list(tmpl.placement.constraints))
            except InvalidArgument as e:
                # swarmkit returns constraint.Parse's error without a gRPC status: code Unknown, HTTP 500
                raise ShoalError(M.rpc(M.UNKNOWN, e.message)) from None
        strategy = spec.annotations.labels.get(STRATEGY_LABEL)
        if strategy is not None and strategy not in STRATEGIES:
            raise _grpc_invalid(f"label {STRATEGY_LABEL}: unknown scheduling strategy {strategy!r} "
                                f"(expected one of {', '.join(STRATEGIES)})")
        # networks: resolve names to IDs; the ingress network cannot be attached explicitly
        nets: list[NetworkAttachmentConfig] = []
        for att in tmpl.networks:
            net = tx.lookup("network", att.target)
            if net is None:
                # dockerd resolves the target itself before calling swarmkit and returns its "not found"
                # untyped: 500
                raise ShoalError(M.network_not_found(att.target))
            if net.spec.ingress:
                raise InvalidArgument(M.cannot_attach_ingress(net.name))
            nets.append(replace(att, target=net.id))
        # secrets and configs must exist
        secrets: list[SecretReference] = []
        missing: list[str] = []
        for ref in tmpl.container.secrets:
            s = tx.get("secret", ref.secret_id) or tx.by_name("secret", ref.secret_name)
            if s is None:
                missing.append(ref.secret_name or ref.secret_id)
                continue
            secrets.append(replace(ref, secret_id=s.id, secret_name=s.name))
        if missing:
            raise InvalidArgument(M.secrets_not_found(missing))
        configs: list[ConfigReference] = []
        for cref in tmpl.container.configs:
            c = tx.get("config", cref.config_id) or tx.by_name("config", cref.config_name)
            if c is None:
                missing.append(cref.config_name or cref.config_id)
                continue
            configs.append(replace(cref, config_id=c.id, config_name=c.name))
        if missing:
            raise InvalidArgument(M.configs_not_found(missing))
        container = replace(tmpl.container, secrets=tuple(secrets), configs=tuple(configs))
        spec = replace(spec, task_template=replace(tmpl, networks=tuple(nets), container=container))
        self._check_ports(tx, spec.endpoint_spec, service_id)
        if spec.endpoint_spec and any(p.publish_mode == "ingress" for p in spec.endpoint_spec.ports):
            if not any(n.spec.ingress for n in tx.all("network")):
                raise ShoalError(M.NO_INGRESS)
        return spec

    def _check_ports(self, tx: Tx, ep: EndpointSpec | None, service_id: str | None) -> None:
        if ep is None:
            return
        for other in tx.services():
            if other.id == service_id:
                continue
            for p in other.endpoint.ports or (other.spec.endpoint_spec.ports if other.spec.endpoint_spec else ()):
                for q in ep.ports:
                    if not q.published_port or q.protocol != p.protocol or q.published_port != p.published_port:
                        continue
                    if p.publish_mode == "ingress" or q.publish_mode == "ingress":
                        if p.publish_mode == "ingress":
                            raise InvalidArgument(M.port_in_use_ingress(q.published_port, other.name, other.id))
                        raise InvalidArgument(M.port_in_use_host(q.published_port, other.name, other.id))

    async def create_service(self, spec: ServiceSpec) -> Service:
        sid = new_id(self.rng)

        def fn(tx: Tx) -> Service:
            if tx.cluster() is None:
                raise NotFound(M.NO_SWARM)
            checked = self._validate_service(tx, spec, None)
            if tx.by_name("service", checked.name) is not None:
                raise Conflict(M.service_name_conflict(checked.name))
            job = JobStatus(job_iteration=0, last_execution=tx.now) if checked.mode.is_job else None
            return tx.create(Service(id=sid, spec=checked, spec_version=1, job_status=job))

        return await self.store.update(fn, verify=True)

    async def update_service(self, ref: str, version: int, spec: ServiceSpec | None,
                             rollback: bool = False) -> Service:
        def fn(tx: Tx) -> Service:
            cur = self.get_service(ref, tx)
            if cur.meta.version != version:
                raise SequenceConflict(M.UPDATE_OUT_OF_SEQUENCE)
            # As swarmkit: every update of a job (an unchanged spec too, a rollback too) starts a new
            # iteration of it, so `service update --force` re-runs a finished job.
            job_status = cur.job_status
            if job_status is not None:
                job_status = JobStatus(job_iteration=job_status.job_iteration + 1, last_execution=tx.now)
            if rollback:
                # A manual rollback swaps the spec with the previous one (a second manual rollback goes
                # forward again); an automatic rollback clears the previous spec, so rolling back a
                # service that rolled itself back is refused, as swarmkit refuses it (400, same text).
                if cur.previous_spec is None:
                    raise InvalidArgument(M.no_previous_spec(cur.id))
                return tx.update(replace(
                    cur, spec=cur.previous_spec, previous_spec=cur.spec,
                    spec_version=cur.spec_version + 1, previous_spec_version=cur.spec_version,
                    job_status=job_status,
                    update_status=UpdateStatus(state="rollback_started", started_at=tx.now,
                                               message="manually requested rollback")))
            assert spec is not None
            new_spec = spec
            if not new_spec.name:
                new_spec = replace(new_spec, annotations=replace(new_spec.annotations, name=cur.name))
            if new_spec.name != cur.name:
                raise NotImplementedFeature(M.RENAME_NOT_SUPPORTED)
            if new_spec.mode.kind != cur.spec.mode.kind:
                raise NotImplementedFeature(M.MODE_CHANGE_NOT_ALLOWED)
            checked = self._validate_service(tx, new_spec, cur.id)
            return tx.update(replace(
                cur, spec=checked, previous_spec=cur.spec,
                spec_version=cur.spec_version + 1 if checked != cur.spec else cur.spec_version,
                previous_spec_version=cur.spec_version, update_status=None, job_status=job_status))

        return await self.store.update(fn, verify=True)

    async def remove_service(self, ref: str) -> None:
        def fn(tx: Tx) -> None:
            cur = self.get_service(ref, tx)
            tx.delete("service", cur.id)
            for t in tx.tasks(service_id=cur.id):
                if t.desired_state < TaskState.REMOVE:
                    tx.update(replace(t, desired_state=TaskState.REMOVE), check_version=False)

        await self.store.update(fn, verify=True)

    # --- secrets and configs ----------------------------------------------------------------------

    def _users(self, v: ReadTx, kind: str, obj_id: str) -> list[str]:
        users = []
        for s in v.services():
            refs = s.spec.task_template.container.secrets if kind == "secret" \
                else s.spec.task_template.container.configs
            if any((r.secret_id if isinstance(r, SecretReference) else r.config_id) == obj_id for r in refs):
                users.append(s.name)
        return sorted(users)

    # --- secrets and configs: named payloads services refer to, handled alike ------------------------

    async def _create_payload(self, kind: str, obj: Secret | Config) -> Any:
        def fn(tx: Tx) -> Any:
            if tx.by_name(kind, obj.name) is not None:
                raise Conflict(M.name_conflict(kind, obj.name))
            return tx.create(obj)

        return await self.store.update(fn, verify=True)

    async def _update_payload(self, kind: str, ref: str, version: int, spec: SecretSpec | ConfigSpec) -> None:
        """Only the labels of a secret or config change (swarmkit); the rest must be sent as it is, or no data."""
        def fn(tx: Tx) -> None:
            cur = self._get_payload(kind, ref, tx)
            if cur.meta.version != version:
                raise SequenceConflict(M.UPDATE_OUT_OF_SEQUENCE)
            if spec.annotations.name != cur.name or (spec.data and spec.data != cur.spec.data) \
                    or getattr(spec, "driver", None) != getattr(cur.spec, "driver", None):
                raise InvalidArgument(M.ONLY_LABELS_UPDATABLE)
            if isinstance(cur, Secret):
                tx.update(replace(cur, spec=replace(cur.spec, annotations=spec.annotations)))
            else:
                tx.update(replace(cur, spec=replace(cur.spec, annotations=spec.annotations)))

        await self.store.update(fn, verify=True)

    async def _remove_payload(self, kind: str, ref: str) -> None:
        def fn(tx: Tx) -> None:
            cur = self._get_payload(kind, ref, tx)
            users = self._users(tx, kind, cur.id)
            if users:
                raise InvalidArgument(M.secret_in_use(cur.name, users) if kind == "secret"
                                      else M.config_in_use(cur.name, users))
            tx.delete(kind, cur.id)

        await self.store.update(fn, verify=True)

    def _get_payload(self, kind: str, ref: str, v: ReadTx) -> Secret | Config:
        return self.get_secret(ref, v) if kind == "secret" else self.get_config(ref, v)

    async def create_secret(self, spec: SecretSpec) -> Secret:
        if not spec.annotations.name:
            raise _grpc_invalid("name must be valid as a DNS name component")
        if (spec.driver is None and not spec.data) or len(spec.data) > 500 * 1024:
            raise _grpc_invalid("secret data must be larger than 0 and less than 500KB")
        if spec.driver is not None:
            # Shoal runs no secret-driver plugins: swarmkit's lookup of the plugin fails (gRPC Unknown).
            raise ShoalError(f'rpc error: code = Unknown desc = plugin "{spec.driver.name}" not found')
        out: Secret = await self._create_payload("secret", Secret(id=new_id(self.rng), spec=spec))
        return out

    async def update_secret(self, ref: str, version: int, spec: SecretSpec) -> None:
        await self._update_payload("secret", ref, version, spec)

    async def remove_secret(self, ref: str) -> None:
        await self._remove_payload("secret", ref)

    async def create_config(self, spec: ConfigSpec) -> Config:
        if not spec.annotations.name:
            raise _grpc_invalid("name must be valid as a DNS name component")
        if not spec.data or len(spec.data) > 1000 * 1024:
            raise _grpc_invalid("config data must be larger than 0 and less than 1000KB")
        out: Config = await self._create_payload("config", Config(id=new_id(self.rng), spec=spec))
        return out

    async def update_config(self, ref: str, version: int, spec: ConfigSpec) -> None:
        await self._update_payload("config", ref, version, spec)

    async def remove_config(self, ref: str) -> None:
        await self._remove_payload("config", ref)

    # --- networks ---------------------------------------------------------------------------------

    def _allocate_ipam(self, tx: Tx, spec: NetworkSpec) -> IPAMOptions:
        cluster = tx.cluster()
        assert cluster is not None
        used = [c.subnet for n in tx.all("network") for c in n.ipam.configs if c.subnet]
        requested = spec.ipam.configs if spec.ipam is not None else ()
        driver = spec.ipam.driver if spec.ipam is not None else IPAMOptions().driver
        out: list[IPAMConfig] = []
        if not requested:
            routed = {r for n in tx.all("node") for r in n.description.routed_subnets}
            try:
                subnet = allocate_subnet(used, cluster.default_addr_pool, cluster.subnet_size, sorted(routed))
            except PoolExhausted as e:
                raise InvalidArgument(str(e)) from None
            requested = (IPAMConfig(subnet=subnet),)
        for c in requested:
            try:
                net = ipaddress.ip_network(c.subnet, strict=False) if c.subnet else None
            except ValueError:
                raise InvalidArgument(f"invalid subnet {c.subnet}") from None
            if net is None:
                raise InvalidArgument("ipam config without a subnet is not supported")
            for u in used:
                if net.overlaps(ipaddress.ip_network(u, strict=False)):
                    raise Conflict("rpc error: code = Unknown desc = pool overlaps with other one on this "
                                   "address space")  # swarmkit/libnetwork's text
            gw = c.gateway or str(next(net.hosts()))
            if c.gateway and ipaddress.ip_address(c.gateway) not in net:
                raise InvalidArgument(f"invalid gateway {c.gateway} for subnet {c.subnet}")
            out.append(IPAMConfig(subnet=str(net), ip_range=c.ip_range, gateway=gw))
        return IPAMOptions(driver=driver, configs=tuple(out))

    async def create_network(self, spec: NetworkSpec) -> Network:
        if spec.driver.name not in ("overlay", ""):
            raise InvalidArgument(f"rpc error: code = InvalidArgument desc = network driver "
                                  f"\"{spec.driver.name}\" is not supported in swarm scope")
        spec = replace(spec, driver=replace(spec.driver, name="overlay"))
        nid = new_id(self.rng)

        def fn(tx: Tx) -> Network:
            if tx.cluster() is None:
                raise NotFound(M.NO_SWARM)
            if tx.by_name("network", spec.annotations.name) is not None:
                raise Conflict(M.network_name_conflict(spec.annotations.name))
            if spec.ingress:
                existing = next((n for n in tx.all("network") if n.spec.ingress), None)
                if existing is not None:
                    raise Conflict(M.ingress_already_present(existing.id))
            ipam = self._allocate_ipam(tx, spec)
            vni = 4096 + 1 + sum(1 for _ in tx.all("network"))
            while any(n.vni == vni for n in tx.all("network")):
                vni += 1
            return tx.create(Network(id=nid, spec=spec, ipam=ipam, vni=vni))

        return await self.store.update(fn, verify=True)

    async def remove_network(self, ref: str) -> None:
        def fn(tx: Tx) -> None:
            net = self.get_network(ref, tx)
            for s in tx.services():
                if any(a.target == net.id for a in s.spec.task_template.networks):
                    raise InvalidArgument(M.network_in_use_by_service(net.id, s.id))
                if net.spec.ingress and s.endpoint.ports and any(
                        p.publish_mode == "ingress" for p in s.endpoint.ports):
                    raise InvalidArgument(M.ingress_in_use(s.id))
            for t in tx.tasks():  # e.g. a plain container's attachment (swarmkit's check)
                if t.desired_state <= TaskState.RUNNING and t.status.state <= TaskState.RUNNING and (
                        any(a.network_id == net.id for a in t.networks)
                        or any(c.target == net.id for c in t.spec.networks)):
                    raise InvalidArgument(M.network_in_use_by_task(net.id, t.id))
            tx.delete("network", net.id)

        await self.store.update(fn, verify=True)

    # --- nodes ------------------------------------------------------------------------------------

    async def update_node(self, ref: str, version: int, spec: NodeSpec) -> None:
        if spec.availability not in ("active", "pause", "drain"):
            raise InvalidArgument(f"invalid availability: {spec.availability}")
        if spec.role not in ("worker", "manager"):
            raise InvalidArgument(f"invalid role: {spec.role}")

        def fn(tx: Tx) -> None:
            cur = self.get_node(ref, tx)
            if cur.meta.version != version:
                raise SequenceConflict(M.UPDATE_OUT_OF_SEQUENCE)
            if cur.spec.role == "manager" and spec.role == "worker":
                # swarmkit's demotion checks; the role loop then takes it out of Raft and makes it a worker.
                managers = [n for n in tx.nodes() if n.spec.role == "manager"]
                if len(managers) == 1 and managers[0].id == cur.id:
                    raise ShoalError(M.DEMOTE_LAST_MANAGER)
                members = self.membership
                if members is not None:
                    rid = cur.manager_status.raft_id if cur.manager_status is not None else 0
                    if not rid or rid not in members.raft.voters:
                        raise NotFound(M.rpc(M.NOT_FOUND, "can't find manager in raft memberlist"))
                    if not members.can_remove(rid):
                        raise ShoalError(M.QUORUM_LOSS)
            tx.update(replace(cur, spec=spec))

        await self.store.update(fn, verify=True)

    async def remove_node(self, ref: str, force: bool) -> None:
        def fn(tx: Tx) -> None:
            cur = self.get_node(ref, tx)
            if cur.spec.role == "manager":
                # Refused while it is in the Raft group (swarmkit): demote it first.
                members = self.membership
                rid = cur.manager_status.raft_id if cur.manager_status is not None else 0
                if members is None or (rid and rid in members.raft.voters):
                    raise ShoalError(M.node_is_manager(cur.id))
            if cur.status.state != "down" and not force:
                raise ShoalError(M.node_not_down(cur.id))
            tx.delete("node", cur.id)

        await self.store.update(fn, verify=True)

    # --- swarm ------------------------------------------------------------------------------------

    async def update_swarm(self, version: int, spec: SwarmSpec, rotate_worker: bool, rotate_manager: bool,
                           rotate_unlock: bool, make_token: object, ca_update: object = None) -> None:
        """`ca_update(cluster, spec) -> (spec, root_ca)`: the CA's reading of CAConfig (root rotation)."""
        assert callable(make_token)
        if spec.heartbeat_period < 0:
            raise ShoalError(M.NEGATIVE_HEARTBEAT)
        if 0 < spec.ca_config.node_cert_expiry < 3600 * 10**9:
            raise ShoalError(M.min_cert_expiry())

        def fn(tx: Tx) -> None:
            cur = tx.cluster()
            if cur is None:
                raise NotFound(M.NO_SWARM)
            if cur.meta.version != version:
                raise SequenceConflict(M.UPDATE_OUT_OF_SEQUENCE)
            if spec.annotations.name and spec.annotations.name != cur.spec.annotations.name:
                raise ShoalError(M.CLUSTER_NAME_CHANGE)
            tokens = cur.join_tokens
            if rotate_worker:
                tokens = replace(tokens, worker=make_token(cur))
            if rotate_manager:
                tokens = replace(tokens, manager=make_token(cur))
            unlock = cur.unlock_key
            if rotate_unlock or (spec.autolock_managers and not unlock):
                unlock = "SWMKEY-1-" + new_id(self.rng) + new_id(self.rng)
            if not spec.autolock_managers:
                unlock = ""
            new_spec = replace(spec, annotations=replace(spec.annotations,
                                                         name=spec.annotations.name or cur.spec.annotations.name))
            root = cur.root_ca
            if callable(ca_update):
                new_spec, root = ca_update(cur, new_spec)
            tx.update(replace(cur, spec=new_spec, join_tokens=tokens, unlock_key=unlock, root_ca=root))

        await self.store.update(fn, verify=True)

