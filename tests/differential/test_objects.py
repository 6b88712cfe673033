"""Services, tasks, secrets, configs, overlay networks, plugins and events, compared with dockerd: answers and
error answers (status and message). Specs only: services here have no running replicas, except where noted."""

from __future__ import annotations

import base64
import re
import time
from typing import Any

import pytest

from tests.differential.harness import Answer, Pair, Side, cleanup, settled
from tests.e2e.dockerd import TEST_IMAGE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _spec(name: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "Name": name,
        "Labels": {"diff": "yes"},
        "TaskTemplate": {"ContainerSpec": {"Image": TEST_IMAGE, "Command": ["sleep", "600"]},
                         "RestartPolicy": {"Condition": "none"}},
        "Mode": {"Replicated": {"Replicas": 0}},
    }
    spec.update(extra)
    return spec


def _id(s: Side, method: str, path: str, body: Any) -> tuple[Answer, str]:
    status, got, _ = s.request(method, path, body)
    ident = got.get("ID") or got.get("Id") or "" if isinstance(got, dict) else ""
    return Answer(f"{method} {path}", status, got), str(ident)


def _services(s: Side) -> list[Answer]:
    out: list[Answer] = []
    a, sid = _id(s, "POST", "/services/create", _spec("dsvc", EndpointSpec={"Mode": "vip"}))
    out.append(a)
    with cleanup(s, f"/services/{sid}", "/services/dsvc-dnsrr", "/services/dsvc-global", "/services/dsvc-job"):
        out.append(s.call("GET /services/{id}", "GET", f"/services/{sid}"))
        out.append(s.call("GET /services/{name}", "GET", "/services/dsvc"))
        out.append(s.call("GET /services/{id}?insertDefaults", "GET", f"/services/{sid}",
                          query={"insertDefaults": "true"}))
        out.append(s.call("GET /services/{id}?insertDefaults=bad", "GET", f"/services/{sid}",
                          query={"insertDefaults": "bad"}))
        out.append(s.call("GET /services", "GET", "/services"))
        for f in ({"name": ["dsvc"]}, {"label": ["diff=yes"]}, {"mode": ["replicated"]}, {"mode": ["global"]},
                  {"mode": ["bogus"]}, {"id": [sid[:6]]}, {"colour": ["x"]}):
            k = next(iter(f))
            out.append(s.call(f"GET /services?filters={k}" + ("" if k == "id" else f"={f[k][0]}"), "GET",
                              "/services", query={"filters": f}))
        out.append(s.call("GET /services?status=true", "GET", "/services", query={"status": "true"}))
        out.append(s.call("GET /services/missing", "GET", "/services/missing"))
        _, cur, _ = s.request("GET", f"/services/{sid}")
        v = cur["Version"]["Index"]
        upd = dict(cur["Spec"], Labels={"diff": "yes", "u": "1"})
        out.append(s.call("POST /services/{id}/update", "POST", f"/services/{sid}/update", upd, query={"version": v}))
        out.append(s.call("POST /services/{id}/update (stale)", "POST", f"/services/{sid}/update", upd,
                          query={"version": v}))
        out.append(s.call("POST /services/{id}/update (no version)", "POST", f"/services/{sid}/update", upd))
        _, cur, _ = s.request("GET", f"/services/{sid}")
        v = cur["Version"]["Index"]
        out.append(s.call("POST /services/{id}/update (rename)", "POST", f"/services/{sid}/update",
                          dict(upd, Name="other"), query={"version": v}))
        out.append(s.call("GET /services/{id} (updated)", "GET", f"/services/{sid}"))
        out.append(s.call("POST /services/{id}/update (rollback)", "POST", f"/services/{sid}/update", upd,
                          query={"version": v, "rollback": "previous"}))
        out.append(settled(s, "GET /services/{id} (rolled back)", f"/services/{sid}",
                           lambda b: not b.get("UpdateStatus", {}).get("State", "").endswith("started")))
        out.append(s.call("POST /services/missing/update", "POST", "/services/missing/update", upd,
                          query={"version": 1}))
        out.append(s.call("POST /services/create (duplicate)", "POST", "/services/create", _spec("dsvc")))
        bad: list[tuple[str, Any]] = [
            ("no image", {"Name": "dbad", "TaskTemplate": {"ContainerSpec": {}}}),
            ("bad name", _spec("bad_name!")),
            ("two modes", _spec("dbad", Mode={"Replicated": {"Replicas": 1}, "Global": {}})),
            ("bad mount", _spec("dbad", TaskTemplate={"ContainerSpec": {
                "Image": TEST_IMAGE, "Mounts": [{"Type": "bind", "Target": "/x"}]}})),
            ("unknown network", _spec("dbad", TaskTemplate={"ContainerSpec": {"Image": TEST_IMAGE},
                                                            "Networks": [{"Target": "nonet"}]})),
            ("unknown secret", _spec("dbad", TaskTemplate={"ContainerSpec": {
                "Image": TEST_IMAGE, "Secrets": [{"SecretName": "nosecret", "SecretID": "nosecret",
                                                  "File": {"Name": "x", "UID": "0", "GID": "0", "Mode": 292}}]}})),
            ("bad port", _spec("dbad", EndpointSpec={"Ports": [{"Protocol": "tcp", "TargetPort": 0}]})),
            ("dnsrr with ports", _spec("dbad", EndpointSpec={"Mode": "dnsrr", "Ports": [
                {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 18080, "PublishMode": "ingress"}]})),
            ("bad restart condition", _spec("dbad", TaskTemplate={"ContainerSpec": {"Image": TEST_IMAGE},
                                                                  "RestartPolicy": {"Condition": "sometimes"}})),
            ("bad json", None),
        ]
        for what, body in bad:
            if body is None:
                out.append(s.call(f"POST /services/create ({what})", "POST", "/services/create", raw=b"[1]"))
            else:
                out.append(s.call(f"POST /services/create ({what})", "POST", "/services/create", body))
        out.append(_id(s, "POST", "/services/create", _spec("dsvc-dnsrr", EndpointSpec={"Mode": "dnsrr"}))[0])
        out.append(s.call("GET /services/{dnsrr}", "GET", "/services/dsvc-dnsrr"))
        out.append(_id(s, "POST", "/services/create", _spec("dsvc-global", Mode={"Global": {}}))[0])
        out[-1].label = "POST /services/create (global)"
        out.append(s.call("GET /services/{global}", "GET", "/services/dsvc-global"))
        out.append(_id(s, "POST", "/services/create", _spec("dsvc-job", Mode={"ReplicatedJob": {
            "MaxConcurrent": 1, "TotalCompletions": 0}}))[0])
        out[-1].label = "POST /services/create (job)"
        out.append(s.call("GET /services/{job}", "GET", "/services/dsvc-job"))
        out.append(s.call("GET /services/{id}/logs (no stream chosen)", "GET", f"/services/{sid}/logs"))
        out.append(s.call("GET /services/missing/logs", "GET", "/services/missing/logs", query={"stdout": "1"}))
        out.append(s.call("DELETE /services/{id}", "DELETE", f"/services/{sid}"))
        out.append(s.call("DELETE /services/{id} (again)", "DELETE", f"/services/{sid}"))
    return out


