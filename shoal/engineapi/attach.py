"""Plain containers on attachable swarm networks, through the Engine API.

`docker run --network <overlay>` (and `docker network connect/disconnect` with one) reaches Shoal, which
serves the node's container endpoints by proxying them to the local Docker Engine. The engine does not know
swarm networks, so these three requests are rewritten when they name one (dockerd does the same through its
cluster provider: findAndAttachNetwork):

- the leader allocates an attachment (shoal.manager.attachments): an address from Shoal's IPAM, refused with
  dockerd's message when the network is not attachable;
- the engine gets the container on its bridge network standing for the overlay (shoal.net.engine), with
  `IPAMConfig.IPv4Address` = that address, and (at create) the gateway first in its DNS servers, where the
  node's agent answers service names for it; its VIP rules follow when it runs (shoal.net.plain);
- the address is released when the engine reports the container destroyed or disconnected.

Local engine networks keep precedence over swarm ones of the same name, as in dockerd. Anything else goes to
the proxy unchanged.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from shoal.engineapi.gojson import go_json_decode
from shoal.engineapi.routes.common import node_of, param
from shoal.engineapi.routes.registry import route
from shoal.engineapi.server import PROXY_KEY, error_response
from shoal.errors import InvalidArgument, ShoalError
from shoal.manager.attachments import not_attachable
from shoal.model.objects import Network

_BUILTIN = ("", "default", "bridge", "host", "none")


def _swarm_network(agent: Any, ref: str) -> Network | None:
    """The swarm network `ref` names (ID, name, unique ID prefix) in this node's cluster state, if any."""
    if agent is None or ref in _BUILTIN or ref.startswith("container:"):
        return None
    nets: dict[str, Network] = agent.state.networks
    if ref in nets:
        return nets[ref]
    for found in ([n for n in nets.values() if n.name == ref], [n for n in nets.values() if n.id.startswith(ref)]):
        if len(found) == 1:
            return found[0]
    return None


def _json_object(raw: bytes) -> dict[str, Any]:
    """A connect/disconnect body: {} when empty; bad JSON is refused as dockerd's decoder refuses it (400)."""
    if not raw.strip():
        return {}
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise InvalidArgument("invalid JSON: invalid UTF-8 in request body") from None
    value, _ = go_json_decode(text, len(text) - len(text.lstrip()))
    return value if isinstance(value, dict) else {}


async def _engine(request: web.Request, method: str, path: str, body: Any = None) -> tuple[int, bytes, str]:
    proxy = request.app[PROXY_KEY]
    status, data, ctype = await proxy.call(request, None if body is None else json.dumps(body).encode(),
                                           raw_path=path, method=method)
    return status, data, ctype


def _reply(status: int, data: bytes, ctype: str) -> web.Response:
    return web.Response(status=status, body=data, headers={"Content-Type": ctype})


async def _local_network(request: web.Request, ref: str) -> bool:
    status, _d, _c = await _engine(request, "GET", f"/networks/{ref}")
    return status == 200


def _could_not_attach(ref: str, e: ShoalError) -> web.Response:
    msg = e.message if e.message.startswith("rpc error: ") else f"rpc error: code = Unknown desc = {e.message}"
    return error_response(500, f"Could not attach to network {ref}: {msg}")


def _unsupported(what: str) -> web.Response:
    return error_response(501, f"shoal: {what}")


async def _attach_plan(request: web.Request, refs: list[str]) -> tuple[list[tuple[str, Network]], Any] | web.Response:
    """The swarm networks among `refs` ([] when none: the request goes to the engine as it is), or the error
    to answer."""
    agent = node_of(request).network
    found = [(r, n) for r in dict.fromkeys(refs) if (n := _swarm_network(agent, r)) is not None]
    found = [(r, n) for r, n in found if not await _local_network(request, r)]
    if not found:
        return [], agent
    for ref, net in found:
        if not net.spec.attachable or net.spec.ingress:
            return error_response(500, f"Could not attach to network {ref}: {not_attachable(ref)}")
    if agent is None or getattr(agent, "plain", None) is None or getattr(agent, "attacher", None) is None:
        return _unsupported(f"this node cannot attach containers to swarm network {found[0][0]}: it needs the "
                            "docker executor with networking on")
    return found, agent


