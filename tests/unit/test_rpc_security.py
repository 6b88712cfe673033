"""The node RPC's security checks, each against a real gRPC server with TLS on loopback.

Every test names one check and fails if that check is removed: no client certificate, a certificate from
another CA, an expired certificate, a worker certificate on a manager-only call, a removed node's
certificate, a tampered join token, a token whose CA digest does not match (man in the middle), a rotated
token. Plus the happy path (join, register, assignments, status reports, renewal) and the session's liveness:
nodes that never come back go down, and a call cut by a new session is retried, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import grpc
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from shoal import ca as CA
from shoal.api.dispatch import COMPLETE, INCREMENTAL
from shoal.api.usage import NodeUsage, TaskUsage
from shoal.clock import SystemClock
from shoal.errors import ShoalError
from shoal.manager.dispatcher import Dispatcher
from shoal.model.objects import (
    Cluster,
    NodeDescription,
    Task,
    TaskSpec,
    TaskStatus,
)
from shoal.model.state import TaskState
from shoal.rpc import client as C
from shoal.rpc import shoal_pb2 as pb
from shoal.rpc import shoal_pb2_grpc as pbg
from shoal.rpc.server import ManagerRPC
from shoal.store.memory import MemoryStore
from shoal.testing.sim import memory_store
from tests.support.wait import eventually


@dataclass
class Mgr:
    store: MemoryStore
    rpc: ManagerRPC
    cluster: Cluster
    addr: str
    dispatcher: Dispatcher


async def make_cluster(rng: random.Random) -> tuple[MemoryStore, Cluster]:
    store = memory_store(SystemClock())
    root = CA.create_root_ca(SystemClock().now())
    cluster = Cluster(id=CA.new_id(rng), root_ca=root)
    cluster = replace(cluster, join_tokens=replace(cluster.join_tokens, worker=CA.make_join_token(root, rng),
                                                   manager=CA.make_join_token(root, rng)))
    from shoal.manager.dispatcher import node_for_local

    mgr_node = node_for_local("mgr1", "manager-host", "manager", "127.0.0.1")
    await store.update(lambda tx: (tx.create(cluster), tx.create(mgr_node)))
    return store, cluster


@pytest.fixture
async def mgr() -> AsyncIterator[Mgr]:
    rng = random.Random(7)
    store, cluster = await make_cluster(rng)
    d = Dispatcher(store, SystemClock())
    runner = asyncio.create_task(d.run())
    rpc = ManagerRPC(store, d, SystemClock(), rng, "mgr1", "127.0.0.1:0", "127.0.0.1")
    await rpc.start()
    try:
        yield Mgr(store, rpc, cluster, f"127.0.0.1:{rpc.port}", d)
    finally:
        await rpc.stop()
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def joined(m: Mgr, token: str | None = None) -> C.JoinResult:
    return await C.join([m.addr], token or m.cluster.join_tokens.worker, CA.new_key_pem(), "w1", "active")


def channel(m: Mgr, creds: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(m.rpc.secure_addr, creds, options=C.CHANNEL_OPTIONS)


# --- happy path -------------------------------------------------------------------------------------


async def test_join_register_assignments_status_and_renewal(mgr: Mgr) -> None:
    j = await joined(mgr)
    ident = CA.identity_of(j.creds.cert_pem)
    assert (ident.node_id, ident.role, ident.cluster_id) == (j.node_id, "worker", mgr.cluster.id)
    cert = x509.load_pem_x509_certificate(j.creds.cert_pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "swarm-worker"
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(life - datetime.timedelta(days=90, minutes=5)) < datetime.timedelta(minutes=1)
    assert mgr.store.view().node(j.node_id).spec.role == "worker"

    rd = C.RemoteDispatcher([mgr.addr], j.creds)
    period = (await rd.register("ignored: the certificate names the node", NodeDescription(hostname="w1"), "")).period
    assert period == 5.0
    assert mgr.store.view().node(j.node_id).status.state == "ready"
    assert mgr.store.view().node(j.node_id).status.addr == "127.0.0.1"
    await rd.heartbeat(j.node_id)
    stream = rd.assignments(j.node_id).__aiter__()
    first = await asyncio.wait_for(stream.__anext__(), 10)
    assert first.type == COMPLETE and first.tasks == ()
    task = Task(id="t1", node_id=j.node_id, spec=TaskSpec(), desired_state=TaskState.RUNNING,
                status=TaskStatus(state=TaskState.ASSIGNED))
    await mgr.store.update(lambda tx: tx.create(task))
    nxt = await asyncio.wait_for(stream.__anext__(), 10)
    assert nxt.type == INCREMENTAL and [t.id for t in nxt.tasks] == ["t1"]
    await rd.update_task_status(j.node_id, [("t1", TaskStatus(state=TaskState.ACCEPTED, message="accepted"))])
    assert mgr.store.view().task("t1").status.state == TaskState.ACCEPTED

    renewed = await rd.renew(CA.new_key_pem())
    assert CA.identity_of(renewed.cert_pem).node_id == j.node_id
    assert renewed.cert_pem != j.creds.cert_pem
    await stream.aclose()
    await rd.close()


async def test_usage_reports_ride_heartbeats_and_a_bad_one_costs_only_itself(mgr: Mgr) -> None:
    j = await joined(mgr)
    rd = C.RemoteDispatcher([mgr.addr], j.creds)
    await rd.register("", NodeDescription(hostname="w1"), "")
    report = NodeUsage(taken_at=1.5, tasks=(TaskUsage(task_id="t1", service_id="s1", cpus=0.5, window=10.0,
                                                      memory_bytes=4096, source="cgroup2"),))
    await rd.heartbeat(j.node_id, report)
    assert mgr.dispatcher.current_usage()[j.node_id][0] == report
    beats = mgr.dispatcher.heartbeats
    # Another agent's bug: the heartbeat counts, the report is dropped and the last good one stays.
    async with channel(mgr, j.creds.channel_credentials()) as ch:
        resp = await pbg.DispatcherStub(ch).Heartbeat(pb.HeartbeatRequest(usage=b'{"tasks": 3}'), timeout=5)
    assert resp.period == 5.0
    assert mgr.dispatcher.heartbeats == beats + 1
    assert mgr.dispatcher.current_usage()[j.node_id][0] == report
    await rd.close()


# --- join tokens --------------------------------------------------------------------------------------


async def test_tampered_token_refused_and_no_node_created(mgr: Mgr) -> None:
    good = mgr.cluster.join_tokens.worker
    secret = good.rsplit("-", 1)[1]
    bad = good[: -len(secret)] + ("0" if secret[0] != "0" else "1") + secret[1:]
    with pytest.raises(ShoalError) as ei:
        await joined(mgr, bad)
    assert ei.value.message == ("rpc error: code = InvalidArgument desc = A valid join token is necessary to join "
                                "this cluster")
    assert len(mgr.store.view().nodes()) == 1  # nothing half-joined


async def test_rotated_token_refused(mgr: Mgr) -> None:
    old = mgr.cluster.join_tokens.worker
    new = CA.make_join_token(mgr.cluster.root_ca, random.Random(99))

    def rotate(tx):  # type: ignore[no-untyped-def]
        c = tx.cluster()
        tx.update(replace(c, join_tokens=replace(c.join_tokens, worker=new)))

    await mgr.store.update(rotate)
    with pytest.raises(ShoalError, match="A valid join token is necessary"):
        await joined(mgr, old)
    assert (await joined(mgr, new)).node_id


async def test_token_with_other_ca_digest_refused_before_sending_it(mgr: Mgr) -> None:
    """A man in the middle presents another root: the joiner refuses before the token leaves it."""
    other = CA.create_root_ca(SystemClock().now())
    secret = mgr.cluster.join_tokens.worker.rsplit("-", 1)[1]
    token = f"SWMTKN-1-{CA.ca_digest_b36(other)}-{secret}"
    with pytest.raises(ShoalError, match="remote CA does not match fingerprint"):
        await joined(mgr, token)
    assert len(mgr.store.view().nodes()) == 1


async def test_manager_token_gives_a_manager_certificate(mgr: Mgr) -> None:
    j = await joined(mgr, mgr.cluster.join_tokens.manager)
    assert CA.identity_of(j.creds.cert_pem).role == "manager"
    node = mgr.store.view().node(j.node_id)
    assert (node.spec.role, node.role) == ("manager", "manager")
    assert node.manager_status is not None and node.manager_status.raft_id == 0  # a member once it joins Raft


def test_malformed_token() -> None:
    with pytest.raises(ShoalError, match="invalid join token"):
        CA.parse_join_token("SWMTKN-1-abc-def")


# --- the secure listener --------------------------------------------------------------------------------


async def _call_heartbeat(m: Mgr, creds: grpc.ChannelCredentials) -> grpc.StatusCode:
    async with channel(m, creds) as ch:
        try:
            await pbg.DispatcherStub(ch).Heartbeat(pb.HeartbeatRequest(), timeout=5)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


async def test_no_client_certificate_never_reaches_a_handler(mgr: Mgr) -> None:
    await joined(mgr)
    code = await _call_heartbeat(mgr, grpc.ssl_channel_credentials(mgr.cluster.root_ca.ca_cert_pem.encode()))
    assert code == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


async def test_certificate_of_another_ca_refused(mgr: Mgr) -> None:
    other = CA.create_root_ca(SystemClock().now())
    key = CA.new_key_pem()
    j = await joined(mgr)  # a real node ID, so only the issuer is wrong
    cert = CA.issue_node_cert(other, CA.make_csr(key), j.node_id, "manager", mgr.cluster.id, SystemClock().now(),
                              3600)
    creds = grpc.ssl_channel_credentials(mgr.cluster.root_ca.ca_cert_pem.encode(), key.encode(), cert.encode())
    assert await _call_heartbeat(mgr, creds) == grpc.StatusCode.UNAVAILABLE
    # trustme's CA (other key type, other names) is refused as well
    tm = trustme.CA().issue_cert("swarm-worker")
    creds = grpc.ssl_channel_credentials(mgr.cluster.root_ca.ca_cert_pem.encode(), tm.private_key_pem.bytes(),
                                         tm.cert_chain_pems[0].bytes())
    assert await _call_heartbeat(mgr, creds) == grpc.StatusCode.UNAVAILABLE


async def test_expired_certificate_refused(mgr: Mgr) -> None:
    j = await joined(mgr)
    key = CA.new_key_pem()
    past = SystemClock().now() - 10 * 24 * 3600
    cert = CA.issue_node_cert(mgr.cluster.root_ca, CA.make_csr(key), j.node_id, "worker", mgr.cluster.id, past,
                              3600)
    creds = grpc.ssl_channel_credentials(mgr.cluster.root_ca.ca_cert_pem.encode(), key.encode(), cert.encode())
    assert await _call_heartbeat(mgr, creds) == grpc.StatusCode.UNAVAILABLE
    # the same node with a current certificate gets through TLS (NotFound: it has not registered)
    assert await _call_heartbeat(mgr, j.creds.channel_credentials()) == grpc.StatusCode.NOT_FOUND


async def test_worker_certificate_cannot_call_manager_only_rpc(mgr: Mgr) -> None:
    j = await joined(mgr)
    async with channel(mgr, j.creds.channel_credentials()) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await pbg.ControlStub(ch).GetCluster(pb.Empty(), timeout=5)
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # the certificate's role counts even for a node the store knows as a manager
    key = CA.new_key_pem()
    cert = CA.issue_node_cert(mgr.cluster.root_ca, CA.make_csr(key), "mgr1", "worker", mgr.cluster.id,
                              SystemClock().now(), 3600)
    creds = grpc.ssl_channel_credentials(mgr.cluster.root_ca.ca_cert_pem.encode(), key.encode(), cert.encode())
    async with channel(mgr, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await pbg.ControlStub(ch).GetCluster(pb.Empty(), timeout=5)
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # a manager certificate may (the manager's own node, issued by the same CA)
    key = CA.new_key_pem()
    cert = CA.issue_node_cert(mgr.cluster.root_ca, CA.make_csr(key), "mgr1", "manager", mgr.cluster.id,
                              SystemClock().now(), 3600)
    creds = grpc.ssl_channel_credentials(mgr.cluster.root_ca.ca_cert_pem.encode(), key.encode(), cert.encode())
    async with channel(mgr, creds) as ch:
        blob = await pbg.ControlStub(ch).GetCluster(pb.Empty(), timeout=5)
    assert b"PRIVATE KEY" not in blob.data and mgr.cluster.id.encode() in blob.data


async def test_worker_certificate_claiming_manager_role_in_store_refused(mgr: Mgr) -> None:
    """A worker node holding a (stale) manager certificate: the store's role counts too."""
    j = await joined(mgr)
    key = CA.new_key_pem()
    cert = CA.issue_node_cert(mgr.cluster.root_ca, CA.make_csr(key), j.node_id, "manager", mgr.cluster.id,
                              SystemClock().now(), 3600)
    creds = grpc.ssl_channel_credentials(mgr.cluster.root_ca.ca_cert_pem.encode(), key.encode(), cert.encode())
    async with channel(mgr, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await pbg.ControlStub(ch).GetCluster(pb.Empty(), timeout=5)
    assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_removed_node_certificate_refused(mgr: Mgr) -> None:
    j = await joined(mgr)
    rd = C.RemoteDispatcher([mgr.addr], j.creds)
    await rd.register(j.node_id, NodeDescription(hostname="w1"), "")
    await mgr.store.update(lambda tx: tx.delete("node", j.node_id))
    with pytest.raises(ShoalError) as ei:
        await rd.heartbeat(j.node_id)
    assert "PermissionDenied" in ei.value.message and "removed" in ei.value.message
    with pytest.raises(ShoalError, match="PermissionDenied"):
        await rd.renew(CA.new_key_pem())
    await rd.close()


async def test_certificate_of_other_cluster_same_ca_refused(mgr: Mgr) -> None:
    """The O (cluster ID) of the certificate must be this cluster's."""
    j = await joined(mgr)
    key = CA.new_key_pem()
    cert = CA.issue_node_cert(mgr.cluster.root_ca, CA.make_csr(key), j.node_id, "worker", "othercluster",
                              SystemClock().now(), 3600)
    creds = grpc.ssl_channel_credentials(mgr.cluster.root_ca.ca_cert_pem.encode(), key.encode(), cert.encode())
    assert await _call_heartbeat(mgr, creds) == grpc.StatusCode.PERMISSION_DENIED


# --- the CA itself ------------------------------------------------------------------------------------


def test_names_come_from_the_ca_not_the_csr() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    root = CA.create_root_ca(SystemClock().now())
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil"),
                                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "swarm-manager")]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    cert = CA.issue_node_cert(root, csr, "n1", "worker", "c1", SystemClock().now(), 3600)
    ident = CA.identity_of(cert)
    assert (ident.node_id, ident.role, ident.cluster_id) == ("n1", "worker", "c1")
    assert CA.verify_issued_by(cert, root)
    assert not CA.verify_issued_by(cert, CA.create_root_ca(SystemClock().now()))


