"""A manager's gRPC servers: the CA bootstrap (server TLS) and the node services (mutual TLS).

Two listeners, because grpcio's server credentials either require a client certificate or never ask for one
(no "verify if given", which swarmkit uses to serve both on one port):

- the listen address (`--listen-addr`, 2377 by default) serves the `CA` service with server TLS only: a
  joining node has no certificate yet. It hands out the root certificate (the joiner pins it against the
  digest in its token before sending the token) and, against a valid join token and a CSR, a node
  certificate. It also tells where the secure listener is.
- the secure listener (same host, a port of its own) requires a client certificate issued by this
  cluster's CA (TLS refuses anything else: no certificate, another CA, expired). On every call the
  certificate's node ID must still be a node of this cluster (a removed node's certificate is refused from
  then on) and its role must be one the call allows; only then does the handler run. The node ID a
  handler acts for is the certificate's, never one from the request.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, TypeVar

import grpc

from shoal import ca as CA
from shoal.api import usage as usage_api
from shoal.api.dispatch import DispatcherAPI
from shoal.clock import Clock
from shoal.errors import Deferred, InvalidArgument, NotFound, NotLeader, ShoalError, Unavailable
from shoal.ids import new_id
from shoal.manager.membership import Membership
from shoal.model import codec
from shoal.model.objects import (
    SECOND,
    Annotations,
    Cluster,
    ManagerStatus,
    Node,
    NodeDescription,
    NodeSpec,
    NodeStatus,
    TaskStatus,
)
from shoal.rpc import RETRY_AFTER_KEY
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc import shoal_pb2_grpc as pbg
from shoal.store.memory import Commit, MemoryStore, Tx, WatchOverflow
from shoal.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ANY_NODE = frozenset({"worker", "manager"})
MANAGERS = frozenset({"manager"})

# A follower forwards an Engine API request, body included, to the leader in one message (Raft.Forward): the
# leader must take the largest body its own API would (shoal.engineapi.server.MAX_BODY_BYTES, 4 MiB) plus the
# headers, where gRPC's default limit (4 MiB) refused it with an opaque error.
FORWARD_MAX_BYTES = 8 * 1024 * 1024
SERVER_OPTIONS = [
    # gRPC sets SO_REUSEPORT by default: a second daemon could then bind the same manager address and take
    # half the joins. Bind exclusively, as Go's net.Listen does.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_pings_without_data", 0),
]
# The mutual-TLS listener (Raft and forwarding among others) takes messages as large as a Raft stream's (one entry
# alone in its batch: shoal.rpc.raft.MAX_MESSAGE), which covers FORWARD_MAX_BYTES; gRPC's default is 4 MiB. The
# unauthenticated CA listener keeps the default.
SECURE_SERVER_OPTIONS = [*SERVER_OPTIONS, ("grpc.max_receive_message_length", max(64 << 20, FORWARD_MAX_BYTES))]

_CODES = {
    "InvalidArgument": grpc.StatusCode.INVALID_ARGUMENT, "NotFound": grpc.StatusCode.NOT_FOUND,
    "AlreadyExists": grpc.StatusCode.ALREADY_EXISTS, "PermissionDenied": grpc.StatusCode.PERMISSION_DENIED,
    "FailedPrecondition": grpc.StatusCode.FAILED_PRECONDITION, "Unimplemented": grpc.StatusCode.UNIMPLEMENTED,
    "Unavailable": grpc.StatusCode.UNAVAILABLE, "Unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
}


def _status_of(e: ShoalError) -> tuple[grpc.StatusCode, str]:
    """A ShoalError as a gRPC status; a swarmkit-style "rpc error: code = X desc = Y" text keeps X and Y."""
    msg = e.message
    if msg.startswith("rpc error: code = "):
        code, _, desc = msg[len("rpc error: code = "):].partition(" desc = ")
        return _CODES.get(code, grpc.StatusCode.UNKNOWN), desc
    if isinstance(e, NotFound):
        return grpc.StatusCode.NOT_FOUND, msg
    if isinstance(e, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, msg
    if isinstance(e, Unavailable):
        return grpc.StatusCode.UNAVAILABLE, msg
    return grpc.StatusCode.UNKNOWN, msg


def peer_host(context: grpc.aio.ServicerContext) -> str:
    peer = context.peer() or ""  # ipv4:127.0.0.1:5555 | ipv6:[::1]:5555
    if peer.startswith("ipv4:"):
        return peer[5:].rsplit(":", 1)[0]
    if peer.startswith("ipv6:"):
        return peer[5:].rsplit(":", 1)[0].strip("[]")
    return ""


F = TypeVar("F", bound=Callable[..., Any])


async def abort_with(context: grpc.aio.ServicerContext, e: ShoalError) -> None:
    """End the call with this error; a NotLeader tells the caller where the leader is, a Deferred when to ask
    again (trailing metadata)."""
    if isinstance(e, NotLeader):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, e.message,
                            trailing_metadata=(("shoal-leader-addr", e.leader_addr), ("shoal-leader-id", e.leader_id)))
    if isinstance(e, Deferred):  # the caller waits as long as told, then asks again
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, e.message,
                            trailing_metadata=((RETRY_AFTER_KEY, f"{e.retry_after:.3f}"),))
    code, desc = _status_of(e)
    await context.abort(code, desc)


def translate_errors(fn: F) -> F:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except ShoalError as e:
            await abort_with(context, e)

    return wrapper  # type: ignore[return-value]


class Authorizer:
    """The checks every call on the secure listener passes before its handler runs."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def identify(self, context: grpc.aio.ServicerContext, roles: frozenset[str]) -> CA.NodeIdentity:
        pems = context.auth_context().get("x509_pem_cert") or []
        if not pems:
            # Only reachable if a listener is misconfigured: the secure listener's TLS requires a certificate.
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        ident = CA.identity_of(pems[0])
        v = self.store.view()
        cluster = v.cluster()
        if cluster is None or ident.cluster_id != cluster.id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "Permission denied: remote certificate not part of organization")
        node = v.node(ident.node_id)
        if node is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"node {ident.node_id} was removed from the swarm")
        assert node is not None
        if ident.role not in roles or node.role not in roles:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"Permission denied: unauthorized peer role: rpc error: code = PermissionDenied "
                                f"desc = remote peer with role {CA.ROLE_OU.get(ident.role, '?')} is not allowed")
        return ident


