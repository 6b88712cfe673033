"""The swarm operations of a node: `swarm init` (also with --force-new-cluster), `swarm join`, `swarm leave`, a
node converting between worker and manager when its certificate's role changes, and what leaving removes.
Each works on the `ShoalNode` it is given, under its lock."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

from shoal import ca as CA
from shoal.agent.agent import _Deps
from shoal.api import messages as M
from shoal.api.node import InitOptions, JoinOptions
from shoal.ca import create_root_ca, make_join_token
from shoal.errors import InvalidArgument, ShoalError, Unavailable
from shoal.ids import new_id
from shoal.manager.keys import DEK_FILE, DataCipher
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.manager.raft.storage import bootstrap
from shoal.manager.recovery import force_new_cluster
from shoal.model.objects import (
    Annotations,
    Cluster,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkSpec,
    RootCA,
    SwarmSpec,
    Task,
)
from shoal.node.replica import manager_node_for
from shoal.rpc.client import NodeCredentials
from shoal.rpc.client import join as rpc_join
from shoal.store.memory import Tx

if TYPE_CHECKING:
    from shoal.node.core import ShoalNode

log = logging.getLogger(__name__)


def _addr_towards(remote: str) -> str:
    """The local address this host uses to reach `remote` (host:port)."""
    host = remote.rsplit(":", 1)[0].strip("[]") if ":" in remote else remote
    try:
        infos = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
        fam, _, _, _, sa = infos[0]
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect(sa)  # no packet is sent
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _local_addr(advertise: str, listen: str) -> str:
    host = (advertise or "").rsplit(":", 1)[0] if advertise else ""
    if host and not host[0].isalpha():
        return host
    lhost = listen.rsplit(":", 1)[0] if listen else ""
    if lhost and lhost not in ("0.0.0.0", "::", "") and not lhost[0].isalpha():
        return lhost
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _splittable(addr: str) -> bool:
    """What Go's net.SplitHostPort accepts of a listen address dockerd did not already complete with the
    default port (one with no colon): "host:port", or "[v6]:port"; not "a:b:c"."""
    if ":" not in addr:
        return True
    if addr.startswith("["):
        end = addr.find("]")
        return end > 0 and addr[end + 1:end + 2] == ":" and ":" not in addr[end + 2:] and "[" not in addr[1:]
    return addr.count(":") == 1 and "[" not in addr and "]" not in addr


async def init_swarm(node: ShoalNode, opts: InitOptions) -> str:
    async with node._lock:
        if node.state != "inactive":
            if not opts.force_new_cluster:
                raise Unavailable(M.SWARM_EXISTS)
            return await _force_new_cluster(node)
        # ForceNewCluster on a node outside any swarm is a plain init, as dockerd's.
        if not _splittable(opts.listen_addr):
            raise ShoalError(f"could not parse listen address {opts.listen_addr}")  # resolveListenAddr
        spec = opts.spec or SwarmSpec()
        # An operator's signing root and ForceRotate come after the cluster exists, through a cluster update
        # (dockerd's initClusterSpec: UpdateCluster, which starts a root rotation): see the init route.
        spec = replace(spec, ca_config=replace(spec.ca_config, signing_ca_cert="", signing_ca_key="",
                                               force_rotate=0))
        if not spec.annotations.name:
            spec = replace(spec, annotations=Annotations(name="default", labels=spec.annotations.labels))
        if spec.annotations.name != "default":
            raise InvalidArgument(M.rpc(M.INVALID_ARGUMENT, "invalid cluster name"))
        pools = opts.default_addr_pool or ("10.0.0.0/8",)
        size = opts.subnet_size or 24
        for p in pools:
            try:
                import ipaddress

                net = ipaddress.ip_network(p, strict=False)
            except ValueError:
                raise InvalidArgument(f"invalid default address pool {p}") from None
            if size < net.prefixlen:
                raise InvalidArgument(f"invalid subnet size {size} for pool {p}")
        node_id = new_id(node.rng)
        addr = _local_addr(opts.advertise_addr, opts.listen_addr)
        port = (opts.listen_addr.rsplit(":", 1)[1] if ":" in opts.listen_addr else "2377") or "2377"
        raft_id = node.rng.getrandbits(63) or 1
        cluster_id = new_id(node.rng)
        node.identity = {"node_id": node_id, "addr": addr, "manager_addr": f"{addr}:{port}",
                         "listen_addr": opts.listen_addr or "0.0.0.0:2377", "role": "manager",
                         "raft_id": raft_id, "cluster_id": cluster_id}
        # Before anything is written: a refused external root leaves the node as it was.
        root = await _init_root_ca(node, spec)
        cluster = Cluster(id=cluster_id, spec=spec, root_ca=root, default_addr_pool=pools, subnet_size=size,
                          data_path_port=opts.data_path_port or 4789)
        cluster = replace(cluster, join_tokens=replace(
            cluster.join_tokens, worker=make_join_token(root, node.rng),
            manager=make_join_token(root, node.rng)),
            unlock_key=("SWMKEY-1-" + new_id(node.rng)) if opts.autolock else "")
        if opts.autolock:
            cluster = replace(cluster, spec=replace(cluster.spec, autolock_managers=True))
        record = manager_node_for(node_id, node.hostname, addr, raft_id)
        record = replace(record, spec=replace(record.spec, availability=opts.availability or "active"),
                         manager_status=replace(record.manager_status, addr=f"{addr}:{port}"))
        ingress_id = new_id(node.rng)

        def fn(tx: Tx) -> None:
            tx.create(cluster)
            tx.create(record)
            tx.create(Network(
                id=ingress_id, vni=4096,
                spec=NetworkSpec(annotations=Annotations(name="ingress"), ingress=True),
                ipam=IPAMOptions(configs=(IPAMConfig(subnet="10.0.0.0/24", gateway="10.0.0.1"),))))

        raft_dir = node.cfg.data_dir / "raft"
        operator_root = (node.ident.certs_dir / "swarm-root-ca.crt").exists()
        shutil.rmtree(raft_dir, ignore_errors=True)
        for name in ("swarm-node.key", "swarm-node.crt", DEK_FILE):  # an earlier swarm's: this one has its own
            (node.ident.certs_dir / name).unlink(missing_ok=True)
        node.ident.drop_keys()
        storage = SqliteStorage(raft_dir, DataCipher(node.ident.manager_keys().dek))
        bootstrap(storage, [raft_id])  # a Raft group of one: this manager is its only voter
        storage.close()
        try:
            node.ident.save()
            await node._open_manager()
            assert node.store is not None
            await node.store.update(fn)
            await node._serve_manager()
        except Exception:
            await node._deactivate()
            node.ident.file.unlink(missing_ok=True)
            shutil.rmtree(raft_dir, ignore_errors=True)
            # A refused init (the manager port taken) leaves the node as it was: its certificates go, all
            # but a root the operator placed (the next init would take a left root for an external one).
            for name in ("swarm-node.key", "swarm-node.crt", DEK_FILE,
                         *(() if operator_root else ("swarm-root-ca.crt",))):
                (node.ident.certs_dir / name).unlink(missing_ok=True)
            node.ident.drop_keys()
            node.identity = {}
            raise
        await _first_session(node, "initialised")
        return node_id

async def _first_session(node: ShoalNode, done: str) -> None:
    """Waits (20 s at most) for the node's agent to register with a dispatcher, as dockerd's init and join
    return once the node is in the swarm: its description (platform, resources, engine) is in the store when
    the caller next inspects the node."""
    agent = node.agent
    assert agent is not None
    try:
        await asyncio.wait_for(agent.connected.wait(), 20.0)
    except TimeoutError:
        log.warning("%s, but the first session with a manager is not up yet", done)

async def _force_new_cluster(node: ShoalNode) -> str:
    """`swarm init --force-new-cluster` on a manager: the same swarm, with this manager as its only one."""
    if node.identity.get("role") != "manager":
        raise Unavailable(M.SWARM_NOT_MANAGER)
    await node._deactivate()
    index = await force_new_cluster(node.cfg.data_dir / "raft", node._raft_id(), node.node_id, node.clock,
                                    DataCipher(node.ident.manager_keys().dek))
    log.warning("forced a new cluster: this manager is the only member now (state kept up to index %d)", index)
    await node._activate()
    return node.node_id

async def _init_root_ca(node: ShoalNode, spec: SwarmSpec) -> RootCA:
    """The new cluster's root CA. A root certificate placed in `certificates/swarm-root-ca.crt` before the
    init (with `swarm-root-ca.key` next to it: a root with its key) is used instead of a generated one. Without
    its key, the init spec must list an external CA for it (`--external-ca`, no cacert or this root as cacert)
    that completes an https handshake chaining to it, else swarmkit's "there must be at least one valid,
    reachable external CA ..."; every node certificate, this manager's own first, is then signed there."""
    cert_file, key_file = node.ident.certs_dir / "swarm-root-ca.crt", node.ident.certs_dir / "swarm-root-ca.key"
    if not cert_file.exists():
        return create_root_ca(node.clock.now())
    key_pem = key_file.read_text() if key_file.exists() else ""
    root = CA.validate_signing_root(cert_file.read_text(), key_pem, node.clock.now())
    if key_pem:
        return root
    urls = CA.external_ca_urls(spec.ca_config.external_cas, root.ca_cert_pem, root.ca_cert_pem)

    def reachable() -> bool:
        return any(CA.external_ca_reachable(u, root.ca_cert_pem) for u in urls)

    if not await asyncio.to_thread(reachable):
        raise CA.external_ca_unreachable()
    log.info("swarm init with the external root CA from %s (no local key)", cert_file)
    return root