# --- liveness after a manager restart ------------------------------------------------------------------


async def test_nodes_that_never_come_back_after_a_manager_start_go_down() -> None:
    """Sessions die with a manager: a node that does not register within three periods is marked down,
    one that does stays ready, and the manager's own node is left alone."""
    from shoal.model.objects import SECOND, Node, NodeStatus

    rng = random.Random(3)
    store, _ = await make_cluster(rng)

    def prepare(tx):  # type: ignore[no-untyped-def]
        c = tx.cluster()
        tx.update(replace(c, spec=replace(c.spec, heartbeat_period=SECOND // 10)))
        tx.update(replace(tx.node("mgr1"), status=NodeStatus(state="ready", addr="127.0.0.1")))
        tx.create(Node(id="gone", status=NodeStatus(state="ready", addr="127.0.0.2")))

    await store.update(prepare)
    d = Dispatcher(store, SystemClock())
    runner = asyncio.create_task(d.run())
    rpc = ManagerRPC(store, d, SystemClock(), rng, "mgr1", "127.0.0.1:0", "127.0.0.1", unknown_grace=0.0)
    await rpc.start()
    lead = asyncio.create_task(rpc.leader_loop())  # what the Manager runs in each term it leads
    try:
        j = await C.join([f"127.0.0.1:{rpc.port}"], store.view().cluster().join_tokens.worker, CA.new_key_pem(),
                         "w1", "active")
        rd = C.RemoteDispatcher([f"127.0.0.1:{rpc.port}"], j.creds)
        await rd.register(j.node_id, NodeDescription(hostname="w1"), "")
        async def gone_down() -> bool:
            await rd.heartbeat(j.node_id)  # this one keeps its session
            return bool(store.view().node("gone").status.state == "down")

        await eventually(gone_down, 5, interval=0.02, what="the node that never came back to be down")
        assert store.view().node(j.node_id).status.state == "ready"
        assert store.view().node("mgr1").status.state == "ready"
        await rd.close()
    finally:
        lead.cancel()
        await rpc.stop()
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


# --- a new session closes the old channel under calls still in flight ----------------------------------


class _HeldReports:
    """The manager's UpdateTaskStatus held open until released: a report in flight while the session changes."""

    def __init__(self, d: Dispatcher) -> None:
        self.real = d.update_task_status
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.held = 0

    async def __call__(self, node_id: str, updates: list[tuple[str, TaskStatus]]) -> None:
        if self.held == 0:
            self.held += 1
            self.entered.set()
            await self.release.wait()
            raise ShoalError("this call was held until its channel was gone")
        await self.real(node_id, updates)


async def test_a_call_in_flight_when_a_new_session_closes_its_channel_fails_as_unavailable(
        mgr: Mgr, monkeypatch: pytest.MonkeyPatch) -> None:
    """grpc.aio cancels a closed channel's calls; the caller must get an error it retries on, not a
    CancelledError that is not its own (in the agent's TaskGroup that silently ended its reporter)."""
    from shoal.errors import Unavailable

    held = _HeldReports(mgr.dispatcher)
    monkeypatch.setattr(mgr.dispatcher, "update_task_status", held)
    j = await joined(mgr)
    rd = C.RemoteDispatcher([mgr.addr], j.creds)
    await rd.register(j.node_id, NodeDescription(hostname="w1"), "")
    report = asyncio.create_task(rd.update_task_status(j.node_id, [("t1", TaskStatus(state=TaskState.RUNNING))]))
    await asyncio.wait_for(held.entered.wait(), 10)
    await rd.register(j.node_id, NodeDescription(hostname="w1"), "")  # a new session: a new channel
    with pytest.raises(Unavailable, match="closed during the call"):
        await asyncio.wait_for(report, 10)
    held.release.set()
    await rd.close()


async def test_an_agent_reports_a_status_whose_call_was_cut_by_its_reconnect(
        mgr: Mgr, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failover bug the scale benchmark found: the session ends while the agent's running report is in
    flight, the agent reconnects (closing the old channel), and the report must still reach the store."""
    from shoal.agent.agent import Agent
    from shoal.testing.fakeexec import FakeBehavior, FakeExecutor

    held = _HeldReports(mgr.dispatcher)
    monkeypatch.setattr(mgr.dispatcher, "update_task_status", held)
    j = await joined(mgr)
    rd = C.RemoteDispatcher([mgr.addr], j.creds)
    agent = Agent(j.node_id, FakeExecutor(hostname="w1", behavior=FakeBehavior(exit_code=None)), rd,
                  SystemClock(), random.Random(1))
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 10)
        task = Task(id="t1", node_id=j.node_id, spec=TaskSpec(), desired_state=TaskState.RUNNING,
                    status=TaskStatus(state=TaskState.ASSIGNED))
        await mgr.store.update(lambda tx: tx.create(task))
        await asyncio.wait_for(held.entered.wait(), 10)
        mgr.dispatcher.sessions[j.node_id].expire()  # the session ends: the agent registers again
        def reported_running() -> bool:
            assert not running.done(), running
            state = mgr.store.view().task("t1").status.state
            assert state == TaskState.RUNNING, f"the task is still {state.name} in the store though the agent runs it"
            return True

        await eventually(reported_running, 15)
        assert held.held == 1 and not held.release.is_set()  # the held call was never answered: cut, retried
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await agent.close()
        await rd.close()


class _Hand:
    """A clock moved by hand (the admission's, so the test controls when a slot comes)."""

    def __init__(self) -> None:
        self.t = 100.0

    def monotonic(self) -> float:
        return self.t


async def test_a_deferred_registration_crosses_the_wire_with_its_wait_and_keeps_the_channel(mgr: Mgr) -> None:
    """A leader at its registration rate answers RESOURCE_EXHAUSTED with the seconds to wait (trailing metadata);
    the client raises Deferred with them, and registers again on the same connection when its slot comes."""
    from shoal.errors import Deferred
    from shoal.manager.admission import Admission

    hand = _Hand()
    mgr.dispatcher.admission = Admission(hand, rate=0.5, burst=1.0)  # type: ignore[arg-type]
    first, second = await joined(mgr), await joined(mgr)
    rd1, rd2 = C.RemoteDispatcher([mgr.addr], first.creds), C.RemoteDispatcher([mgr.addr], second.creds)
    await rd1.register(first.node_id, NodeDescription(hostname="w1"), "")
    with pytest.raises(Deferred, match=r"register again in 2\.00s") as refused:
        await rd2.register(second.node_id, NodeDescription(hostname="w2"), "")
    assert refused.value.retry_after == pytest.approx(2.0)
    kept = rd2._channel
    hand.t += 2.0
    await rd2.register(second.node_id, NodeDescription(hostname="w2"), "")
    assert rd2._channel is kept  # no new handshake for the node the leader told to come back
    assert set(mgr.dispatcher.sessions) >= {first.node_id, second.node_id}
    await rd1.close()
    await rd2.close()
