"""The web view of a `shoal daemon --executor docker` node on the private dockerd: tasks as containers appear
running, their logs (read from the engine) stream to the page, and a scale from the view reaches the engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.shoal_docker import ShoalDocker, swarm_node
from tests.support.managers import free_port
from tests.support.wait import wait_until
from tests.support.web import CSRF, WebClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def web_node(dockerd: str, test_image: str) -> Iterator[tuple[ShoalDocker, WebClient]]:
    port = free_port()
    with swarm_node(dockerd, "sw", "node1", extra_args=("--web-addr", f"127.0.0.1:{port}")) as n:
        c = WebClient(f"http://127.0.0.1:{port}")
        assert c.login((n.data_dir / "web-token").read_text().strip()) == 302
        yield n, c


def _service(c: WebClient, name: str) -> dict[str, Any]:
    status, _, body = c.get("/api/state")
    assert status == 200, body
    return next(s for s in json.loads(body)["services"] if s["name"] == name)


def test_containers_logs_and_a_scale_in_the_web_view(web_node: tuple[ShoalDocker, WebClient],
                                                     test_image: str) -> None:
    node, c = web_node
    sid = node.docker("service", "create", "-d", "--no-resolve-image", "--name", "webdocker", "--replicas", "1",
                      "--stop-grace-period", "1s", test_image, "sh", "-c",
                      "echo hello-from-a-container; exec sleep 600").stdout.strip()
    wait_until(lambda: _service(c, "webdocker")["running"] == 1, 60, what="one running container in the view")
    status, head = c.stream_head(f"/api/services/{sid}/logs?follow=0", b"event: end")
    assert status == 200
    assert b"hello-from-a-container" in head and b'"task":"' in head
    status, _, body = c.post(f"/api/services/{sid}/scale", {"replicas": 2}, headers=CSRF)
    assert status == 200, body
    wait_until(lambda: _service(c, "webdocker")["running"] == 2, 60, what="two running containers in the view")
    containers = node.client().containers.list(filters={"label": f"com.docker.swarm.service.id={sid}"})
    assert len(containers) == 2