@route("POST", "/containers/create", leader=False)
async def container_create(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):  # the engine judges a body Shoal cannot read
        body = None
    if not isinstance(body, dict):
        return _reply(*await request.app[PROXY_KEY].call(request, raw))
    hc: dict[str, Any] = body["HostConfig"] if isinstance(body.get("HostConfig"), dict) else {}
    nc: dict[str, Any] = body["NetworkingConfig"] if isinstance(body.get("NetworkingConfig"), dict) else {}
    ec: dict[str, Any] = dict(nc.get("EndpointsConfig") or {})
    mode = str(hc.get("NetworkMode") or "")
    plan = await _attach_plan(request, [mode, *ec])
    if isinstance(plan, web.Response):
        return plan
    refs, agent = plan
    if not refs:
        return _reply(*await request.app[PROXY_KEY].call(request, raw))
    for ref, _net in refs:
        if ((ec.get(ref) or {}).get("IPAMConfig") or {}).get("IPv4Address"):
            return _unsupported(f"a static address on swarm network {ref} (--ip) is not supported")
    name = request.query.get("name", "").lstrip("/")
    key = "create-" + uuid.uuid4().hex
    plain, attacher = agent.plain, agent.attacher
    atts: dict[str, tuple[str, str]] = {}
    cidrs: list[str] = []
    recorded = False
    with plain.pending(key):
        try:
            for ref, net in refs:
                aliases = tuple(str(a) for a in (ec.get(ref) or {}).get("Aliases") or ())
                try:
                    t = await attacher.attach(key, net.id, name=name, aliases=aliases)
                except ShoalError as e:
                    return _could_not_attach(ref, e)
                atts[t.id] = (net.id, t.networks[0].addresses[0])
                cidrs.append(t.networks[0].addresses[0])
            eps = await plain.endpoints([(net, cidr) for (_r, net), cidr in zip(refs, cidrs, strict=True)])
            engine_of = {ref: ep for (ref, _n), ep in zip(refs, eps, strict=True)}
            for ref, ep in engine_of.items():
                cfg = dict(ec.pop(ref, None) or {})
                cfg.pop("NetworkID", None)
                cfg["IPAMConfig"] = {**(cfg.get("IPAMConfig") or {}), "IPv4Address": ep.address.split("/")[0]}
                ec[ep.engine_name] = cfg
                if mode == ref:
                    mode = ep.engine_name
            hc = {**hc, "NetworkMode": mode}
            gw = next((ep.gateway for ep in eps if ep.engine_name == mode), eps[0].gateway)
            hc["Dns"] = [gw, *[d for d in hc.get("Dns") or () if d != gw]]
            # The engine (API 1.41) takes one endpoint at create: the network mode's; the others right after.
            first = {mode: ec[mode]} if mode in ec else {}
            later = [(k, v) for k, v in ec.items() if k != mode]
            body = {**body, "HostConfig": hc, "NetworkingConfig": {"EndpointsConfig": first}}
            status, data, ctype = await request.app[PROXY_KEY].call(request, json.dumps(body).encode())
            if status != 201:
                return _reply(status, data, ctype)
            cid = str(json.loads(data)["Id"])
            for eng, cfg in later:
                st, d, ct = await _engine(request, "POST", f"/networks/{eng}/connect",
                                          {"Container": cid, "EndpointConfig": cfg})
                if st >= 300:
                    await _engine(request, "DELETE", f"/containers/{cid}?force=1")
                    return _reply(st, d, ct)
            await plain.attached(cid, atts)
            recorded = True
            return _reply(status, data, ctype)
        finally:
            if not recorded:
                for a in atts:
                    await plain.release_attachment(a)


async def _container(request: web.Request, ref: str) -> tuple[dict[str, Any] | None, web.Response | None]:
    status, data, ctype = await _engine(request, "GET", f"/containers/{ref}/json")
    if status != 200:
        return None, _reply(status, data, ctype)
    out: dict[str, Any] = json.loads(data)
    return out, None


def _running(info: dict[str, Any]) -> bool:
    return bool((info.get("State") or {}).get("Running"))


async def _connect_now(request: web.Request, agent: Any, net: Network, ref: str, body: dict[str, Any],
                       info: dict[str, Any], cfg: dict[str, Any]) -> web.Response:
    """Attach the container `info` to swarm network `net` now: an address from the leader, the container on
    the engine's bridge for `net` with it, and the record that holds it."""
    if not net.spec.attachable or net.spec.ingress:
        return error_response(500, f"Could not attach to network {ref}: {not_attachable(ref)}")
    cid, cname = str(info["Id"]), str(info.get("Name") or "").lstrip("/")
    plain, attacher = agent.plain, agent.attacher
    recorded = False
    atts: dict[str, tuple[str, str]] = {}
    with plain.pending(cid):
        try:
            try:
                t = await attacher.attach(cid, net.id, name=cname,
                                          aliases=tuple(str(a) for a in cfg.get("Aliases") or ()))
            except ShoalError as e:
                return _could_not_attach(ref, e)
            atts[t.id] = (net.id, t.networks[0].addresses[0])
            (ep,) = await plain.endpoints([(net, t.networks[0].addresses[0])])
            cfg = {k: v for k, v in cfg.items() if k != "NetworkID"}
            cfg["IPAMConfig"] = {**(cfg.get("IPAMConfig") or {}), "IPv4Address": ep.address.split("/")[0]}
            status, data, ctype = await _engine(request, "POST", f"/networks/{ep.engine_name}/connect",
                                                {**body, "Container": cid, "EndpointConfig": cfg})
            if status >= 300:
                return _reply(status, data, ctype)
            pid = int((info.get("State") or {}).get("Pid") or 0)
            await plain.attached(cid, atts, pid)
            recorded = True
            return _reply(status, data, ctype)
        finally:
            if not recorded:
                for a in atts:
                    await plain.release_attachment(a)