def test_services(pair: Pair) -> None:
    pair.check(_services)


def test_docker_py_create_service(pair: Pair) -> None:
    """docker-py's own encoding (ServiceMode, RestartPolicy with Window 0, EndpointSpec, UpdateConfig...)."""
    import docker  # type: ignore[import-untyped]
    from docker.types import (  # type: ignore[import-untyped]
        EndpointSpec,
        Resources,
        RestartPolicy,
        ServiceMode,
        UpdateConfig,
    )

    def scenario(s: Side) -> list[Answer]:
        c = s.client()
        try:
            svc = c.services.create(
                TEST_IMAGE, ["sleep", "600"], name="dpy", mode=ServiceMode("replicated", replicas=0),
                restart_policy=RestartPolicy(condition="on-failure", delay=0, max_attempts=3, window=0),
                endpoint_spec=EndpointSpec(mode="vip"), update_config=UpdateConfig(parallelism=2, delay=1),
                resources=Resources(mem_limit=64 * 1024 * 1024), labels={"a": "b"}, env=["X=1"],
                hostname="h", workdir="/tmp", user="root", stop_grace_period=5 * 10**9)
            try:
                out = [Answer("docker-py services.get", 200, c.api.inspect_service(svc.id))]
                svc.update(labels={"c": "d"}, restart_policy=RestartPolicy(condition="any"))
                out.append(Answer("docker-py service.update", 200, c.api.inspect_service(svc.id)))
                svc.reload()
                try:
                    svc.update(mode=ServiceMode("global"))
                    out.append(Answer("docker-py service.update (mode change)", 200, None))
                except docker.errors.APIError as e:
                    out.append(Answer("docker-py service.update (mode change)", e.status_code, str(e.explanation)))
                try:
                    c.services.create(TEST_IMAGE, name="dpy")
                    out.append(Answer("docker-py create duplicate", 200, None))
                except docker.errors.APIError as e:
                    out.append(Answer("docker-py create duplicate", e.status_code, str(e.explanation)))
                return out
            finally:
                svc.remove()
        finally:
            c.close()

    pair.check(scenario)