def authorized(roles: frozenset[str]) -> Callable[[Callable[..., Any]], Any]:
    """Run the handler only for callers whose certificate passes `Authorizer.identify` for these roles."""

    def deco(fn: Callable[..., Any]) -> Any:
        import inspect

        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def gen_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
                ident = await self.auth.identify(context, roles)
                try:
                    async for item in fn(self, request, context, ident):
                        yield item
                except ShoalError as e:
                    await abort_with(context, e)

            return gen_wrapper

        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            ident = await self.auth.identify(context, roles)
            try:
                return await fn(self, request, context, ident)
            except ShoalError as e:
                await abort_with(context, e)

        return wrapper

    return deco


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class _Servers:
    """What the servicers share: the store, the manager's credentials and the secure address."""

    def __init__(self, store: MemoryStore, clock: Clock, rng: random.Random) -> None:
        self.store = store
        self.clock = clock
        self.rng = rng
        self.secure_addr = ""
        self.node_id = ""
        self.membership: Membership | None = None  # None: a manager alone, always leading
        self.creds: Callable[[], tuple[str, str, str]] = lambda: ("", "", "")
        self._managers_cache: tuple[tuple[int, str], tuple[str, ...]] = ((-1, ""), ())

    def is_leader(self) -> bool:
        return self.membership is None or bool(self.membership.raft.is_leader)

    def require_leader(self) -> None:
        if self.membership is not None and not self.membership.raft.is_leader:
            raise self.membership.not_leader()

    def managers(self) -> list[str]:
        """Every manager's listen address, the leader's first (what agents keep to find a manager)."""
        lead = self.membership.leader_addr() if self.membership is not None else ""
        # Every heartbeat carries this list: recompute it only when the store changed, not once per
        # heartbeat over every node (that made the idle leader's work quadratic in the number of nodes).
        key = (self.store.version, lead)
        if self._managers_cache[0] == key:
            return list(self._managers_cache[1])
        out = [lead] if lead else []
        for n in self.store.view().nodes():
            ms = n.manager_status
            if ms is not None and ":" in ms.addr and n.role == "manager" and ms.addr not in out:
                out.append(ms.addr)
        self._managers_cache = (key, tuple(out))
        return out

    def cluster(self) -> Cluster:
        c = self.store.view().cluster()
        if c is None:
            raise Unavailable("This node is not part of a swarm")
        return c