def _agent_for(request: web.Request, ref: str) -> tuple[Any, Network | None]:
    agent = node_of(request).network
    return agent, _swarm_network(agent, ref)


@route("POST", "/networks/{id}/connect", leader=False)
async def network_connect(request: web.Request) -> web.StreamResponse:
    """A running container is attached at once; one that is not running gets the connect recorded and
    attached when it starts (`start_container`), as dockerd does: its answer is 200 then, even for a network
    that is not attachable (the start is what fails)."""
    ref = param(request, "id")
    raw = await request.read()
    agent, net = _agent_for(request, ref)
    if net is None or await _local_network(request, ref):
        return _reply(*await request.app[PROXY_KEY].call(request, raw))
    if getattr(agent, "plain", None) is None or getattr(agent, "attacher", None) is None:
        return _unsupported(f"this node cannot attach containers to swarm network {ref}: it needs the "
                            "docker executor with networking on")
    body = _json_object(raw)
    cfg = dict(body.get("EndpointConfig") or {})
    if (cfg.get("IPAMConfig") or {}).get("IPv4Address"):
        return _unsupported(f"a static address on swarm network {ref} (--ip) is not supported")
    info, err = await _container(request, str(body.get("Container") or ""))
    if info is None:
        assert err is not None
        return err
    cid, cname = str(info["Id"]), str(info.get("Name") or "").lstrip("/")
    attached = agent.plain.attachment_of(cid, net.id) is not None
    if not _running(info):
        if not attached:
            agent.plain.defer(cid, net.id, ref, cfg)
        return web.Response(status=200)
    if attached:
        return error_response(403, f"endpoint with name {cname} already exists in network {net.name}")
    return await _connect_now(request, agent, net, ref, body, info, cfg)


@route("POST", "/networks/{id}/disconnect", leader=False)
async def network_disconnect(request: web.Request) -> web.StreamResponse:
    ref = param(request, "id")
    raw = await request.read()
    agent, net = _agent_for(request, ref)
    if net is None or agent is None or agent.plain is None or await _local_network(request, ref):
        return _reply(*await request.app[PROXY_KEY].call(request, raw))
    body = _json_object(raw)
    info, err = await _container(request, str(body.get("Container") or ""))
    if info is None:
        assert err is not None
        return err
    cid = str(info["Id"])
    att = agent.plain.attachment_of(cid, net.id)
    if att is None:
        if agent.plain.undefer(cid, net.id):
            return web.Response(status=200)
        if not _running(info):
            return error_response(500, f"container {cid} is not connected to the network {ref}")
        return error_response(500, f"container {cid} is not connected to network {net.name}")
    status, data, ctype = await _engine(request, "POST", f"/networks/{agent.plain.engine_name(net)}/disconnect",
                                        {**body, "Container": cid})
    if status < 300:
        await agent.plain.detached(cid, {att})
    return _reply(status, data, ctype)


async def _attach_deferred(request: web.Request) -> web.Response | None:
    """Before a container starts: attach it to the swarm networks it was connected to while not running (an
    error answers the start, as dockerd's start fails when it cannot attach). None: go on with the start."""
    agent = node_of(request).network
    plain = getattr(agent, "plain", None)
    if agent is None or plain is None or not plain.deferred:
        return None
    info, _err = await _container(request, param(request, "id"))
    if info is None:  # the engine answers the start
        return None
    cid = str(info["Id"])
    for net_id, (ref, cfg) in plain.deferred_of(cid).items():
        net: Network | None = agent.state.networks.get(net_id)
        if net is None:
            return error_response(404, f"network {ref} not found")
        if plain.attachment_of(cid, net_id) is None:
            resp = await _connect_now(request, agent, net, ref, {}, info, cfg)
            if resp.status >= 300:
                return resp
        plain.undefer(cid, net_id)
    return None


@route("POST", "/containers/{id}/start", leader=False)
async def start_container(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    return await _attach_deferred(request) or _reply(*await request.app[PROXY_KEY].call(request, raw))


@route("POST", "/containers/{id}/restart", leader=False)
async def restart_container(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    return await _attach_deferred(request) or _reply(*await request.app[PROXY_KEY].call(request, raw))
