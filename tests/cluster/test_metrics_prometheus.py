"""`shoal daemon --metrics-addr` scraped by a real Prometheus (Debian's package, started here): a service made
with the stock docker CLI shows its replicas through Prometheus's query API."""

from __future__ import annotations

import re
import shutil
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.managers import free_port
from tests.support.prometheus import Prometheus, PrometheusUnavailable, ensure_prometheus
from tests.support.shoal_node import NodeError, ShoalNode
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ALERTS = Path(__file__).resolve().parents[2] / "docs" / "shoal-alerts.yml"


@pytest.fixture
def metrics_node(tmp_path: Path) -> Iterator[tuple[ShoalNode, str]]:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not on the PATH")
    addr = f"127.0.0.1:{free_port()}"
    node = ShoalNode(tmp_path / "node", extra_args=("--metrics-addr", addr)).start()
    try:
        node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")
        yield node, addr
    finally:
        node.stop()


@pytest.fixture
def prometheus_bin() -> str:
    try:
        return ensure_prometheus()
    except PrometheusUnavailable as e:
        pytest.skip(f"no Prometheus to scrape with: {e}")


def test_prometheus_scrapes_service_replicas(tmp_path: Path, metrics_node: tuple[ShoalNode, str],
                                             prometheus_bin: str) -> None:
    node, addr = metrics_node
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        assert r.status == 200
        assert b"swarm_node_manager 1.0" in r.read()
    node.docker("service", "create", "--detach", "--name", "web", "--replicas", "2", "busybox", "sleep", "600")
    # Requests by the docker CLI, labelled with the route's template (never the service's ID or name).
    node.docker("service", "inspect", "web")
    prom = Prometheus(tmp_path / "prometheus", [addr], prometheus_bin, rule_files=(ALERTS,)).start()
    try:
        wait_until(lambda: prom.targets_health() == ["up"], 60, interval=0.5, what="the daemon's target up")
        wait_until(lambda: prom.value('shoal_service_replicas_running{service="web"}') == 2, 90, interval=0.5,
                   what="Prometheus to see 2 running replicas of web")
        assert prom.value('shoal_service_replicas_desired{service="web",mode="replicated"}') == 2
        assert prom.value("swarm_manager_leader") == 1
        assert prom.value("swarm_node_manager") == 1
        assert prom.value('swarm_manager_nodes{state="ready"}') == 1
        assert prom.value('swarm_manager_tasks_total{state="running"}') == 2
        assert prom.value('sum(shoal_node_tasks{state="running"})') == 2
        assert prom.value("shoal_raft_apply_lag") is not None
        assert prom.value("shoal_raft_has_leader") == 1
        create = prom.value('sum(shoal_engine_api_request_duration_seconds_count'
                            '{method="POST",route="/services/create",status="201"})')
        assert create == 1
        routes = {s["metric"]["route"] for s in prom.query("shoal_engine_api_request_duration_seconds_count")}
        assert "/services/{id}" in routes
        assert all("web" not in r for r in routes)
        # The transaction histogram fills as the service's writes commit.
        tx = prom.value("swarm_raft_transaction_latency_seconds_count")
        assert tx is not None and tx > 0
        # Each replica's first running report (the manager's own agent reports to its in-process dispatcher).
        wait_until(lambda: prom.value("swarm_dispatcher_scheduling_delay_seconds_count") == 2, 30, interval=0.5,
                   what="two scheduling delays observed")
        # docs/shoal-alerts.yml loads and evaluates without errors, and a healthy swarm fires none of it.
        def quiet_rules() -> list[dict[str, object]] | None:
            rules = prom.rules()
            bad = [(x["name"], x["health"], x["state"]) for x in rules if x["health"] != "ok" or
                   x["state"] != "inactive"]
            assert not bad, bad
            return rules or None

        rules = wait_until(quiet_rules, 30, interval=0.5, what="the alerting rules evaluated, none pending")
        assert len(rules) == 16
    finally:
        prom.stop()


def test_alert_rules_name_only_exposed_metrics(metrics_node: tuple[ShoalNode, str]) -> None:
    """Every shoal_/swarm_ series docs/shoal-alerts.yml and docs/metrics.md name is one a manager exposes."""
    node, addr = metrics_node
    node.docker("service", "create", "--detach", "--name", "web", "busybox", "sleep", "600")
    node.docker("service", "inspect", "web")
    # A scheduled service, for the cron series (they exist per scheduled service).
    node.docker("service", "create", "--detach", "--name", "tick", "--mode", "replicated-job",
                "--label", "swarm.cronjob.enable=true", "--label", "swarm.cronjob.schedule=@hourly", "busybox", "true")
    named = set(re.findall(r"\b(?:shoal|swarm)_[a-z_]+\b", ALERTS.read_text()))
    doc = (ALERTS.parent / "metrics.md").read_text().split("## Not there yet")[0]
    named |= set(re.findall(r"`((?:shoal|swarm)_[a-z_]+)", doc))
    assert len(named) > 20

    def missing() -> list[str]:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
            text = r.read().decode()
        families = list(text_string_to_metric_families(text))
        exposed = {f.name for f in families} | {s.name for f in families for s in f.samples}
        gone = sorted(named - exposed)
        assert not gone, gone  # per-task series appear once the task is placed: wait for it
        return gone

    wait_until(lambda: missing() == [], 60, interval=0.5, what="every named series exposed")


def test_busy_metrics_addr_stops_the_daemon_before_it_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        node = ShoalNode(tmp_path / "node", extra_args=("--metrics-addr", f"127.0.0.1:{port}"))
        with pytest.raises(NodeError, match="exited with 1") as e:
            node.start()
    assert "address already in use" in str(e.value).lower()
    assert not node.ready_file.exists()
