"""Bad requests get dockerd's 4xx and message, never a 500, and never reach the Raft log (one real daemon).

Every request here once answered 201 or a 500: NaN in a float field (committed, then no manager could replay its
log), NaN in an integer field, 1,000+ levels of nesting, `?version=-1`, a connect with no engine, unknown paths
and methods, a body of any size.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.support.shoal_node import ShoalNode

pytestmark = pytest.mark.slow


def service(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {"Name": "hard", "TaskTemplate": {"ContainerSpec": {
        "Image": "busybox", "Command": ["sleep", "100"]}}}
    body.update(extra)
    return body


def raw_service(fragment: str) -> bytes:
    """A service create body with `fragment` (JSON text, possibly not valid JSON) as its UpdateConfig."""
    return (b'{"Name":"hard","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}},"UpdateConfig":'
            + fragment.encode() + b"}")


@pytest.mark.parametrize(("fragment", "message"), [
    ('{"MaxFailureRatio":NaN}', "invalid JSON: invalid character 'N' looking for beginning of value"),
    ('{"MaxFailureRatio":Infinity}', "invalid JSON: invalid character 'I' looking for beginning of value"),
    ('{"MaxFailureRatio":-Infinity}', "invalid JSON: invalid character 'I' in numeric literal"),
    ('{"Parallelism":NaN}', "invalid JSON: invalid character 'N' looking for beginning of value"),
    ('{"Delay":Infinity}', "invalid JSON: invalid character 'I' looking for beginning of value"),
    ('{"MaxFailureRatio":1e400}', "invalid JSON: json: cannot unmarshal number 1e+309 into Go struct field "
                                  "UpdateConfig.UpdateConfig.MaxFailureRatio of type float32"),
])
def test_non_finite_numbers_are_refused_as_go_refuses_them(shoal_module_node: ShoalNode, fragment: str,
                                                           message: str) -> None:
    status, body = shoal_module_node.api("POST", "/v1.47/services/create", raw_service(fragment))
    assert (status, body) == (400, {"message": message})
    status, services = shoal_module_node.api("GET", "/v1.47/services")
    assert status == 200 and not [s for s in services if s["Spec"]["Name"] == "hard"]


def test_nan_in_an_integer_field_is_refused(shoal_module_node: ShoalNode) -> None:
    body = b'{"Name":"hard","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}},"Mode":{"Replicated":' \
           b'{"Replicas":NaN}}}'
    status, answer = shoal_module_node.api("POST", "/v1.47/services/create", body)
    assert status == 400 and answer["message"].startswith("invalid JSON: invalid character 'N'")


@pytest.mark.parametrize("depth", [1_000, 20_000])
def test_deep_nesting_is_refused(shoal_module_node: ShoalNode, depth: int) -> None:
    body = json.dumps(service()).encode()[:-1] + b',"Labels":{"x":' + b"[" * depth + b"]" * depth + b"}}"
    status, answer = shoal_module_node.api("POST", "/v1.47/services/create", body)
    assert (status, answer) == (400, {"message": "invalid JSON: exceeded max depth"})


@pytest.mark.parametrize(("version", "message"), [
    ("-1", "invalid service version '-1': strconv.ParseUint: parsing \"-1\": invalid syntax"),
    ("+5", "invalid service version '+5': strconv.ParseUint: parsing \"+5\": invalid syntax"),
    (str(2**64), f"invalid service version '{2**64}': strconv.ParseUint: parsing \"{2**64}\": value out of range"),
])
def test_bad_versions_are_refused(shoal_module_node: ShoalNode, version: str, message: str) -> None:
    name = "c" + version.replace("-", "m").replace("+", "p")
    status, created = shoal_module_node.api("POST", "/v1.47/configs/create",
                                            json.dumps({"Name": name, "Data": "eA=="}).encode())
    assert status == 201, created
    path = f"/v1.47/configs/{created['ID']}/update?version={version.replace('+', '%2B')}"
    status, answer = shoal_module_node.api("POST", path, json.dumps({"Name": name, "Data": "eA=="}).encode())
    assert (status, answer) == (400, {"message": message})


def test_a_version_past_2_63_is_out_of_sequence_not_a_crash(shoal_module_node: ShoalNode) -> None:
    # dockerd parses it (it is a uint64) and swarmkit finds it does not match: "update out of sequence".
    status, created = shoal_module_node.api("POST", "/v1.47/configs/create",
                                            json.dumps({"Name": "c63", "Data": "eA=="}).encode())
    assert status == 201
    status, answer = shoal_module_node.api("POST", f"/v1.47/configs/{created['ID']}/update?version={2**63 + 1}",
                                           json.dumps({"Name": "c63", "Data": "eA=="}).encode())
    assert (status, answer) == (500, {"message": "rpc error: code = Unknown desc = update out of sequence"})


@pytest.mark.parametrize("action", ["connect", "disconnect"])
def test_network_connect_without_an_engine_is_501(shoal_module_node: ShoalNode, action: str) -> None:
    status, answer = shoal_module_node.api("POST", f"/v1.47/networks/bridge/{action}",
                                           json.dumps({"Container": "x"}).encode())
    assert status == 501 and "no local container engine" in answer["message"]


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1.47/volumes/prune"), ("GET", "/v1.47/containers/json"),
    ("GET", "/v1.47/images/library/busybox/json"), ("POST", "/v1.47/plugins/a/b:1/enable"),
    ("POST", "/v1.47/containers/x/start"), ("POST", "/v1.47/containers/x/restart"),
])
def test_engine_routes_without_an_engine_are_501(shoal_module_node: ShoalNode, method: str, path: str) -> None:
    status, answer = shoal_module_node.api(method, path)
    assert status == 501 and "no local container engine" in answer["message"], (status, answer)


def test_network_prune_without_an_engine_prunes_the_swarms_networks(shoal_module_node: ShoalNode) -> None:
    """No local engine, so no local networks: a manager's prune still removes the swarm's unused networks, as
    dockerd's prunes its cluster's (the engine's part is what has no engine here)."""
    n = shoal_module_node
    status, made = n.api("POST", "/v1.47/networks/create", json.dumps(
        {"Name": "prune-me", "Driver": "overlay", "Labels": {"prune-test": "1"}}).encode())
    assert status == 201, made
    status, answer = n.api("POST", "/v1.47/networks/prune?filters=" + quote(json.dumps({"label": ["prune-test"]})))
    assert (status, answer) == (200, {"NetworksDeleted": ["prune-me"]})
    status, answer = n.api("POST", "/v1.47/networks/prune?filters=" + quote(json.dumps({"label": ["prune-test"]})))
    assert (status, answer) == (200, {"NetworksDeleted": None})


@pytest.mark.parametrize(("method", "path"), [
    ("DELETE", "/v1.47/swarm"), ("PUT", "/v1.47/services/create"), ("PATCH", "/v1.47/nodes"),
    ("GET", "/v1/services"), ("GET", "/v1/_ping"), ("GET", "/vX.Y/info"), ("GET", "/nothing/here"),
    ("GET", "/v1.47/nothing"), ("GET", "/"), ("GET", "/v1.2.3/version"), ("GET", "/versions"),
    # An engine path with a method the engine lacks is the engine's 404, not "no local engine".
    ("PUT", "/v1.47/version"), ("DELETE", "/v1.47/_ping"), ("POST", "/v1.47/info"), ("PATCH", "/v1.47/events"),
    ("PUT", "/v1.47/networks"), ("GET", "/v1.47/networks/x/connect"), ("POST", "/v1.47/plugins"),
    ("PATCH", "/v1.47/containers/x"),
])
def test_unknown_paths_and_methods_are_page_not_found(shoal_module_node: ShoalNode, method: str,
                                                      path: str) -> None:
    status, answer = shoal_module_node.api(method, path)
    assert (status, answer) == (404, {"message": "page not found"})


@pytest.mark.parametrize("path", ["/version", "/_ping", "/v1.47/version", "/info"])
def test_known_unversioned_and_versioned_paths_still_answer(shoal_module_node: ShoalNode, path: str) -> None:
    assert shoal_module_node.api("GET", path)[0] == 200


def test_a_body_past_the_limit_is_refused_before_it_is_buffered(shoal_module_node: ShoalNode) -> None:
    body = json.dumps(service(Labels={"big": "x" * (5 * 1024 * 1024)})).encode()
    status, answer = shoal_module_node.api("POST", "/v1.47/services/create", body)
    assert status == 413 and answer["message"] == f"request body is larger than {4 * 1024 * 1024} bytes"


def test_an_object_past_the_store_limit_is_refused_with_400(shoal_module_node: ShoalNode) -> None:
    body = json.dumps(service(Labels={"big": "x" * (2 * 1024 * 1024)})).encode()
    status, answer = shoal_module_node.api("POST", "/v1.47/services/create", body)
    assert status == 400 and "too large for the cluster store" in answer["message"], answer


def test_the_daemon_restarts_on_its_log_afterwards(shoal_module_node: ShoalNode) -> None:
    status, _ = shoal_module_node.api("POST", "/v1.47/services/create", json.dumps(service(Name="after")).encode())
    assert status == 201
    shoal_module_node.restart()
    status, services = shoal_module_node.api("GET", "/v1.47/services")
    assert status == 200 and [s["Spec"]["Name"] for s in services] == ["after"]