def _secrets_configs(s: Side) -> list[Answer]:
    out: list[Answer] = []
    for kind in ("secrets", "configs"):
        data = base64.b64encode(b"hello").decode()
        a, oid = _id(s, "POST", f"/{kind}/create", {"Name": f"d{kind}", "Labels": {"k": "v"}, "Data": data})
        out.append(a)
        with cleanup(s, f"/{kind}/{oid}"):
            out.append(s.call(f"GET /{kind}/{{id}}", "GET", f"/{kind}/{oid}"))
            out.append(s.call(f"GET /{kind}/{{name}}", "GET", f"/{kind}/d{kind}"))
            out.append(s.call(f"GET /{kind}", "GET", f"/{kind}"))
            for f in ({"name": [f"d{kind}"]}, {"label": ["k=v"]}, {"label": ["k=w"]}, {"names": ["x"]},
                      {"id": [oid[:5]]}):
                out.append(s.call(f"GET /{kind}?filters={sorted(f)[0]}", "GET", f"/{kind}", query={"filters": f}))
            out.append(s.call(f"GET /{kind}/missing", "GET", f"/{kind}/missing"))
            out.append(s.call(f"POST /{kind}/create (duplicate)", "POST", f"/{kind}/create",
                              {"Name": f"d{kind}", "Data": data}))
            out.append(s.call(f"POST /{kind}/create (bad name)", "POST", f"/{kind}/create",
                              {"Name": "bad name!", "Data": data}))
            out.append(s.call(f"POST /{kind}/create (no name)", "POST", f"/{kind}/create", {"Data": data}))
            out.append(s.call(f"POST /{kind}/create (bad base64)", "POST", f"/{kind}/create",
                              {"Name": f"d{kind}2", "Data": "!!!"}))
            out.append(s.call(f"POST /{kind}/create (driver)", "POST", f"/{kind}/create",
                              {"Name": f"d{kind}3", "Driver": {"Name": "nodriver"}}))
            _, cur, _ = s.request("GET", f"/{kind}/{oid}")
            v = cur["Version"]["Index"]
            out.append(s.call(f"POST /{kind}/{{id}}/update (labels)", "POST", f"/{kind}/{oid}/update",
                              dict(cur["Spec"], Labels={"k": "v2"}), query={"version": v}))
            _, cur, _ = s.request("GET", f"/{kind}/{oid}")
            out.append(s.call(f"POST /{kind}/{{id}}/update (data)", "POST", f"/{kind}/{oid}/update",
                              dict(cur["Spec"], Data=base64.b64encode(b"other").decode()),
                              query={"version": cur["Version"]["Index"]}))
            out.append(s.call(f"POST /{kind}/{{id}}/update (stale)", "POST", f"/{kind}/{oid}/update",
                              cur["Spec"], query={"version": v}))
            out.append(s.call(f"GET /{kind}/{{id}} (updated)", "GET", f"/{kind}/{oid}"))
            ref = {"SecretName" if kind == "secrets" else "ConfigName": f"d{kind}",
                   "SecretID" if kind == "secrets" else "ConfigID": oid,
                   "File": {"Name": "f", "UID": "0", "GID": "0", "Mode": 0o444}}
            key = "Secrets" if kind == "secrets" else "Configs"
            a, sid = _id(s, "POST", "/services/create", _spec(f"use-{kind}", TaskTemplate={
                "ContainerSpec": {"Image": TEST_IMAGE, key: [ref]}}))
            with cleanup(s, f"/services/{sid}"):
                out.append(s.call(f"DELETE /{kind}/{{id}} (in use)", "DELETE", f"/{kind}/{oid}"))
            out.append(s.call(f"DELETE /{kind}/{{id}}", "DELETE", f"/{kind}/{oid}"))
            out.append(s.call(f"DELETE /{kind}/{{id}} (again)", "DELETE", f"/{kind}/{oid}"))
    return out


