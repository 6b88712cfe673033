"""One daemon's metrics: a registry of its own (never the library's global one), the collectors reading the node
at scrape time, the histograms fed as requests and Raft proposals happen, and the HTTP server of `/metrics`."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from shoal import __version__
from shoal.host.addrs import is_loopback
from shoal.manager.raft.sqlite_storage import SqliteStorage
from shoal.metrics.collectors import (
    AgentCollector,
    ClusterCollector,
    LeaderCollector,
    MetricsSource,
    NodeCollector,
    RaftCollector,
)

log = logging.getLogger(__name__)

# Seconds: an API request takes from a millisecond (a read) to seconds (a write waiting on a slow disk's fsync).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A task is placed, its image pulled and its container started: from a fraction of a second to minutes.
SCHEDULING_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
RAFT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A scheduling pass over the pending tasks: microseconds for a few, up to seconds for thousands on many nodes.
PASS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _BuildInfo(Collector):
    def collect(self) -> list[Metric]:
        g = GaugeMetricFamily("shoal_build_info", "Shoal's version (always 1)", labels=["version"])
        g.add_metric([__version__], 1)
        return [g]


class DaemonMetrics:
    """The registry `/metrics` renders. `observe_request` is the Engine API server's request observer;
    `watch_manager` hooks the Raft member's proposal, snapshot and fsync timings, the dispatcher's scheduling
    delays and the scheduler's passes and placements (the node calls it each time it opens as a manager: they
    change when it joins, leaves or is promoted)."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source
        self.registry = CollectorRegistry(auto_describe=False)
        for c in (_BuildInfo(), NodeCollector(source), ClusterCollector(source), RaftCollector(source),
                  LeaderCollector(source), AgentCollector(source)):
            self.registry.register(c)
        self.requests = Histogram(
            "shoal_engine_api_request_duration_seconds",
            "Engine API requests by method, endpoint (the route's path template) and status; a stream's (logs, "
            "events, attach) duration runs to its end", ["method", "route", "status"], registry=self.registry,
            buckets=REQUEST_BUCKETS)
        self.raft_transactions = Histogram("swarm_raft_transaction_latency_seconds",
                                           "Raft transaction latency (a proposal's time to commit and apply)",
                                           registry=self.registry, buckets=RAFT_BUCKETS)
        self.raft_snapshots = Histogram("swarm_raft_snapshot_latency_seconds",
                                        "Raft snapshot create latency (encode and write)",
                                        registry=self.registry, buckets=RAFT_BUCKETS)
        self.scheduling_delay = Histogram(
            "swarm_dispatcher_scheduling_delay_seconds",
            "Scheduling delay is the time a task takes to go from NEW to RUNNING state (on the leader)",
            registry=self.registry, buckets=SCHEDULING_BUCKETS)
        self.raft_fsync = Histogram("shoal_raft_fsync_seconds",
                                    "The Raft log's fsync alone: one WAL commit of a batch of entries and state",
                                    registry=self.registry, buckets=RAFT_BUCKETS)
        self.scheduler_pass = Histogram("shoal_scheduler_pass_seconds",
                                        "A scheduling pass: deciding where the pending tasks go (on the leader)",
                                        registry=self.registry, buckets=PASS_BUCKETS)
        self.placement_delay = Histogram("shoal_scheduler_placement_delay_seconds",
                                         "A task's creation to its assignment to a node (on the leader; a task "
                                         "that waited for a node counts its wait)",
                                         registry=self.registry, buckets=SCHEDULING_BUCKETS)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).observe(seconds)

    def watch_manager(self) -> None:
        if self.source.raft is not None:
            self.source.raft.on_timing = self._raft_timing
            if isinstance(self.source.raft.storage, SqliteStorage):
                self.source.raft.storage.on_fsync = self.raft_fsync.observe
        if self.source.manager is not None:
            self.source.manager.dispatcher.on_scheduling_delay = self.scheduling_delay.observe
            self.source.manager.stats.on_scheduler_pass = self.scheduler_pass.observe
            self.source.manager.stats.on_placement = self.placement_delay.observe

    def _raft_timing(self, what: str, seconds: float) -> None:
        (self.raft_transactions if what == "proposal" else self.raft_snapshots).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(metrics: DaemonMetrics, host: str, port: int) -> web.AppRunner:
    """`GET /metrics` on HOST:PORT, unauthenticated as dockerd's --metrics-addr (a warning when that is not
    loopback: anyone who can connect reads the cluster's shape). The caller cleans the runner up."""
    async def handle(request: web.Request) -> web.Response:
        # The classic text format every Prometheus 2 reads (all names here are plain ASCII, so it is exact).
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    shown = f"[{host}]" if ":" in host else host
    if not is_loopback(host):
        log.warning("metrics are served without authentication on %s:%d: anyone who can connect reads the "
                    "swarm's nodes, services and Raft state", shown, port)
    log.info("metrics listen on http://%s:%d/metrics", shown, port)
    return runner