async def join_swarm(node: ShoalNode, opts: JoinOptions) -> str:
    """Join with a worker or a manager token: a certificate from the cluster's CA first (its role is the
    token's), then persist, then start the agent (a manager first joins the Raft group through the leader).
    A refusal (bad token, CA mismatch, unreachable manager) leaves nothing behind."""
    async with node._lock:
        if node.state != "inactive":
            raise Unavailable(M.SWARM_EXISTS)
        if not opts.join_token:
            raise InvalidArgument(CA.INVALID_TOKEN)
        result = await rpc_join(list(opts.remote_addrs), opts.join_token, CA.new_key_pem(), node.hostname,
                                opts.availability or "active")
        addr = _local_addr(opts.advertise_addr, "") if opts.advertise_addr else _addr_towards(result.manager_addr)
        role = CA.identity_of(result.creds.cert_pem).role
        listen = opts.listen_addr or "0.0.0.0:2377"
        port = listen.rsplit(":", 1)[1] if ":" in listen else "2377"
        node.identity = {"node_id": result.node_id, "addr": addr, "role": role,
                         "cluster_id": result.cluster_id, "manager_addr": result.manager_addr,
                         "manager_id": result.manager_id, "listen_addr": listen,
                         "manager_addrs": [result.manager_addr, *[a for a in opts.remote_addrs
                                                                  if a != result.manager_addr]]}
        if role == "manager":
            node.identity["manager_addr"] = f"{addr}:{port}"
            node.identity["raft_id"] = node.rng.getrandbits(63) or 1
        try:
            node.ident.drop_keys(on_disk=True)
            node.ident.write_creds(result.creds)
            shutil.rmtree(node.cfg.data_dir / "raft", ignore_errors=True)
            node.ident.save()
            if role == "manager":
                await _join_as_manager(node, result.leader_addr or result.manager_addr)
            else:
                await node._activate()
        except BaseException:
            await node._deactivate()
            node.ident.file.unlink(missing_ok=True)
            shutil.rmtree(node.ident.certs_dir, ignore_errors=True)
            shutil.rmtree(node.cfg.data_dir / "raft", ignore_errors=True)
            node.identity = {}
            raise
        await _first_session(node, "joined")
        return result.node_id