class CAServicer(pbg.CAServicer):
    def __init__(self, s: _Servers) -> None:
        self.s = s

    @translate_errors
    async def GetRootCACertificate(self, request: pb.RootCARequest,
                                   context: grpc.aio.ServicerContext) -> pb.RootCAResponse:
        c = self.s.store.view().cluster()
        if c is None:
            # A manager that just joined and has not received the store yet: its certificate's root is the one.
            roots = self.s.creds()[2]
            if not roots:
                raise Unavailable("This node is not part of a swarm")
            return pb.RootCAResponse(ca_cert_pem=CA.split_pems(roots)[0],
                                                          secure_addr=self.s.secure_addr, node_id=self.s.node_id)
        return pb.RootCAResponse(ca_cert_pem=c.root_ca.ca_cert_pem, secure_addr=self.s.secure_addr,
                                 node_id=self.s.node_id)

    @translate_errors
    async def IssueNodeCertificate(self, request: pb.IssueRequest,
                                   context: grpc.aio.ServicerContext) -> pb.IssueResponse:
        if not self.s.is_leader():
            return await self._forward(request)
        cluster = self.s.cluster()
        role = CA.token_role(cluster.join_tokens.worker, cluster.join_tokens.manager, request.token)
        availability = request.availability or "active"
        if availability not in ("active", "pause", "drain"):
            raise InvalidArgument(f"rpc error: code = InvalidArgument desc = invalid availability {availability}")
        node_id = new_id(self.s.rng)
        spec = cluster.spec.ca_config
        cert = await asyncio.to_thread(CA.sign_node_cert, cluster.root_ca, spec, request.csr_pem, node_id, role,
                                       cluster.id, self.s.clock.now(),
                                       (spec.node_cert_expiry or 90 * 24 * 3600 * SECOND) / SECOND)
        issuer = CA.desired_root_pem(cluster.root_ca)
        node = Node(id=node_id, spec=NodeSpec(annotations=Annotations(), role=role, availability=availability),
                    description=NodeDescription(hostname=request.hostname,
                                                tls_info=CA.node_tls_info(cert, issuer)),
                    status=NodeStatus(state="unknown", addr=peer_host(context)), observed_role=role,
                    manager_status=ManagerStatus(reachability="unknown") if role == "manager" else None)
        await self.s.store.update(lambda tx: tx.create(node))
        log.info("issued a %s certificate to new node %s (%s)", role, node_id, request.hostname)
        lead = self.s.membership.leader_addr() if self.s.membership is not None else ""
        return pb.IssueResponse(node_id=node_id, cert_pem=cert, ca_cert_pem=CA.trust_bundle(cluster.root_ca),
                                cluster_id=cluster.id, secure_addr=self.s.secure_addr, manager_id=self.s.node_id,
                                cert_chain_pem=CA.signing_chain(cluster.root_ca), leader_addr=lead)

    async def _forward(self, request: pb.IssueRequest) -> pb.IssueResponse:
        """A follower hands the join to the leader's CA listener (the node record is the leader's to write)."""
        m = self.s.membership
        assert m is not None  # only a replicated manager's follower forwards
        lead = m.leader_addr()
        if not lead:
            raise Unavailable(f"rpc error: code = Unavailable desc = {m.not_leader().message}")
        roots = self.s.creds()[2]
        from shoal.rpc.client import CHANNEL_OPTIONS, from_rpc_error

        async with grpc.aio.secure_channel(lead, grpc.ssl_channel_credentials(roots.encode()),
                                           options=CHANNEL_OPTIONS) as ch:
            try:
                resp: pb.IssueResponse = await pbg.CAStub(ch).IssueNodeCertificate(request, timeout=20.0)
                return resp
            except grpc.aio.AioRpcError as e:
                raise from_rpc_error(e) from None


