"""The node side of Shoal's gRPC: joining (pinning the root CA), the remote dispatcher, renewals.

Joining follows swarmkit: fetch the root certificate without trusting it, compare its digest with the one
in the join token (a man-in-the-middle shows another root and is refused before the token is sent), then
ask for a certificate over TLS pinned to that root. From then on every call goes to the manager's secure
listener with this node's certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from shoal import ca as CA
from shoal.api import usage as usage_api
from shoal.api.dispatch import Assignments, SessionTerms
from shoal.api.usage import NodeUsage
from shoal.errors import Deferred, InvalidArgument, NotFound, ShoalError, Unavailable
from shoal.model import codec
from shoal.model.objects import Config, NodeDescription, Secret, Task, TaskStatus
from shoal.rpc import RETRY_AFTER_KEY
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc import shoal_pb2_grpc as pbg

log = logging.getLogger(__name__)

MANAGER_NAME = CA.MANAGER_OU  # the name a manager's certificate is verified against

CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", MANAGER_NAME),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

_NAMES = {grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument", grpc.StatusCode.NOT_FOUND: "NotFound",
          grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied", grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
          grpc.StatusCode.UNAVAILABLE: "Unavailable", grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
          grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition", grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
          grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded", grpc.StatusCode.UNKNOWN: "Unknown"}


def from_rpc_error(e: grpc.aio.AioRpcError) -> ShoalError:
    """A gRPC error as dockerd shows a swarmkit one: `rpc error: code = X desc = Y`."""
    return status_error(e.code(), e.details())


def status_error(code: grpc.StatusCode, details: str | None) -> ShoalError:
    """A gRPC status (code and details) as dockerd shows a swarmkit error: `rpc error: code = X desc = Y`."""
    text = f"rpc error: code = {_NAMES.get(code, code.name.title())} desc = {details}"
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(text)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(text)
    return ShoalError(text)


class NodeRemoved(ShoalError):
    """The managers no longer know this node (`docker node rm`): it must leave on its own."""


def _retry_after(e: grpc.aio.AioRpcError) -> float | None:
    """The seconds a manager asked the caller to wait before asking again (None: it did not)."""
    if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    for k, v in e.trailing_metadata() or ():
        if k == RETRY_AFTER_KEY:
            try:
                return max(0.0, float(v))
            except ValueError:
                return None
    return None


def _leader_hint(e: grpc.aio.AioRpcError) -> str:
    for k, v in e.trailing_metadata() or ():
        if k == "shoal-leader-addr":
            return str(v)
    return ""


def _removed(e: grpc.aio.AioRpcError) -> bool:
    return e.code() == grpc.StatusCode.PERMISSION_DENIED and "was removed from the swarm" in (e.details() or "")


@dataclass(frozen=True)
class NodeCredentials:
    key_pem: str
    cert_pem: str
    root_pem: str

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_pem.encode(), self.key_pem.encode(), self.cert_pem.encode())


def _split_addr(addr: str, default_port: int = 2377) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return addr.strip("[]"), default_port
    return host.strip("[]"), int(port)


def _normalize(addr: str) -> str:
    host, port = _split_addr(addr)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def fetch_root_unverified(addr: str, timeout: float = 10.0) -> str:
    """The self-signed root in the chain the manager's listener presents, trusting nothing yet (blocking)."""
    host, port = _split_addr(addr)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=MANAGER_NAME) as tls:
        obj: Any = tls._sslobj  # type: ignore[attr-defined]  # public as get_unverified_chain() in 3.13
        chain = obj.get_unverified_chain() or []
        for c in chain:
            cert = x509.load_der_x509_certificate(c.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
            if cert.issuer == cert.subject:  # a cross-signed root has the same names: the signature decides
                try:
                    cert.verify_directly_issued_by(cert)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                return cert.public_bytes(serialization.Encoding.PEM).decode()
    raise Unavailable(f"the swarm manager at {addr} did not present its root CA")


def fingerprint_mismatch(expected_b36: str) -> ShoalError:
    return ShoalError(f"remote CA does not match fingerprint. Expected: {int(expected_b36, 36):064x}")


@dataclass(frozen=True)
class JoinResult:
    node_id: str
    cluster_id: str
    creds: NodeCredentials
    manager_addr: str
    secure_addr: str
    manager_id: str = ""
    leader_addr: str = ""


async def join(remote_addrs: list[str], token: str, key_pem: str, hostname: str, availability: str,
               timeout: float = 20.0) -> JoinResult:
    """Join through the first manager that answers; the token is sent only after the root is pinned."""
    digest, _ = CA.parse_join_token(token)
    last: Exception | None = None
    for raw_addr in remote_addrs:
        addr = _normalize(raw_addr)
        try:
            root_pem = await asyncio.to_thread(fetch_root_unverified, addr, timeout)
        except (OSError, ssl.SSLError, ShoalError) as e:
            last = e
            continue
        if CA.digest_b36_of_pem(root_pem) != digest:
            raise fingerprint_mismatch(digest)
        creds = grpc.ssl_channel_credentials(root_pem.encode())
        async with grpc.aio.secure_channel(addr, creds, options=CHANNEL_OPTIONS) as ch:
            try:
                resp = await pbg.CAStub(ch).IssueNodeCertificate(pb.IssueRequest(
                    token=token, csr_pem=CA.make_csr(key_pem), availability=availability, hostname=hostname),
                    timeout=timeout)
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    last = from_rpc_error(e)
                    continue
                raise from_rpc_error(e) from None
        # The trust bundle (old+new roots during a rotation) must hold the pinned root, and the certificate
        # must chain to the pinned root (directly, or through the cross-signed next root).
        if CA.normalize_pem(root_pem) not in [CA.normalize_pem(p) for p in CA.split_pems(resp.ca_cert_pem)]:
            raise fingerprint_mismatch(digest)
        ident = CA.identity_of(resp.cert_pem)
        if not CA.chains_to(resp.cert_pem, resp.cert_chain_pem, root_pem) or ident.node_id != resp.node_id:
            raise ShoalError("the manager answered with a certificate its root CA did not issue")
        return JoinResult(node_id=resp.node_id, cluster_id=resp.cluster_id,
                          creds=NodeCredentials(key_pem, resp.cert_pem + resp.cert_chain_pem, resp.ca_cert_pem),
                          manager_addr=addr, secure_addr=resp.secure_addr, manager_id=resp.manager_id,
                          leader_addr=resp.leader_addr)
    raise Unavailable(f"could not reach a manager at {', '.join(remote_addrs)}: {last}")


@contextlib.contextmanager
def channel_may_close() -> Iterator[None]:
    """A call on a channel another task may close (a new session replaces the channel): grpc.aio cancels the
    closed channel's calls, and their callers see a CancelledError that is not their own. Such a caller must see a
    failed call instead: a task ending cancelled inside a TaskGroup is dropped without a word, so an agent's
    reporter lost that way would never report a task's status again."""
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # our own cancellation
        raise Unavailable("rpc error: code = Canceled desc = the connection to the manager was closed during "
                          "the call") from None


def _assignments(msg: pb.AssignmentsMessage) -> Assignments:
    p = json.loads(msg.payload or b"{}")
    return Assignments(
        type=msg.type,
        tasks=tuple(codec.decode_as(Task, t) for t in p.get("tasks", ())),
        secrets=tuple(codec.decode_as(Secret, s) for s in p.get("secrets", ())),
        configs=tuple(codec.decode_as(Config, c) for c in p.get("configs", ())),
        removed_tasks=tuple(p.get("removed_tasks", ())),
        removed_secrets=tuple(p.get("removed_secrets", ())),
        removed_configs=tuple(p.get("removed_configs", ())))


class RemoteDispatcher:
    """`DispatcherAPI` over gRPC with mutual TLS. Each `register` (a new session) finds the manager's secure
    listener again through its CA listener, so a restarted manager on a new port is found."""

    def __init__(self, manager_addrs: list[str], creds: NodeCredentials, call_timeout: float = 10.0) -> None:
        self.manager_addrs = [_normalize(a) for a in manager_addrs]
        self.creds = creds
        self.call_timeout = call_timeout
        self._channel: grpc.aio.Channel | None = None
        self._period = 5.0
        self.manager_id = ""
        self.renew_requested = asyncio.Event()  # a heartbeat said: this node's certificate is from an old root
        self.trust_root = ""  # the roots the managers say to trust now
        self.trust_changed = asyncio.Event()
        self.removed = asyncio.Event()  # the managers refused this node as removed
        self.role = ""  # this node's role as the managers see it (from heartbeats)
        self.role_changed = asyncio.Event()
        self.managers_changed = asyncio.Event()  # manager_addrs changed (the node persists them)
        self._prefer = ""  # a manager that said where the leader is
        self._deferred = False  # the last registration was deferred by the leader this channel reaches

    def _learn_managers(self, addrs: list[str]) -> None:
        new = [_normalize(a) for a in addrs if a]
        if new and new != self.manager_addrs:
            # Keep a manager we knew that the list leaves out until the list is confirmed: the leader lists every
            # manager the store knows, so the union only ever holds managers that existed.
            self.manager_addrs = new
            self.managers_changed.set()

    def _error(self, e: grpc.aio.AioRpcError) -> ShoalError:
        if _removed(e):
            self.removed.set()
            return NodeRemoved(f"rpc error: code = PermissionDenied desc = {e.details()}")
        return from_rpc_error(e)

    def set_credentials(self, creds: NodeCredentials) -> None:
        """New certificate (renewal): used from the next session on."""
        self.creds = creds

    async def _secure_addr(self) -> str:
        last: Exception | None = None
        order = ([self._prefer] if self._prefer else []) + [a for a in self.manager_addrs if a != self._prefer]
        for addr in order:
            async with grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials(self.creds.root_pem.encode()),
                                               options=CHANNEL_OPTIONS) as ch:
                try:
                    resp = await pbg.CAStub(ch).GetRootCACertificate(pb.RootCARequest(), timeout=self.call_timeout)
                    self.manager_id = str(resp.node_id) or self.manager_id
                    return str(resp.secure_addr)
                except grpc.aio.AioRpcError as e:
                    last = from_rpc_error(e)
                    if addr == self._prefer:
                        self._prefer = ""
        raise Unavailable(f"no manager reachable: {last}")

    async def _connect(self) -> grpc.aio.Channel:
        await self.close()
        addr = await self._secure_addr()
        self._channel = grpc.aio.secure_channel(addr, self.creds.channel_credentials(), options=CHANNEL_OPTIONS)
        return self._channel

    def _stub_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            raise Unavailable("not connected to a manager")
        return self._channel

    async def register(self, node_id: str, description: NodeDescription, addr: str) -> SessionTerms:
        """A new session with the leader: a manager that is not the leader says where it is, and we go there."""
        for _ in range(4):
            # The leader that deferred the last attempt is asked again on the same connection (no new handshake).
            ch = self._channel if self._deferred and self._channel is not None else await self._connect()
            self._deferred = False
            try:
                with channel_may_close():
                    resp = await pbg.DispatcherStub(ch).Register(pb.RegisterRequest(
                        description=json.dumps(codec.encode(description)).encode(), addr=addr),
                        timeout=self.call_timeout)
                break
            except grpc.aio.AioRpcError as e:
                hint = _leader_hint(e)
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION and hint:
                    self._prefer = _normalize(hint)
                    if self._prefer not in self.manager_addrs:
                        self.manager_addrs.append(self._prefer)
                    continue
                wait = _retry_after(e)
                if wait is not None:
                    self._deferred = True
                    raise Deferred(e.details() or "registration deferred", wait) from None
                raise self._error(e) from None
        else:
            raise Unavailable("the managers keep pointing elsewhere for the leader; trying again later")
        self._learn_managers(list(resp.managers))
        return self._terms(resp)

    def _terms(self, resp: pb.PeriodResponse) -> SessionTerms:
        if float(resp.period) != self._period:
            log.info("heartbeat period now %.1fs (from the cluster's dispatcher settings and size)", resp.period)
        self._period = float(resp.period)
        return SessionTerms(self._period, max(0.0, float(resp.rejoin_spread)))

    async def heartbeat(self, node_id: str, usage: NodeUsage | None = None) -> SessionTerms:
        request = pb.HeartbeatRequest(usage=usage_api.encode(usage) if usage is not None else b"")
        try:
            with channel_may_close():
                resp = await pbg.DispatcherStub(self._stub_channel()).Heartbeat(
                    request, timeout=max(self._period, 1.0))
        except grpc.aio.AioRpcError as e:
            raise self._error(e) from None
        terms = self._terms(resp)
        if resp.renew_certificate:
            self.renew_requested.set()
        if resp.trust_root and resp.trust_root != self.trust_root:
            self.trust_root = resp.trust_root
            if resp.trust_root != self.creds.root_pem:
                self.trust_changed.set()
        self._learn_managers(list(resp.managers))
        if resp.role and resp.role != self.role:
            self.role = resp.role
            self.role_changed.set()
        return terms

    async def assignments(self, node_id: str) -> AsyncIterator[Assignments]:
        call = pbg.DispatcherStub(self._stub_channel()).Assignments(pb.Empty())
        try:
            with channel_may_close():
                async for msg in call:
                    yield _assignments(msg)
        except grpc.aio.AioRpcError as e:
            raise self._error(e) from None
        finally:
            call.cancel()

    async def update_task_status(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None:
        body = json.dumps([[tid, codec.encode(st)] for tid, st in updates]).encode()
        try:
            with channel_may_close():
                await pbg.DispatcherStub(self._stub_channel()).UpdateTaskStatus(pb.StatusUpdate(updates=body),
                                                                                 timeout=self.call_timeout)
        except grpc.aio.AioRpcError as e:
            raise self._error(e) from None

    async def leave(self) -> None:
        ch = self._channel or await self._connect()
        try:
            with channel_may_close():
                await pbg.DispatcherStub(ch).Leave(pb.Empty(), timeout=min(self.call_timeout, 3.0))
        except grpc.aio.AioRpcError as e:
            raise self._error(e) from None

    async def renew(self, key_pem: str) -> NodeCredentials:
        """A new certificate for a new key, over a session of its own with the current certificate (from the leader,
        which records which root issued it)."""
        resp: pb.IssueResponse | None = None
        for _ in range(4):
            addr = await self._secure_addr()
            async with grpc.aio.secure_channel(addr, self.creds.channel_credentials(), options=CHANNEL_OPTIONS) as ch:
                try:
                    resp = await pbg.NodeCAStub(ch).RenewNodeCertificate(
                        pb.RenewRequest(csr_pem=CA.make_csr(key_pem)), timeout=self.call_timeout)
                    break
                except grpc.aio.AioRpcError as e:
                    hint = _leader_hint(e)
                    if e.code() == grpc.StatusCode.FAILED_PRECONDITION and hint:
                        self._prefer = _normalize(hint)
                        continue
                    raise self._error(e) from None
        if resp is None:
            raise Unavailable("no leader answered the certificate renewal")
        # The answer came over mutual TLS from a manager our current roots verified, so its trust bundle is
        # taken (that is how a root rotation reaches this node); the certificate must chain to that bundle.
        roots = resp.ca_cert_pem or self.creds.root_pem
        if not CA.chains_to(resp.cert_pem, resp.cert_chain_pem, roots):
            raise ShoalError("renewal answered with a certificate of another root CA")
        return NodeCredentials(key_pem, resp.cert_pem + resp.cert_chain_pem, roots)

    async def close(self) -> None:
        if self._channel is not None:
            ch, self._channel = self._channel, None
            await ch.close()


__all__ = ["InvalidArgument", "JoinResult", "NodeCredentials", "NodeRemoved", "RemoteDispatcher",
           "channel_may_close", "fetch_root_unverified", "join"]