def test_secrets_and_configs(pair: Pair) -> None:
    pair.check(_secrets_configs)


def _networks(s: Side) -> list[Answer]:
    out: list[Answer] = []
    a, nid = _id(s, "POST", "/networks/create", {"Name": "dnet", "Driver": "overlay", "Attachable": True,
                                                  "Labels": {"n": "1"}, "Options": {"com.docker.network.mtu": "1400"}})
    out.append(a)
    with cleanup(s, f"/networks/{nid}"):
        # The allocator fills IPAM and the VXLAN ID after the create answered (asynchronous on both sides).
        out.append(settled(s, "GET /networks/{id}", f"/networks/{nid}",
                           lambda b: bool(b.get("IPAM", {}).get("Config"))))
        out.append(s.call("GET /networks/{name}", "GET", "/networks/dnet"))
        out.append(s.call("GET /networks/{id}?verbose", "GET", f"/networks/{nid}", query={"verbose": "true"}))
        out.append(s.call("GET /networks/{id}?scope=swarm", "GET", f"/networks/{nid}", query={"scope": "swarm"}))
        out.append(s.call("GET /networks/{id}?scope=local", "GET", f"/networks/{nid}", query={"scope": "local"}))
        out.append(s.call("GET /networks/ingress", "GET", "/networks/ingress"))
        out.append(s.call("GET /networks/host?scope=global", "GET", "/networks/host", query={"scope": "global"}))
        out.append(s.call("GET /networks/host?scope=swarm", "GET", "/networks/host", query={"scope": "swarm"}))
        out.append(s.call("GET /networks?filters=driver", "GET", "/networks",
                          query={"filters": {"driver": ["overlay"]}}))
        out.append(s.call("GET /networks?filters=scope", "GET", "/networks", query={"filters": {"scope": ["swarm"]}}))
        out.append(s.call("GET /networks?filters=label", "GET", "/networks", query={"filters": {"label": ["n=1"]}}))
        out.append(s.call("GET /networks/missing", "GET", "/networks/missing"))
        out.append(s.call("POST /networks/create (duplicate)", "POST", "/networks/create",
                          {"Name": "dnet", "Driver": "overlay"}))
        out.append(s.call("POST /networks/create (bad subnet)", "POST", "/networks/create", {
            "Name": "dnet2", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "10.99.0.0/33"}]}}))
        out.append(s.call("POST /networks/create (empty subnet)", "POST", "/networks/create", {
            "Name": "dnet3", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": ""}]}}))
        out.append(s.call("POST /networks/create (ingress twice)", "POST", "/networks/create",
                          {"Name": "ingress2", "Driver": "overlay", "Ingress": True}))
        a, uid = _id(s, "POST", "/networks/create", {"Name": "dnet-user", "Driver": "overlay", "IPAM": {
            "Config": [{"Subnet": "10.199.0.0/24", "Gateway": "10.199.0.1"}]}})
        out.append(a)
        with cleanup(s, f"/networks/{uid}"):
            out.append(settled(s, "GET /networks/{user subnet}", f"/networks/{uid}",
                               lambda b: bool(b.get("Options"))))
        a, sid = _id(s, "POST", "/services/create", _spec("use-net", TaskTemplate={
            "ContainerSpec": {"Image": TEST_IMAGE}, "Networks": [{"Target": "dnet", "Aliases": ["x"]}]}))
        out.append(settled(s, "GET /services/{on network}", f"/services/{sid}",
                           lambda b: bool(b.get("Endpoint", {}).get("VirtualIPs"))))
        with cleanup(s, f"/services/{sid}"):
            out.append(s.call("DELETE /networks/{id} (in use)", "DELETE", f"/networks/{nid}"))
            # Prune on a manager: the swarm's unused networks go too (not one a service uses, nor ingress).
            for name, labels in (("dprune-a", {"prune": "yes"}), ("dprune-b", {"prune": "no"})):
                _id(s, "POST", "/networks/create", {"Name": name, "Driver": "overlay", "Labels": labels})
            out.append(s.call("POST /networks/prune (label)", "POST", "/networks/prune",
                              query={"filters": {"label": ["prune=yes"]}}))
            out.append(s.call("POST /networks/prune (label!=)", "POST", "/networks/prune",
                              query={"filters": {"label!": ["prune=yes"], "label": ["prune"]}}))
            out.append(s.call("POST /networks/prune (bad filter)", "POST", "/networks/prune",
                              query={"filters": {"colour": ["x"]}}))
            out.append(s.call("GET /networks (after prune)", "GET", "/networks",
                              query={"filters": {"label": ["prune"]}}))
        out.append(s.call("DELETE /networks/ingress (no service)", "DELETE", "/networks/missing-ingress"))
        out.append(s.call("DELETE /networks/{id}", "DELETE", f"/networks/{nid}"))
        out.append(s.call("DELETE /networks/{id} (again)", "DELETE", f"/networks/{nid}"))
    return out


def test_overlay_networks(pair: Pair) -> None:
    pair.check(_networks)


def _plugins(s: Side) -> list[Answer]:
    return [
        s.call("GET /plugins", "GET", "/plugins"),
        s.call("GET /plugins?filters=capability", "GET", "/plugins",
               query={"filters": {"capability": ["networkdriver"]}}),
        s.call("GET /plugins/missing/json", "GET", "/plugins/missing:latest/json"),
        s.call("POST /services/create (plugin runtime)", "POST", "/services/create", {
            "Name": "dplug", "TaskTemplate": {"Runtime": "plugin", "PluginSpec": {
                "Name": "example/plugin", "Remote": "example/plugin:latest"}}}),
        s.call("POST /services/create (network plugin driver)", "POST", "/networks/create",
               {"Name": "dplugnet", "Driver": "example/netplugin", "CheckDuplicate": True}),
    ]


def test_plugins(pair: Pair) -> None:
    pair.check(_plugins)


def _events(s: Side) -> list[Answer]:
    since = time.time()
    _, sid = _id(s, "POST", "/services/create", _spec("devents"))
    s.request("POST", "/secrets/create", {"Name": "devents", "Data": base64.b64encode(b"x").decode()})
    s.request("DELETE", "/secrets/devents")
    s.request("DELETE", f"/services/{sid}")
    until = time.time() + 1
    out = []
    for f in ({"type": ["service"]}, {"type": ["secret"]}, {"type": ["service", "secret", "config", "node"]},
              {"service": ["devents"]}):
        status, evs, _ = s.request("GET", "/events", query={"since": f"{since:.3f}", "until": f"{until:.3f}",
                                                            "filters": f}, timeout=15)
        # The sequence of what happened, in order; the JSON lines as a list.
        seq = [{k: e.get(k) for k in ("Type", "Action", "scope")} | {"name": e.get("Actor", {}).get(
            "Attributes", {}).get("name")} for e in (evs if isinstance(evs, list) else [evs])] \
            if status == 200 else evs
        out.append(Answer(f"GET /events?filters={','.join(next(iter(f.values())))}", status, seq, ordered=True))
    a = s.call("GET /events (until before since)", "GET", "/events",
               query={"since": f"{until:.0f}", "until": f"{since - 10:.0f}"})
    if isinstance(a.body, dict) and isinstance(a.body.get("message"), str):  # each side's own clock readings
        a.body["message"] = re.sub(r"\(\d+\)", "(<time>)", a.body["message"])
    out.append(a)
    out.append(s.call("GET /events (bad filter)", "GET", "/events", query={
        "filters": {"type": ["nothing"]}, "since": f"{since:.0f}", "until": f"{until:.0f}"}, timeout=15))
    out.append(s.call("GET /events (bad since)", "GET", "/events", query={"since": "yesterday", "until": "1"},
                      timeout=15))
    return out


def test_events_bounded(pair: Pair) -> None:
    pair.check(_events)


def _tasks(s: Side) -> list[Answer]:
    """The task endpoints, on a service with one running replica."""
    _, sid = _id(s, "POST", "/services/create", _spec("dtasks", Mode={"Replicated": {"Replicas": 1}}))
    with cleanup(s, f"/services/{sid}"):
        running = settled(s, "GET /tasks?filters=service", "/tasks", lambda b: any(
            t["Status"]["State"] == "running" for t in b), query={"filters": {"service": ["dtasks"]}}, timeout=60)
        out = [running]
        tid = next(t["ID"] for t in running.body if t["Status"]["State"] == "running")
        out.append(s.call("GET /tasks/{id}", "GET", f"/tasks/{tid}"))
        out.append(s.call("GET /tasks/{prefix}", "GET", f"/tasks/{tid[:6]}"))
        out.append(s.call("GET /tasks/missing", "GET", "/tasks/missing"))
        for label, f in (("desired-state", {"service": ["dtasks"], "desired-state": ["running"]}),
                         ("desired-state=bogus", {"desired-state": ["bogus"]}),
                         ("name", {"name": ["dtasks.1"]}), ("id", {"id": [tid]}),
                         ("node", {"service": ["dtasks"], "node": ["self"]}),
                         ("label", {"service": ["dtasks"], "label": ["diff=yes"]}),
                         ("unknown", {"colour": ["x"]})):
            out.append(s.call(f"GET /tasks?filters={label}", "GET", "/tasks", query={"filters": f}))
        out.append(s.call("GET /tasks/{id}/logs (no stream chosen)", "GET", f"/tasks/{tid}/logs"))
        out.append(s.call("GET /tasks/missing/logs", "GET", "/tasks/missing/logs", query={"stdout": "1"}))
        return out


def test_tasks(pair: Pair) -> None:
    pair.check(_tasks)


def _connect(s: Side) -> list[Answer]:
    """`network connect`/`disconnect` of containers on the node's engine with swarm overlays. A created one
    (`--network none`): an attachable overlay (twice, then disconnect twice) and one that is not attachable,
    then its start (which has to attach it). A created one on the default bridge: connect, start, disconnect
    while it runs."""
    out: list[Answer] = []
    _id(s, "POST", "/networks/create", {"Name": "dconn-att", "Driver": "overlay", "Attachable": True})
    _id(s, "POST", "/networks/create", {"Name": "dconn-closed", "Driver": "overlay"})
    try:
        s.cli("create", "--name", "dconn-ctr", "--network", "none", TEST_IMAGE, "sleep", "60")
        try:
            for label, net in (("attachable", "dconn-att"), ("again", "dconn-att"), ("not attachable",
                                                                                     "dconn-closed")):
                out.append(s.call(f"POST /networks/{{id}}/connect ({label})", "POST", f"/networks/{net}/connect",
                                  {"Container": "dconn-ctr"}))
            out.append(s.call("POST /networks/{id}/connect (no container)", "POST", "/networks/dconn-att/connect",
                              {"Container": "dconn-missing"}))
            for label in ("connected", "again"):
                out.append(s.call(f"POST /networks/{{id}}/disconnect ({label})", "POST",
                                  "/networks/dconn-att/disconnect", {"Container": "dconn-ctr"}))
            out.append(s.call("POST /containers/{id}/start (not attachable)", "POST",
                              "/containers/dconn-ctr/start"))
            s.cli("create", "--name", "dconn-run", TEST_IMAGE, "sleep", "60")
            out.append(s.call("POST /networks/{id}/connect (created on bridge)", "POST",
                              "/networks/dconn-att/connect", {"Container": "dconn-run"}))
            out.append(s.call("POST /containers/{id}/start (attaches)", "POST", "/containers/dconn-run/start"))
            out.append(s.call("POST /networks/{id}/disconnect (running)", "POST", "/networks/dconn-att/disconnect",
                              {"Container": "dconn-run"}))
            out.append(s.call("POST /networks/{id}/disconnect (running, again)", "POST",
                              "/networks/dconn-att/disconnect", {"Container": "dconn-run"}))
        finally:
            s.cli("rm", "-f", "dconn-ctr", "dconn-run")
    finally:
        for net in ("dconn-att", "dconn-closed"):
            s.request("DELETE", f"/networks/{net}")
    return out


def test_network_connect(pair: Pair) -> None:
    pair.check(_connect)