async def _join_as_manager(node: ShoalNode, via: str) -> None:
    """An empty Raft member with its listeners up (so the leader can reach it as soon as it is a voter), then
    the leader adds it, then the store catches up by log or snapshot."""
    await node._open_manager()
    await node._serve_manager()
    assert node.replica is not None
    await node.replica.join_group(via)

async def _leave_worker(node: ShoalNode) -> None:
    if node.remote is not None:
        try:
            await asyncio.wait_for(node.remote.leave(), 3.0)
        except Exception as e:  # the manager marks the node down after missed heartbeats anyway
            log.info("telling the manager about leaving failed: %s", e)
    await remove_local_state(node)

async def leave(node: ShoalNode, force: bool) -> None:
    async with node._lock:
        if node.state == "inactive":
            raise Unavailable(M.NO_SWARM)
        if node.locked:
            if not force:
                raise Unavailable("Swarm is encrypted and locked. Please unlock it first or use `--force` to "
                                  "ignore this message.")
            await remove_local_state(node)
            return
        if node.role == "worker":
            await _leave_worker(node)
            return
        if not force:
            raise Unavailable(_manager_leave_refusal(node))
        # As dockerd: the node stops and forgets the swarm; the others still count it as a manager
        # (Unreachable) until it is demoted and removed.
        await remove_local_state(node)

