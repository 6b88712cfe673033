"""Fixtures for cluster tests: real `shoal daemon` processes with the process executor (no Docker Engine).

- `shoal_inactive`: a fresh node, not in a swarm (function scope).
- `shoal_node`: a fresh node on which `docker swarm init` ran (function scope).
- `shoal_module_node`: one swarm-inited node shared by a test module (tests using it must not interfere).
- `cluster`: a started `tests.support.workers.Cluster`, one drained manager to which `cluster.add_worker(name)`
  joins workers (function scope).
Temp paths come from pytest's tmp_path factories, so xdist workers never share a node.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.managers import free_port
from tests.support.shoal_node import ShoalNode
from tests.support.workers import Cluster


def _require_cli() -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not on the PATH")


def _start(workdir: Path, init: bool) -> ShoalNode:
    _require_cli()
    node = ShoalNode(workdir).start()
    if init:
        try:
            node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")
        except BaseException:
            node.stop()
            raise
    return node


@pytest.fixture
def shoal_inactive(tmp_path: Path) -> Iterator[ShoalNode]:
    node = _start(tmp_path / "node", init=False)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def shoal_node(tmp_path: Path) -> Iterator[ShoalNode]:
    node = _start(tmp_path / "node", init=True)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def shoal_module_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalNode]:
    node = _start(tmp_path_factory.mktemp("shoal-module"), init=True)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    _require_cli()
    c = Cluster(tmp_path)
    try:
        yield c.start()
    finally:
        c.stop()
