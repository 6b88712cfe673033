"""API versions on Shoal: up to the newest version ../shared/engine-api/swagger.yaml describes, with each version's
rules. dockerd 20.10 speaks only up to 1.41, so above it Shoal is checked against the swagger's schemas and the
version history (moby's docs/api/version-history.md) instead of against a live dockerd."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.differential.harness import Pair, Side

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

_SWAGGER = Path(__file__).resolve().parents[2] / ".." / "shared" / "engine-api" / "swagger.yaml"
_VENDORED = Path(__file__).resolve().parents[1] / "fixtures" / "engine-api" / "swagger.yaml"
SWAGGER = _SWAGGER if _SWAGGER.exists() else _VENDORED
_spec_cache: dict[str, Any] = {}


def swagger() -> dict[str, Any]:
    if not _spec_cache:
        _spec_cache.update(yaml.safe_load(SWAGGER.read_text()))
    return _spec_cache


def newest() -> str:
    return str(swagger()["info"]["version"])


VERSIONS = ["1.41", "1.47", "newest"]


def _v(v: str) -> str:
    return newest() if v == "newest" else v


def _no_nulls(v: Any) -> Any:
    """Go encodes a nil map or slice as null where the swagger says object/array (dockerd does the same)."""
    if isinstance(v, dict):
        return {k: _no_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_no_nulls(x) for x in v]
    return v


def _validate(body: Any, definition: str) -> None:
    """Validate against a swagger definition (OpenAPI 2.0 schemas are JSON Schema draft 4 plus x- keys)."""
    body = _no_nulls(body)
    doc = swagger()
    schema = {"$ref": f"#/definitions/{definition}", "definitions": doc["definitions"]}
    jsonschema.Draft4Validator(schema).validate(body)


def test_ping_and_version_announce_the_newest(pair: Pair) -> None:
    s = pair.shoal
    status, _, headers = s.request("GET", "/_ping", version="")
    assert status == 200 and headers["api-version"] == newest()
    status, body, _ = s.request("GET", "/version", version="")
    assert (body["ApiVersion"], body["MinAPIVersion"]) == (newest(), "1.24")
    # The stock CLI negotiates the lower of its own (1.50 for docker 28) and the daemon's.
    env = {k: v for k, v in s.env().items() if k != "DOCKER_API_VERSION"}
    r = subprocess.run(["docker", "version", "--format", "{{.Client.APIVersion}} {{.Server.APIVersion}}"],
                       env=env, capture_output=True, text=True, timeout=30)
    client, server = r.stdout.split()
    assert server == newest() and float(client) >= 1.50


def test_too_new_and_too_old(pair: Pair) -> None:
    major, minor = newest().split(".")
    too_new = f"{major}.{int(minor) + 1}"
    status, body, _ = pair.shoal.request("GET", "/swarm", version=too_new)
    assert (status, body) == (400, {"message": f"client version {too_new} is too new. Maximum supported API "
                                               f"version is {newest()}"})
    status, body, _ = pair.shoal.request("GET", "/swarm", version="1.23")
    assert status == 400 and body["message"].startswith("client version 1.23 is too old")
    # And the same message shape as dockerd 20.10 gives above its own maximum.
    status, ref, _ = pair.dockerd.request("GET", "/swarm", version="1.42")
    assert status == 400 and ref["message"].startswith("client version 1.42 is too new. Maximum supported API")


@pytest.mark.parametrize("version", VERSIONS)
def test_answers_follow_the_swagger_schema(pair: Pair, version: str) -> None:
    s: Side = pair.shoal
    v = _v(version)
    for path, definition, many in (("/swarm", "Swarm", False), ("/nodes", "Node", True),
                                   ("/services", "Service", True), ("/tasks", "Task", True),
                                   ("/secrets", "Secret", True), ("/configs", "Config", True)):
        status, body, _ = s.request("GET", path, version=v)
        assert status == 200, (path, body)
        for item in (body if many else [body]):
            _validate(item, definition)
    status, err, _ = s.request("GET", "/services/missing", version=v)
    assert status == 404
    _validate(err, "ErrorResponse")


@pytest.mark.parametrize("version", VERSIONS)
def test_version_dependent_fields(pair: Pair, version: str) -> None:
    """Fields dockerd adds or drops by version: an overlay network's EnableIPv4 (1.47), a service log stream's
    Content-Type (1.42), a job task's JobIteration (1.41, present in all three)."""
    s = pair.shoal
    v = _v(version)
    status, net, _ = s.request("POST", "/networks/create", {"Name": f"dver{v.replace('.', '')}", "Driver": "overlay"},
                               version=v)
    assert status == 201, net
    try:
        _, got, _ = s.request("GET", f"/networks/{net['Id']}", version=v)
        assert ("EnableIPv4" in got) == (v >= "1.47"), got
        _validate(got, "Network")
    finally:
        s.request("DELETE", f"/networks/{net['Id']}", version=v)
    status, svc, _ = s.request("POST", "/services/create", {
        "Name": f"dverlog{v.replace('.', '')}", "TaskTemplate": {"ContainerSpec": {"Image": "shoal-test/busybox:latest",
                                                                                  "Command": ["true"]}},
        "Mode": {"Replicated": {"Replicas": 0}}}, version=v)
    assert status == 201, svc
    try:
        status, _, headers = s.request("GET", f"/services/{svc['ID']}/logs", query={"stdout": "1"}, version=v,
                                       binary=True, timeout=15)
        assert status == 200
        if v < "1.42":
            assert "content-type" not in headers, headers
        else:
            assert headers.get("content-type") == "application/vnd.docker.multiplexed-stream", headers
    finally:
        s.request("DELETE", f"/services/{svc['ID']}", version=v)
