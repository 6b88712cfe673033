"""Differences from dockerd the differential suite (tests/differential/) found, closed in Shoal: the parts whose
logic is more than a message, checked without a daemon. The suite itself is the end-to-end check."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shoal.engineapi.convert import secret_spec_from_wire, service_spec_from_wire, service_to_wire
from shoal.engineapi.routes.common import go_bool
from shoal.errors import InvalidArgument, ShoalError
from shoal.model.objects import SECOND, Endpoint, EndpointSpec, RestartPolicy, Service, VirtualIP
from shoal.testing.fakeexec import FakeBehavior
from shoal.testing.sim import SimCluster, on_service, service_spec


def test_endpoint_spec_is_empty_when_the_service_spec_has_none() -> None:
    # A service on a network created without EndpointSpec: swarmkit's Spec.Endpoint is nil, so the allocator
    # has no spec to copy; its VIPs are shown, Endpoint.Spec is {}.
    vips = (VirtualIP(network_id="n1", addr="10.0.0.2/24"),)
    svc = Service(id="x", spec=service_spec("s"), endpoint=Endpoint(spec=EndpointSpec(), virtual_ips=vips))
    assert svc.spec.endpoint_spec is None
    assert service_to_wire(svc)["Endpoint"] == {"Spec": {}, "VirtualIPs": [{"NetworkID": "n1",
                                                                           "Addr": "10.0.0.2/24"}]}
    sent = replace(svc, spec=replace(svc.spec, endpoint_spec=EndpointSpec()))
    assert service_to_wire(sent)["Endpoint"]["Spec"] == {"Mode": "vip"}


def _privileges(version: str, privileges: dict[str, object]) -> object:
    spec = service_spec_from_wire({"Name": "p", "TaskTemplate": {"ContainerSpec": {
        "Image": "busybox", "Privileges": privileges}}}, api_version=version)
    return service_to_wire(Service(id="x", spec=spec))["Spec"]["TaskTemplate"]["ContainerSpec"]["Privileges"]


def test_privileges_fields_of_1_44() -> None:
    # The CLI 28 sends NoNewPrivileges false: omitempty, not shown. Below 1.44 dockerd's adjustForAPIVersion
    # drops Seccomp, AppArmor and NoNewPrivileges; from 1.44 they are kept.
    assert _privileges("1.41", {"NoNewPrivileges": False}) == {"CredentialSpec": None, "SELinuxContext": None}
    assert _privileges("1.41", {"NoNewPrivileges": True, "AppArmor": {"Mode": "default"}}) == {
        "CredentialSpec": None, "SELinuxContext": None}
    assert _privileges("1.44", {"NoNewPrivileges": True, "Seccomp": None}) == {
        "CredentialSpec": None, "SELinuxContext": None, "NoNewPrivileges": True}


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("t", True), ("TRUE", True), ("True", True),
                                            ("0", False), ("F", False), ("false", False), ("yes", None),
                                            ("tRuE", None), ("", None), ("maybe", None)])
def test_go_bool_is_strconv_parse_bool(raw: str, value: bool | None) -> None:
    assert go_bool(raw) is value


def test_a_secret_update_may_carry_labels_only() -> None:
    # What GET returns carries no Data: an update made of it changes the labels; a create needs data.
    spec = secret_spec_from_wire({"Name": "s", "Labels": {"k": "v2"}}, update=True)
    assert spec.data == b"" and spec.annotations.labels == {"k": "v2"}
    with pytest.raises(InvalidArgument, match="secret data must be larger than 0"):
        secret_spec_from_wire({"Name": "s", "Labels": {"k": "v2"}})


@pytest.mark.parametrize(("addr", "ok"), [("bogus:x:y", False), ("127.0.0.1:2377", True), ("[::1]:2377", True),
                                          ("host", True), ("[::1]", False), ("::1", False), ("a]:1", False)])
def test_listen_address_is_split_as_go_does(addr: str, ok: bool) -> None:
    # dockerd's resolveListenAddr: net.SplitHostPort, else "could not parse listen address ...".
    from shoal.node.swarm import _splittable

    assert _splittable(addr) is ok


def test_swarm_networks_without_local_endpoints_show_null() -> None:
    from shoal.engineapi.convert import network_to_wire
    from shoal.model.objects import Annotations, Network, NetworkSpec

    plain = network_to_wire(Network(id="x", spec=NetworkSpec(annotations=Annotations(name="ov"))), listed=True)
    assert plain["Containers"] is None and plain["Labels"] is None
    ingress = Network(id="i", spec=NetworkSpec(annotations=Annotations(name="ingress"), ingress=True))
    assert network_to_wire(ingress)["Containers"] == {} and network_to_wire(ingress, listed=True)["Labels"] is None


# --- ?filters= as dockerd 20.10's filters.FromJSON reads it (json.Unmarshal, then the legacy list form) --------


def _filters(raw: str, accepted: frozenset[str] = frozenset({"role", "name"})) -> dict[str, list[str]]:
    from urllib.parse import quote

    from aiohttp.test_utils import make_mocked_request

    from shoal.engineapi.routes.common import parse_filters

    return parse_filters(make_mocked_request("GET", f"/nodes?filters={quote(raw)}"), set(accepted))


@pytest.mark.parametrize(("raw", "said"), [
    ("{", "unexpected end of JSON input"),  # json.Unmarshal's, where the decoder says "unexpected EOF"
    ('{"role":', "unexpected end of JSON input"),
    ("   ", "unexpected end of JSON input"),
    ("{x}", "invalid character 'x' looking for beginning of object key string"),
    ("{} x", "invalid character 'x' after top-level value"),
    ("[1]", "json: cannot unmarshal array into Go value of type map[string]map[string]bool"),
    ("7", "json: cannot unmarshal number into Go value of type map[string]map[string]bool"),
    ('{"role":"manager"}', "json: cannot unmarshal string into Go value of type map[string]bool"),
    ('{"role":{"manager":1}}', "json: cannot unmarshal number into Go value of type bool"),
    # neither form: the error of the first (the map-of-sets) is the one relayed
    ('{"role":["manager", 1]}', "json: cannot unmarshal array into Go value of type map[string]bool"),
    ('{"role":{"manager":true},"name":["x"]}', "json: cannot unmarshal array into Go value of type map[string]bool"),
    ('{"colour":["red"]}', "invalid filter 'colour'"),  # read first, then validated
])
def test_filters_that_do_not_read_get_go_messages(raw: str, said: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        _filters(raw)
    assert e.value.message == said


@pytest.mark.parametrize(("raw", "read"), [
    ('{"role":{"manager":true,"worker":false}}', {"role": ["manager"]}),
    ('{"role":["manager"]}', {"role": ["manager"]}),  # the legacy form
    ('{"role":null,"name":[]}', {"role": [], "name": []}),
    ("null", {}),
    (' {"role":{"worker":true}} ', {"role": ["worker"]}),
])
def test_filters_in_either_form(raw: str, read: dict[str, list[str]]) -> None:
    assert _filters(raw) == read


# --- GET /events: dockerd's event filter ------------------------------------------------------------------------


def _event(kind: str, name: str, action: str = "create", oid: str = "abcdef", **attrs: str) -> dict[str, object]:
    return {"Type": kind, "Action": action, "scope": "swarm" if kind != "container" else "local",
            "Actor": {"ID": oid, "Attributes": {"name": name, **attrs}}}


def test_an_object_filter_matches_any_kind_by_id_or_name_prefix() -> None:
    from shoal.engineapi.routes.events import event_matches

    # dockerd: `service=web` is a prefix of the actor's ID or name, whatever the event's type
    flt = {"service": ["web"]}
    assert event_matches(_event("service", "web"), flt)
    assert event_matches(_event("secret", "web"), flt)
    assert event_matches(_event("container", "web.1.x"), flt)
    assert event_matches(_event("service", "other", oid="webfff"), flt)
    assert not event_matches(_event("service", "api"), flt)
    both = {"service": ["web"], "type": ["service"]}
    assert event_matches(_event("service", "web"), both) and not event_matches(_event("secret", "web"), both)
    assert not event_matches(_event("service", "web"), {"service": ["web"], "node": ["n1"]})
    assert not event_matches(_event("service", "web"), {"scope": ["local"]})


def test_event_action_image_and_label_filters() -> None:
    from shoal.engineapi.routes.events import event_matches

    assert not event_matches(_event("service", "web", "update"), {"event": ["create"]})
    # health_status and exec_* are matched as prefixes, the others exactly
    assert event_matches(_event("container", "c", "exec_start: sh"), {"event": ["exec_start"]})
    assert not event_matches(_event("container", "c", "exec_start: sh"), {"event": ["exec"]})
    run = _event("container", "c", "start", image="busybox:latest")
    assert event_matches(run, {"image": ["busybox"]}) and event_matches(run, {"image": ["busybox:latest"]})
    assert not event_matches(run, {"image": ["alpine"]}) and not event_matches(_event("service", "web"),
                                                                                 {"image": ["busybox"]})
    labelled = _event("service", "web", tier="front")
    assert event_matches(labelled, {"label": ["tier=front"]}) and event_matches(labelled, {"label": ["tier"]})
    assert not event_matches(labelled, {"label": ["tier=back"]})


# --- networks, services, swarm -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("subnet", "net"), [("10.99.0.0/33", None), ("10.99.0.0", None),
                                             ("10.99.0.0/255.255.0.0", None), ("10.99.0.0/+8", None),
                                             ("10.99.0.1/16", "10.99.0.0/16"), ("fd00::/64", "fd00::/64")])
def test_subnets_are_read_as_go_net_parse_cidr(subnet: str, net: str | None) -> None:
    from shoal.engineapi.convert.cluster import _go_cidr

    got = _go_cidr(subnet)
    assert (None if got is None else str(got)) == net


def test_a_bad_subnet_is_dockerds_untyped_error() -> None:
    from shoal.engineapi.convert import network_create_from_wire

    with pytest.raises(ShoalError) as e:
        network_create_from_wire({"Name": "n", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "10.99.0.0/33"}]}})
    assert e.value.status == 500
    assert e.value.message == "Invalid subnet 10.99.0.0/33 : invalid CIDR address: 10.99.0.0/33"


def test_update_takes_the_heartbeat_period_as_sent_init_merges_it() -> None:
    from shoal.engineapi.convert import swarm_spec_from_wire, swarm_spec_to_wire
    from shoal.model.objects import SwarmSpec

    cur = SwarmSpec()
    updated = swarm_spec_from_wire({"Dispatcher": {"HeartbeatPeriod": 0}}, cur)
    assert updated.heartbeat_period == 0 and swarm_spec_to_wire(updated)["Dispatcher"] == {}
    assert swarm_spec_from_wire({"Dispatcher": {"HeartbeatPeriod": 7 * SECOND}}, cur).heartbeat_period == 7 * SECOND
    assert swarm_spec_from_wire({"Dispatcher": {"HeartbeatPeriod": 0}}).heartbeat_period == 5 * SECOND
    limit = swarm_spec_from_wire({"Orchestration": {"TaskHistoryRetentionLimit": -1}}, cur)
    assert swarm_spec_to_wire(limit)["Orchestration"] == {"TaskHistoryRetentionLimit": -1}


async def test_a_negative_history_limit_keeps_every_task_and_no_period_is_the_default() -> None:
    # dockerd 20.10 accepts TaskHistoryRetentionLimit -1 (swarmkit's task reaper: a negative limit never cleans
    # up) and HeartbeatPeriod 0 (no period: the dispatcher's default); a node stays ready by its heartbeats.
    async with SimCluster.started(nodes=1) as sim:
        c = sim.view().cluster()
        assert c is not None
        await sim.api.update_swarm(c.meta.version, replace(c.spec, task_history_retention_limit=-1, heartbeat_period=0),
                                   False, False, False, lambda _: "SWMTKN-x")
        sim.behave(on_service("s", FakeBehavior(exit_code=3, run_for=1.0)))
        svc = await sim.create_service(service_spec("s", restart=RestartPolicy(condition="on-failure",
                                                                               delay=1 * SECOND)))
        await sim.wait_until(lambda: len(sim.tasks(svc.id)) >= 9, what="nine attempts, none reaped")
        await sim.run_for(60)
        assert [n.status.state for n in sim.view().nodes()] == ["ready"]
        assert len(sim.tasks(svc.id)) >= 9


async def test_a_service_on_a_missing_network_is_dockerds_untyped_error() -> None:
    from shoal.model.objects import NetworkAttachmentConfig

    async with SimCluster.started(nodes=1) as sim:
        spec = service_spec("s")
        spec = replace(spec, task_template=replace(spec.task_template,
                                                   networks=(NetworkAttachmentConfig(target="nonet"),)))
        with pytest.raises(ShoalError) as e:
            await sim.create_service(spec)
        assert (type(e.value), e.value.status, e.value.message) == (ShoalError, 500, "network nonet not found")


def test_update_lists_the_external_cas_sent_init_appends_them() -> None:
    from shoal.engineapi.convert import swarm_spec_from_wire, swarm_spec_to_wire
    from shoal.engineapi.convert.cluster import init_spec_onto
    from shoal.model.objects import SwarmSpec

    ext = [{"Protocol": "cfssl", "URL": "https://ca.example:8888/sign"}]
    listed = swarm_spec_from_wire({"CAConfig": {"ExternalCAs": ext}}, SwarmSpec())
    # a spec read from GET /swarm and sent back unchanged lists each external CA once
    again = swarm_spec_from_wire(swarm_spec_to_wire(listed), listed)
    assert [e.url for e in again.ca_config.external_cas] == ["https://ca.example:8888/sign"]
    assert swarm_spec_from_wire({"CAConfig": {"ExternalCAs": []}}, again).ca_config.external_cas == ()
    # init (a kept swarm's ForceNewCluster) merges as MergeSwarmSpecToGRPC: appended to the cluster's
    other = [{"Protocol": "cfssl", "URL": "https://other.example/sign"}]
    merged = init_spec_onto({"ListenAddr": "127.0.0.1:2377", "Spec": {"CAConfig": {"ExternalCAs": other}}}, again)
    assert [e.url for e in merged.ca_config.external_cas] == ["https://ca.example:8888/sign",
                                                              "https://other.example/sign"]
