"""`/swarm`: init, join, leave, update, unlock and the unlock key."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from shoal import ca as CA
from shoal.api import messages as M
from shoal.api.node import InitOptions, JoinOptions
from shoal.ca import make_join_token
from shoal.engineapi import convert as C
from shoal.engineapi.routes.common import json_ok, manager_of, node_of, qbool, qbool_strict, qversion, read_json
from shoal.engineapi.routes.registry import route
from shoal.errors import ShoalError, Unavailable
from shoal.model.objects import Cluster

# --- swarm --------------------------------------------------------------------------------------


def _cluster(request: web.Request) -> Cluster:
    return manager_of(request).controlapi.cluster()


@route("GET", "/swarm")
async def swarm_inspect(request: web.Request) -> web.StreamResponse:
    c = _cluster(request)  # a worker or an inactive node answers 503 as dockerd
    return json_ok(C.swarm_to_wire(c, tls_info=CA.desired_tls_info(c.root_ca),
                                   root_rotation_in_progress=CA.rotation_in_progress(c.root_ca)))


@route("POST", "/swarm/init", leader=False)
async def swarm_init(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    req = C.init_request_from_wire(body)
    node = node_of(request)
    kept = req.force_new_cluster and node.state != "inactive"  # the same swarm, this manager alone in it
    node_id = await node.init_swarm(InitOptions(
        listen_addr=req.listen_addr, advertise_addr=req.advertise_addr, force_new_cluster=req.force_new_cluster,
        spec=req.spec, default_addr_pool=req.default_addr_pool, subnet_size=req.subnet_size,
        data_path_port=req.data_path_port, autolock=req.spec.autolock_managers, availability=req.availability))
    ca = req.spec.ca_config
    if kept or ca.signing_ca_cert or ca.signing_ca_key or ca.force_rotate:
        # dockerd's initClusterSpec: the request's Spec merged onto the cluster's, written with UpdateCluster
        # before the init answers (so a kept swarm takes the new autolock, labels, history limit..., and a
        # signing root starts a rotation to it).
        mgr = manager_of(request)
        cur = mgr.controlapi.cluster()
        base = cur.spec
        if not kept:  # a new cluster's external CAs are the request's already: merged once, as by dockerd
            base = replace(base, ca_config=replace(base.ca_config, external_cas=()))
        try:
            await mgr.controlapi.update_swarm(
                cur.meta.version, C.init_spec_onto(body, base), False, False, False,
                lambda c: make_join_token(c.root_ca, node.rng),
                ca_update=lambda c, sp: CA.apply_ca_spec(c, sp, node.clock.now()))
        except ShoalError as e:
            # dockerd wraps it in a plain error (500); the swarm stays, as it was made or kept
            raise ShoalError(f"error updating cluster settings: {e.message}") from e
    return json_ok(node_id)


@route("POST", "/swarm/join", leader=False)
async def swarm_join(request: web.Request) -> web.StreamResponse:
    req = C.join_request_from_wire(await read_json(request))
    node = node_of(request)
    if node.state != "inactive":
        raise Unavailable(M.SWARM_EXISTS)
    await node.join_swarm(JoinOptions(remote_addrs=tuple(req.remote_addrs), join_token=req.join_token,
                                      listen_addr=req.listen_addr, advertise_addr=req.advertise_addr,
                                      availability=req.availability))
    return web.Response(status=200)


@route("POST", "/swarm/leave", leader=False)
async def swarm_leave(request: web.Request) -> web.StreamResponse:
    await node_of(request).leave(qbool(request, "force"))
    return web.Response(status=200)


@route("POST", "/swarm/update")
async def swarm_update(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    cur = mgr.controlapi.cluster()
    spec = C.swarm_spec_from_wire(await read_json(request), cur.spec)
    node = node_of(request)
    version_ = qversion(request, "swarm")
    worker, manager, unlock = (qbool_strict(request, f, f"invalid value for {f}: {{value}}")
                               for f in ("rotateWorkerToken", "rotateManagerToken", "rotateManagerUnlockKey"))
    await mgr.controlapi.update_swarm(
        version_, spec, worker, manager, unlock, lambda c: make_join_token(c.root_ca, node.rng),
        ca_update=lambda c, sp: CA.apply_ca_spec(c, sp, node.clock.now()))
    return web.Response(status=200)


@route("GET", "/swarm/unlockkey")
async def swarm_unlockkey(request: web.Request) -> web.StreamResponse:
    c = _cluster(request)
    # Without autolock dockerd answers 200 with an empty key (the CLI prints its own "no unlock key is set").
    return json_ok({"UnlockKey": c.unlock_key if c.spec.autolock_managers else ""})


@route("POST", "/swarm/unlock", leader=False)
async def swarm_unlock(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    key = str(body.get("UnlockKey") or "") if isinstance(body, dict) else ""
    await node_of(request).unlock(key)
    return web.Response(status=200)