def _manager_leave_refusal(node: ShoalNode) -> str:
    """dockerd's message for `swarm leave` without --force on a manager (daemon/cluster/swarm.go)."""
    msg = "You are attempting to leave the swarm on a node that is participating as a manager. "
    replica = node.replica
    if replica is None or replica.membership is None or replica.raft is None:
        return msg + ("Doing so may lose the consensus of your cluster. The only way to restore a swarm that has "
                      "lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to "
                      "suppress this message.")
    reachable, unreachable = replica.membership.reachable_counts()
    if reachable - 2 <= unreachable:
        if reachable == 1 and unreachable == 0:
            return msg + ("Removing the last manager erases all current state of the swarm. Use `--force` to "
                          "ignore this message. ")
        msg += (f"Removing this node leaves {reachable - 1} managers out of {reachable + unreachable}. "
                "Without a Raft quorum your swarm will be inaccessible. ")
    return msg + ("The only way to restore a swarm that has lost consensus is to reinitialize it with "
                  "`--force-new-cluster`. Use `--force` to suppress this message.")

async def convert(node: ShoalNode, role: str, creds: NodeCredentials, managers: list[str]) -> None:
    """Promotion or demotion came through: stop what this node ran as and start as `role`, keeping its tasks
    (the agent adopts them) and its identity."""
    async with node._lock:
        if node.state == "inactive" or node.identity.get("role") == role:
            return
        log.info("this node is now a %s: restarting its swarm components in that role", role)
        await node._deactivate()
        node.ident.write_creds(creds)
        node.identity["role"] = role
        if managers:
            node.identity["manager_addrs"] = managers
            node.identity["manager_addr"] = managers[0]
        node.ident.drop_keys(on_disk=True)
        if role == "manager":
            listen = node.identity.get("listen_addr") or "0.0.0.0:2377"
            port = listen.rsplit(":", 1)[1] if ":" in listen else "2377"
            node.identity["manager_addr"] = f"{node.addr}:{port}"
            node.identity["raft_id"] = node.rng.getrandbits(63) or 1
            shutil.rmtree(node.cfg.data_dir / "raft", ignore_errors=True)
            node.ident.save()
            try:
                await _join_as_manager(node, managers[0] if managers else "")
            except Exception:
                log.exception("joining the managers after a promotion failed; retrying as the node restarts")
                raise
        else:
            node.identity.pop("raft_id", None)
            shutil.rmtree(node.cfg.data_dir / "raft", ignore_errors=True)
            node.ident.save()
            await node._activate()

async def remove_local_state(node: ShoalNode) -> None:
    node.leaving = True
    try:
        await _remove_local_state(node)
    finally:
        node.leaving = False

async def _remove_local_state(node: ShoalNode) -> None:
    executor = node.executor
    await node._deactivate()
    # Leaving removes this node's task containers/processes, as dockerd does.
    cleanup = node._make_executor() if executor is not None else None
    if cleanup is not None:
        for tid in await cleanup.list_task_ids():
            ctlr = cleanup.controller(Task(id=tid, node_id=node.node_id), _Deps())
            try:
                await ctlr.terminate()
            except Exception:
                pass
            try:
                await ctlr.remove()
            except Exception:
                log.warning("removing task %s on leave failed", tid, exc_info=True)
            await ctlr.close()
        await cleanup.close()
    await node._remove_network_state()
    # What is left of the executor's state (empty task dirs, a docker executor's secrets root) goes too:
    # a node that left holds nothing on the host.
    shutil.rmtree(node.cfg.data_dir / "executor", ignore_errors=True)
    shutil.rmtree(node.cfg.data_dir / "raft", ignore_errors=True)
    node.ident.forget()
    node.locked = False