class NodeCAServicer(pbg.NodeCAServicer):
    def __init__(self, s: _Servers, auth: Authorizer) -> None:
        self.s = s
        self.auth = auth

    @authorized(ANY_NODE)
    async def RenewNodeCertificate(self, request: pb.RenewRequest, context: grpc.aio.ServicerContext,
                                   ident: CA.NodeIdentity) -> pb.IssueResponse:
        self.s.require_leader()
        cluster = self.s.cluster()
        node = self.s.store.view().node(ident.node_id)
        assert node is not None
        cert = await asyncio.to_thread(CA.sign_node_cert, cluster.root_ca, cluster.spec.ca_config, request.csr_pem,
                                       node.id, node.role, cluster.id, self.s.clock.now(),
                                       cluster.spec.ca_config.node_cert_expiry / SECOND)
        info = CA.node_tls_info(cert, CA.desired_root_pem(cluster.root_ca))
        await self.s.store.update(lambda tx: _set_tls_info(tx, node.id, info))
        return pb.IssueResponse(node_id=node.id, cert_pem=cert, ca_cert_pem=CA.trust_bundle(cluster.root_ca),
                                cluster_id=cluster.id, secure_addr=self.s.secure_addr, manager_id=self.s.node_id,
                                cert_chain_pem=CA.signing_chain(cluster.root_ca))


def _set_tls_info(tx: Tx, node_id: str, info: dict[str, str]) -> None:
    """Record which root issued a node's current certificate (the root rotation waits on every node's)."""
    node = tx.node(node_id)
    if node is not None and node.description.tls_info != info:
        tx.update(replace(node, description=replace(node.description, tls_info=info)), check_version=False)


def _peer_tls_info(context: grpc.aio.ServicerContext, cluster: Cluster) -> dict[str, str] | None:
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        return None
    cert = pems[0].decode() if isinstance(pems[0], bytes) else str(pems[0])
    issuer = CA.issuer_root(cert, CA.trust_bundle(cluster.root_ca))
    return CA.node_tls_info(cert, issuer) if issuer else None


class DispatcherServicer(pbg.DispatcherServicer):
    def __init__(self, s: _Servers, auth: Authorizer, dispatcher: DispatcherAPI) -> None:
        self.s = s
        self.auth = auth
        self.dispatcher = dispatcher

    @authorized(ANY_NODE)
    async def Register(self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext,
                       ident: CA.NodeIdentity) -> pb.PeriodResponse:
        self.s.require_leader()
        desc = codec.decode_as(NodeDescription, json.loads(request.description or b"{}"))
        # The certificate the session runs with says which root issued it, not the node's own claim.
        desc = replace(desc, tls_info=_peer_tls_info(context, self.s.cluster()))
        terms = await self.dispatcher.register(ident.node_id, desc, request.addr or peer_host(context))
        resp = pb.PeriodResponse(period=terms.period, rejoin_spread=terms.rejoin_spread)
        resp.managers.extend(self.s.managers())
        return resp

    @authorized(ANY_NODE)
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext,
                        ident: CA.NodeIdentity) -> pb.PeriodResponse:
        self.s.require_leader()
        usage = None
        if request.usage:
            try:
                usage = usage_api.decode(request.usage)
            except InvalidArgument as e:  # a bad report costs the report, never the node's session
                log.warning("node %s sent %s", ident.node_id, e)
        terms = await self.dispatcher.heartbeat(ident.node_id, usage)
        cluster = self.s.cluster()
        node = self.s.store.view().node(ident.node_id)
        info = node.description.tls_info if node is not None else None
        want = CA.issuer_public_key(CA.desired_root_pem(cluster.root_ca))
        renew = not isinstance(info, dict) or info.get("CertIssuerPublicKey") != want
        role = node.role if node is not None else ident.role
        renew = renew or role != ident.role  # promoted or demoted: the next certificate carries the new role
        resp = pb.PeriodResponse(period=terms.period, rejoin_spread=terms.rejoin_spread, renew_certificate=renew,
                                 trust_root=CA.trust_bundle(cluster.root_ca), role=role)
        resp.managers.extend(self.s.managers())
        return resp

    @authorized(ANY_NODE)
    async def Assignments(self, request: pb.Empty, context: grpc.aio.ServicerContext,
                          ident: CA.NodeIdentity) -> AsyncIterator[pb.AssignmentsMessage]:
        self.s.require_leader()
        async for a in self.dispatcher.assignments(ident.node_id):
            payload = {
                "tasks": [codec.encode(t) for t in a.tasks],
                "secrets": [codec.encode(x) for x in a.secrets],
                "configs": [codec.encode(x) for x in a.configs],
                "removed_tasks": list(a.removed_tasks),
                "removed_secrets": list(a.removed_secrets),
                "removed_configs": list(a.removed_configs),
            }
            yield pb.AssignmentsMessage(type=a.type, payload=_json(payload))

    @authorized(ANY_NODE)
    async def UpdateTaskStatus(self, request: pb.StatusUpdate, context: grpc.aio.ServicerContext,
                               ident: CA.NodeIdentity) -> pb.Empty:
        self.s.require_leader()
        raw = json.loads(request.updates or b"[]")
        updates = [(str(tid), codec.decode_as(TaskStatus, st)) for tid, st in raw]
        await self.dispatcher.update_task_status(ident.node_id, updates)
        return pb.Empty()

    @authorized(ANY_NODE)
    async def Leave(self, request: pb.Empty, context: grpc.aio.ServicerContext,
                    ident: CA.NodeIdentity) -> pb.Empty:
        self.s.require_leader()
        def fn(tx: Tx) -> None:
            node = tx.node(ident.node_id)
            if node is not None and node.status.state != "down":
                tx.update(replace(node, status=replace(node.status, state="down", message="node left the swarm")),
                          check_version=False)

        await self.s.store.update(fn)
        return pb.Empty()


class ControlServicer(pbg.ControlServicer):
    def __init__(self, s: _Servers, auth: Authorizer) -> None:
        self.s = s
        self.auth = auth

    @authorized(MANAGERS)
    async def GetCluster(self, request: pb.Empty, context: grpc.aio.ServicerContext,
                         ident: CA.NodeIdentity) -> pb.Blob:
        c = self.s.cluster()
        c = replace(c, root_ca=replace(c.root_ca, ca_key_pem=""))
        return pb.Blob(data=_json(codec.encode(c)))


class ManagerRPC:
    """Both listeners of a manager, with the manager's own node certificate (renewed before it expires)."""

    def __init__(self, store: MemoryStore, dispatcher: DispatcherAPI, clock: Clock, rng: random.Random,
                 node_id: str, listen_addr: str, advertise_host: str, unknown_grace: float = 30.0,
                 logbroker: Any = None, *, creds: Any = None,
                 on_credentials: Callable[[str, str, str], None] | None = None,
                 is_leader: Callable[[], bool] = lambda: True, membership: Any = None,
                 raft_hooks: Any = None) -> None:
        self.store = store
        self._initial_creds = creds  # shoal.rpc.client.NodeCredentials from disk (None: issue our own)
        self.on_credentials = on_credentials  # (key, cert chain, trust roots) after every new certificate
        self.is_leader = is_leader
        self.logbroker = logbroker  # shoal.manager.logbroker.LogBroker: the Logs service is served with one
        self.unknown_grace = unknown_grace
        self.dispatcher = dispatcher
        self.clock = clock
        self.rng = rng
        self.node_id = node_id
        self.listen_addr = listen_addr
        self.advertise_host = advertise_host
        self._s = _Servers(store, clock, rng)
        self._s.membership = membership
        self._s.creds = lambda: self.credentials
        self.raft_hooks = raft_hooks  # shoal.rpc.raft.RaftHooks: serve the Raft service (replicated managers)
        self._bootstrap: grpc.aio.Server | None = None
        self._secure: grpc.aio.Server | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._ca_task: asyncio.Task[None] | None = None
        self._key_pem = ""
        self._cert_pem = ""  # leaf, then intermediates (the cross-signed next root during a rotation)
        self._root_pem = ""  # the roots peers' certificates are verified against
        self._issued_from = ""  # the root whose key signed _cert_pem
        self._boot_root = ""  # the root the CA listener presents (the one join tokens pin)
        self._served = ("", "", "")
        self._boot_served = ("", "")
        self.port = 0
        self.secure_port = 0

    @property
    def secure_addr(self) -> str:
        return self._s.secure_addr

    async def _issue_own(self, *, first: bool = False) -> None:
        """This manager's certificate from the root certificates are issued from now: through the cluster's
        external CA for that root when one is listed (blocking HTTPS, so in a thread; the current certificate
        is the client certificate, as swarmkit's), else with the local key. The `first` certificate of the
        manager that made the swarm is issued with the root's key when the root has one, external CA or not
        (swarmkit's bootstrap signs it locally; only later renewals go through the CA server)."""
        cluster = self._s.cluster()
        key = CA.new_key_pem()
        cfg = cluster.spec.ca_config
        root = cluster.root_ca
        if first and root.ca_key_pem and not root.rotation_ca_cert_pem:
            cert = CA.issue_node_cert(root, CA.make_csr(key), self.node_id, "manager", cluster.id, self.clock.now(),
                                      cfg.node_cert_expiry / SECOND)
        else:
            cert = await asyncio.to_thread(CA.sign_node_cert, root, cfg, CA.make_csr(key), self.node_id, "manager",
                                           cluster.id, self.clock.now(), cfg.node_cert_expiry / SECOND,
                                           client_cert_pem=self._cert_pem, client_key_pem=self._key_pem)
        self._key_pem, self._cert_pem = key, cert + CA.signing_chain(cluster.root_ca)
        self._issued_from = CA.desired_root_pem(cluster.root_ca)
        self._root_pem = CA.trust_bundle(cluster.root_ca)
        self._boot_root = cluster.root_ca.ca_cert_pem
        if self.on_credentials is not None:
            self.on_credentials(self._key_pem, self._cert_pem, self._root_pem)

    def _use_credentials(self, creds: Any) -> None:
        """Serve with the certificate kept on disk (a restart, or a manager that joined: its store may still be
        empty, so nothing here may need the cluster object)."""
        self._key_pem, self._cert_pem, self._root_pem = creds.key_pem, creds.cert_pem, creds.root_pem
        self._issued_from = CA.issuer_root(creds.cert_pem, creds.root_pem) or CA.split_pems(creds.root_pem)[0]
        cluster = self.store.view().cluster()
        self._boot_root = cluster.root_ca.ca_cert_pem if cluster is not None else CA.split_pems(creds.root_pem)[0]

    @property
    def credentials(self) -> tuple[str, str, str]:
        """(key, certificate chain, trust roots) this manager presents and verifies peers against now."""
        return self._key_pem, self._cert_pem, self._root_pem

    def _boot_config(self) -> Any:
        chain = (self._cert_pem + self._boot_root).encode()
        return grpc.ssl_server_certificate_configuration([(self._key_pem.encode(), chain)])

    def _fetch_boot_config(self) -> Any:
        current = (self._cert_pem, self._boot_root)
        if current == self._boot_served:
            return None
        self._boot_served = current
        return self._boot_config()

    def _secure_config(self) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(self._key_pem.encode(), self._cert_pem.encode())], root_certificates=self._root_pem.encode())

    def _fetch_config(self) -> Any:
        current = (self._key_pem, self._cert_pem, self._root_pem)
        if current == self._served:
            return None
        self._served = current
        return self._secure_config()

    async def start(self) -> None:
        if self._initial_creds is not None:
            self._use_credentials(self._initial_creds)
        else:
            await self._issue_own(first=True)
        auth = Authorizer(self.store)
        secure = grpc.aio.server(options=SECURE_SERVER_OPTIONS)
        pbg.add_NodeCAServicer_to_server(NodeCAServicer(self._s, auth), secure)
        pbg.add_DispatcherServicer_to_server(DispatcherServicer(self._s, auth, self.dispatcher), secure)
        pbg.add_ControlServicer_to_server(ControlServicer(self._s, auth), secure)
        if self.raft_hooks is not None:
            from shoal.rpc.raft import RaftServicer

            pbg.add_RaftServicer_to_server(RaftServicer(self.raft_hooks), secure)
        if self.logbroker is not None:
            from shoal.rpc.logs import LogsServicer

            pbg.add_LogsServicer_to_server(LogsServicer(auth, self.logbroker, self.dispatcher), secure)
        from shoal.rpc.netfeed import NetworkServicer  # network state for workers' network agents

        pbg.add_NetworkServicer_to_server(NetworkServicer(auth, self.store), secure)
        self._served = (self._key_pem, self._cert_pem, self._root_pem)
        creds = grpc.dynamic_ssl_server_credentials(self._secure_config(), self._fetch_config,
                                                    require_client_authentication=True)
        host = self.listen_addr.rsplit(":", 1)[0] or "0.0.0.0"
        self.secure_port = secure.add_secure_port(f"{host}:0", creds)
        self._s.secure_addr = f"{self.advertise_host}:{self.secure_port}"
        self._s.node_id = self.node_id
        boot = grpc.aio.server(options=SERVER_OPTIONS)
        pbg.add_CAServicer_to_server(CAServicer(self._s), boot)
        self._boot_served = (self._cert_pem, self._boot_root)
        try:
            self.port = boot.add_secure_port(self.listen_addr, grpc.dynamic_ssl_server_credentials(
                self._boot_config(), self._fetch_boot_config, require_client_authentication=False))
        except RuntimeError:
            await secure.stop(None)
            # swarmkit's words, through dockerd (a 500): the address is taken (or not this host's).
            raise ShoalError(f"manager stopped: failed to listen on remote API address: listen tcp "
                             f"{self.listen_addr}: bind: address already in use") from None
        await secure.start()
        await boot.start()
        self._secure, self._bootstrap = secure, boot
        self._renewer = asyncio.create_task(self._renew_loop(), name="manager-cert-renewal")
        self._ca_task = asyncio.create_task(self._ca_loop(), name="root-ca-rotation")
        log.info("node RPC: CA on %s, node services (mutual TLS) on %s", self.listen_addr, self._s.secure_addr)

    async def _renew_loop(self) -> None:
        while True:
            delay = CA.renew_at(self._cert_pem, self.rng) - self.clock.now()
            await self.clock.sleep(max(delay, 1.0))
            try:
                await self._issue_own()  # the secure listener picks the new certificate up at its next handshake
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("renewing the manager's certificate failed")
                await self.clock.sleep(30.0)

    async def _ca_loop(self) -> None:
        """Follow the cluster's root CA: re-issue this manager's certificate from the desired root and serve
        the current trust bundle; end a rotation once every node's certificate comes from the next root."""
        while True:
            sub = self.store.watch(kinds=("cluster", "node"))
            try:
                await self._reconcile_ca()
                async for item in sub:
                    if isinstance(item, Commit):
                        await self._reconcile_ca()
            except WatchOverflow:
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("root CA reconciliation failed; retrying")
                await self.clock.sleep(1.0)
            finally:
                sub.close()

    async def _reconcile_ca(self) -> None:
        cluster = self.store.view().cluster()
        if cluster is None:
            return
        root = cluster.root_ca
        if CA.normalize_pem(self._issued_from) != CA.normalize_pem(CA.desired_root_pem(root)):
            await self._issue_own()  # the listeners pick it up at their next handshake
            log.info("root CA changed: this manager's certificate re-issued")
        else:
            self._root_pem = CA.trust_bundle(root)
            self._boot_root = root.ca_cert_pem
        if not self.is_leader():
            return  # the leader records this manager's certificate from its Raft connections, and ends rotations
        info = CA.node_tls_info(self._cert_pem, self._issued_from)
        own = self.store.view().node(self.node_id)
        if own is not None and own.description.tls_info != info:
            await self.store.update(lambda tx: _set_tls_info(tx, self.node_id, info))
        if not root.rotation_ca_cert_pem:
            return
        want = CA.issuer_public_key(root.rotation_ca_cert_pem)
        nodes = self.store.view().nodes()
        if not all(isinstance(n.description.tls_info, dict) and n.description.tls_info.get("CertIssuerPublicKey")
                   == want for n in nodes):
            return

        def finish(tx: Tx) -> None:
            c = tx.cluster()
            if c is None or c.root_ca.rotation_ca_cert_pem != root.rotation_ca_cert_pem:
                return
            new = CA.finish_rotation(c.root_ca)
            tokens = replace(c.join_tokens, worker=CA.make_join_token(new, self.rng),
                             manager=CA.make_join_token(new, self.rng))
            tx.update(replace(c, root_ca=new, join_tokens=tokens), check_version=False)

        await self.store.update(finish)
        log.info("root CA rotation complete: every node has a certificate from the new root")

    async def leader_loop(self) -> None:
        """What this component runs while its manager leads (added to the Manager's leader-only loops)."""
        await self._down_if_never_back()
        await self._reconcile_ca()  # a rotation whose last node finished while no leader was watching

    async def _down_if_never_back(self) -> None:
        """When a manager starts leading no node has a session with it: give every node three heartbeat periods
        (the period the dispatcher tells nodes now, which grows with their number),
        and at least `unknown_grace` seconds (an agent's reconnect backoff reaches 8 s plus jitter), to register,
        then mark the ones that did not down (their sessions died with the old leader, so the dispatcher's
        heartbeat expiry would never fire for them)."""
        period_of = getattr(self.dispatcher, "heartbeat_period", None)  # grows with the cluster's size
        if callable(period_of):
            period = float(period_of())
        else:
            c = self.store.view().cluster()
            period = (c.spec.heartbeat_period if c and c.spec.heartbeat_period else 5 * SECOND) / SECOND
        await self.clock.sleep(max(3 * period, self.unknown_grace))
        sessions = getattr(self.dispatcher, "sessions", {})

        def fn(tx: Tx) -> None:
            for node in tx.nodes():
                if node.id != self.node_id and node.id not in sessions and node.status.state != "down":
                    tx.update(replace(node, status=replace(node.status, state="down",
                                                           message="heartbeat failure for node in \"unknown\" state")),
                              check_version=False)

        await self.store.update(fn)

    async def stop(self) -> None:
        for t in (self._renewer, self._ca_task):
            if t is not None:
                await cancel_and_wait(t)
        for srv in (self._bootstrap, self._secure):
            if srv is not None:
                await srv.stop(0.5)
        self._bootstrap = self._secure = None


__all__ = ["ANY_NODE", "MANAGERS", "Authorizer", "ManagerRPC", "authorized"]
