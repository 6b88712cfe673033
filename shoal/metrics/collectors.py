"""Collectors that read a node's state when Prometheus scrapes: nothing here is counted as it happens.

Names follow dockerd's swarm metrics where one exists (`swarm_node_manager`, `swarm_manager_leader`,
`swarm_manager_nodes{state}`, `swarm_manager_tasks_total{state}`, `swarm_manager_services_total`, ...,
`swarm_store_batch_latency_seconds`); what dockerd does not have is `shoal_*`. Labels are bounded: service
names, node IDs and hostnames, states, never a task ID. Every manager reports the cluster as its own store
holds it (the store is replicated: a follower's lags the leader's by at most its apply lag), so a query for the
cluster's numbers picks one manager, e.g. `... and on(instance) swarm_manager_leader == 1`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from shoal.agent.agent import HEARTBEAT_BUCKETS, Agent
from shoal.api.reasons import REASONS
from shoal.manager.cron.config import cron_config_cached
from shoal.manager.manager import Manager
from shoal.manager.membership import Membership
from shoal.manager.raft.node import RaftNode
from shoal.manager.scheduler.nodeinfo import is_held, reservations
from shoal.manager.status import service_status
from shoal.manager.usage import live_tasks, per_service
from shoal.model.state import TaskState
from shoal.store.memory import MemoryStore, ReadTx

NODE_STATES = ("unknown", "down", "ready", "disconnected")  # swarmkit's NodeStatus states
UPDATE_STATES = ("updating", "paused", "completed", "rollback_started", "rollback_paused", "rollback_completed")


class MetricsSource(Protocol):
    """What the collectors read of a node (shoal.node.ShoalNode is one); each may be None or change between
    scrapes as the node joins, leaves or changes role."""

    @property
    def role(self) -> str:
        """manager | worker | "" (no swarm)."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def store(self) -> MemoryStore | None: ...

    @property
    def raft(self) -> RaftNode | None: ...

    @property
    def manager(self) -> Manager | None: ...

    @property
    def membership(self) -> Membership | None: ...

    @property
    def agent(self) -> Agent | None: ...


class NodeCollector(Collector):
    """This node's role: `swarm_node_manager` and `swarm_manager_leader`, as dockerd reports them."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("swarm_node_manager", "Whether this node is a manager or not",
                                value=1 if self.source.role == "manager" else 0)
        yield GaugeMetricFamily("swarm_manager_leader", "Indicates if this manager node is a leader",
                                value=1 if self.source.is_leader else 0)


class ClusterCollector(Collector):
    """The cluster as this manager's store holds it: nodes, tasks, services and their replicas, update states,
    task counts per node, object counts, and the store's group commit. Nothing on a worker."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        store = self.source.store
        if store is None:
            return
        v = store.view()
        yield from self._objects(v)
        yield from self._services(v)
        yield from self._cron(v)
        yield from self._tasks_per_node(v)
        yield from self._unplaceable(v)
        yield from self._store(store)

    def _unplaceable(self, v: ReadTx) -> Iterator[Metric]:
        g = GaugeMetricFamily("shoal_scheduler_unplaceable_tasks",
                              "Pending tasks the scheduler found no node for (the ERROR column of service ps says "
                              "why)", labels=["service"])
        stuck = Counter(t.service_id for t in v.tasks() if t.status.state == TaskState.PENDING
                        and t.status.err and t.desired_state <= TaskState.RUNNING)
        for svc in v.services():
            g.add_metric([svc.name], stuck.get(svc.id, 0))
        yield g

    def _objects(self, v: ReadTx) -> Iterator[Metric]:
        nodes = GaugeMetricFamily("swarm_manager_nodes", "The number of nodes", labels=["state"])
        by_state = Counter(n.status.state for n in v.nodes())
        for st in NODE_STATES:
            nodes.add_metric([st], by_state.get(st, 0))
        yield nodes
        tasks = GaugeMetricFamily("swarm_manager_tasks_total", "The number of tasks in the cluster object store",
                                  labels=["state"])
        t_state = Counter(t.status.state for t in v.tasks())
        for ts in TaskState:
            tasks.add_metric([ts.wire], t_state.get(ts, 0))
        yield tasks
        for kind, plural in (("service", "services"), ("secret", "secrets"), ("config", "configs"),
                             ("network", "networks")):
            yield GaugeMetricFamily(f"swarm_manager_{plural}_total",
                                    f"The number of {plural} in the cluster object store", value=v.count(kind))

    def _services(self, v: ReadTx) -> Iterator[Metric]:
        desired = GaugeMetricFamily("shoal_service_replicas_desired",
                                    "Tasks the service wants running (as docker service ls's REPLICAS second number)",
                                    labels=["service", "mode"])
        running = GaugeMetricFamily("shoal_service_replicas_running",
                                    "The service's tasks running on a node that is not down (REPLICAS' first number)",
                                    labels=["service"])
        update = GaugeMetricFamily("shoal_service_update_state",
                                   "1 for the state of the service's last update or rollback (none: never updated)",
                                   labels=["service", "state"])
        tasks = GaugeMetricFamily("shoal_service_tasks", "The service's tasks in the store, by their observed state",
                                  labels=["service", "state"])
        live = {n.id for n in v.nodes() if n.status.state != "down"}
        for svc in v.services():
            name = svc.name
            st = service_status(v, svc, live)
            desired.add_metric([name, svc.spec.mode.kind], st["DesiredTasks"])
            running.add_metric([name], st["RunningTasks"])
            us = svc.update_status.state if svc.update_status is not None and svc.update_status.state else "none"
            update.add_metric([name, us], 1)
            for ts, n in sorted(Counter(t.status.state for t in v.tasks(service_id=svc.id)).items()):
                tasks.add_metric([name, ts.wire], n)
        yield desired
        yield running
        yield update
        yield tasks

    def _cron(self, v: ReadTx) -> Iterator[Metric]:
        """Services with a schedule (shoal.manager.cron): the next and last run, runs and skipped ticks."""
        nxt = GaugeMetricFamily("shoal_cron_next_run_timestamp_seconds", "When the service's next tick is due",
                                labels=["service"])
        last = GaugeMetricFamily("shoal_cron_last_run_timestamp_seconds", "When the service's newest run started "
                                 "(0: never)", labels=["service"])
        runs = CounterMetricFamily("shoal_cron_runs", "Runs started (ticks, missed ticks and triggers)",
                                   labels=["service"])
        skipped = CounterMetricFamily("shoal_cron_skipped_ticks", "Ticks not run (a run still going with "
                                      "skip-running, or missed past the deadline)", labels=["service"])
        for svc in v.services():
            st = svc.cron
            if st is None or cron_config_cached(svc.spec) is None:
                continue
            nxt.add_metric([svc.name], st.next_run)
            last.add_metric([svc.name], st.last_run)
            runs.add_metric([svc.name], st.iteration)
            skipped.add_metric([svc.name], st.skipped)
        yield nxt
        yield last
        yield runs
        yield skipped

    def _tasks_per_node(self, v: ReadTx) -> Iterator[Metric]:
        per_node = GaugeMetricFamily("shoal_node_tasks", "Tasks assigned to the node, by their observed state",
                                     labels=["node_id", "hostname", "state"])
        labels = ["node_id", "hostname"]
        cpus = GaugeMetricFamily("shoal_node_cpus", "CPUs the node offers to tasks", labels=labels)
        memory = GaugeMetricFamily("shoal_node_memory_bytes", "Memory the node offers to tasks", labels=labels)
        reserved_cpus = GaugeMetricFamily("shoal_node_reserved_cpus",
                                          "CPUs reserved by the tasks the node holds (as the scheduler counts them)",
                                          labels=labels)
        reserved_memory = GaugeMetricFamily("shoal_node_reserved_memory_bytes",
                                            "Memory reserved by the tasks the node holds (as the scheduler counts "
                                            "them)", labels=labels)
        nodes = v.nodes()
        hostnames = {n.id: n.description.hostname for n in nodes}
        counts: Counter[tuple[str, TaskState]] = Counter()
        nano_cpus: Counter[str] = Counter()
        mem: Counter[str] = Counter()
        for t in v.tasks():
            if not t.node_id:
                continue
            counts[(t.node_id, t.status.state)] += 1
            r = reservations(t)
            if r is not None and is_held(t):
                nano_cpus[t.node_id] += r.nano_cpus
                mem[t.node_id] += r.memory_bytes
        for (nid, ts), n in sorted(counts.items()):
            per_node.add_metric([nid, hostnames.get(nid, ""), ts.wire], n)
        yield per_node
        for node in nodes:
            ls = [node.id, node.description.hostname]
            cpus.add_metric(ls, node.description.resources.nano_cpus / 1e9)
            memory.add_metric(ls, node.description.resources.memory_bytes)
            reserved_cpus.add_metric(ls, nano_cpus[node.id] / 1e9)
            reserved_memory.add_metric(ls, mem[node.id])
        yield from (cpus, memory, reserved_cpus, reserved_memory)

    def _store(self, store: MemoryStore) -> Iterator[Metric]:
        s = store.stats
        yield SummaryMetricFamily("swarm_store_batch_latency_seconds",
                                  "Time from proposing a batch of store transactions to its commit",
                                  count_value=int(s["entries"]), sum_value=float(s["commit_seconds"]))
        yield CounterMetricFamily("shoal_store_transactions", "Store write transactions committed by this manager",
                                  value=int(s["transactions"]))
        yield GaugeMetricFamily("shoal_store_version", "The store's version (bumped by every committed change)",
                                value=store.version)


class RaftCollector(Collector):
    """This manager's Raft member: term, indexes and apply lag, leadership, elections, snapshots, and (on the
    leader, the only member that knows) how many voters follow it."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        raft = self.source.raft
        if raft is None:
            return
        core = raft.core

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("shoal_raft_term", "The Raft term this member is in", core.term)
        yield gauge("shoal_raft_commit_index", "The highest log index this member knows committed", core.commit)
        yield gauge("shoal_raft_applied_index", "The highest log index applied to this member's store", core.applied)
        yield gauge("shoal_raft_apply_lag", "Committed entries not yet applied to this member's store",
                    max(0, core.commit - core.applied))
        yield gauge("shoal_raft_last_index", "The last index of this member's log", core.last_index)
        yield gauge("shoal_raft_snapshot_index", "The log index of this member's latest snapshot",
                    core.snapshot_meta.index)
        yield gauge("shoal_raft_snapshot_bytes", "Size of the last snapshot this member took or installed",
                    raft.last_snapshot_bytes)
        yield gauge("shoal_raft_has_leader", "1 when this member knows a leader", 1 if core.leader else 0)
        yield gauge("shoal_raft_voters", "Voting members of the Raft group", len(core.voters))
        yield gauge("shoal_raft_quorum", "Voters needed for a quorum", core.quorum)
        yield CounterMetricFamily("shoal_raft_leader_changes", "Times the leader this member knows changed",
                                  value=raft.leader_changes)
        yield CounterMetricFamily("shoal_raft_elections", "Elections this member started (each a new term)",
                                  value=core.elections)
        yield CounterMetricFamily("shoal_raft_snapshots_taken", "Snapshots this member took of its store",
                                  value=raft.snapshots_taken)
        yield CounterMetricFamily("shoal_raft_snapshots_installed", "Snapshots this member installed from the leader",
                                  value=raft.snapshots_installed)
        membership = self.source.membership
        if raft.is_leader and membership is not None:
            reachable, unreachable = membership.reachable_counts()
            g = GaugeMetricFamily("shoal_raft_voters_reachability",
                                  "Voters by reachability, as the leader sees them (only the leader reports it)",
                                  labels=["reachability"])
            g.add_metric(["reachable"], reachable)
            g.add_metric(["unreachable"], unreachable)
            yield g


class LeaderCollector(Collector):
    """What only the leader knows, as its loops see it: the nodes' sessions and heartbeats, the usage reports
    they carry (used CPU and memory per node and per service), and the tasks its orchestrator saw fail or
    restarted, by reason. Nothing on a follower or a worker."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        manager, store = self.source.manager, self.source.store
        if manager is None or store is None or not manager.dispatcher.active:
            return
        v = store.view()
        yield from self._heartbeats(manager, v)
        yield from self._usage(manager, v)
        yield from self._tasks(manager, v)

    def _heartbeats(self, manager: Manager, v: ReadTx) -> Iterator[Metric]:
        d = manager.dispatcher
        yield GaugeMetricFamily("shoal_dispatcher_sessions", "Nodes with a session open with this leader",
                                value=len(d.sessions))
        yield CounterMetricFamily("shoal_dispatcher_heartbeats", "Heartbeats this manager took while leading",
                                  value=d.heartbeats)
        yield CounterMetricFamily("shoal_dispatcher_heartbeats_late", "Heartbeats that came over 1.5 periods after "
                                  "the node's previous one (at least one missed)", value=d.late_heartbeats)
        yield CounterMetricFamily("shoal_dispatcher_registrations_deferred", "Registrations this manager deferred "
                                  "while leading (over its registrations a second): the node was told when to come "
                                  "back", value=d.admission.deferred)
        expired = CounterMetricFamily("shoal_dispatcher_sessions_expired",
                                      "Sessions this manager ended, the node marked down: heartbeat (three periods "
                                      "without one) or connection (closed, no new session within the grace)",
                                      labels=["reason"])
        for why in ("heartbeat", "connection"):
            expired.add_metric([why], d.expirations.get(why, 0))
        yield expired
        age = GaugeMetricFamily("shoal_node_heartbeat_age_seconds",
                                "Seconds since the node's last heartbeat (nodes with a session)",
                                labels=["node_id", "hostname"])
        for nid, seconds in sorted(d.heartbeat_ages().items()):
            node = v.node(nid)
            age.add_metric([nid, node.description.hostname if node is not None else ""], seconds)
        yield age

    def _usage(self, manager: Manager, v: ReadTx) -> Iterator[Metric]:
        reports = manager.dispatcher.current_usage()
        labels = ["node_id", "hostname"]
        used_cpus = GaugeMetricFamily("shoal_node_used_cpus", "CPU cores the node's tasks use (its last usage "
                                      "report)", labels=labels)
        used_mem = GaugeMetricFamily("shoal_node_used_memory_bytes", "Memory the node's tasks use (its last usage "
                                     "report)", labels=labels)
        host_cpus = GaugeMetricFamily("shoal_node_host_used_cpus", "CPU cores busy on the node's host, tasks and "
                                      "everything else", labels=labels)
        host_mem = GaugeMetricFamily("shoal_node_host_used_memory_bytes", "Memory used on the node's host "
                                     "(MemTotal - MemAvailable)", labels=labels)
        report_age = GaugeMetricFamily("shoal_node_usage_report_age_seconds", "Seconds since the node's last usage "
                                       "report reached the leader", labels=labels)
        cpus: dict[str, float] = {}
        mem: dict[str, int] = {}
        for nid, tu in live_tasks(v, reports):
            cpus[nid] = cpus.get(nid, 0.0) + (tu.cpus or 0.0)
            mem[nid] = mem.get(nid, 0) + (tu.memory_bytes or 0)
        for nid, (report, seconds) in sorted(reports.items()):
            node = v.node(nid)
            ls = [nid, node.description.hostname if node is not None else ""]
            used_cpus.add_metric(ls, cpus.get(nid, 0.0))
            used_mem.add_metric(ls, mem.get(nid, 0))
            report_age.add_metric(ls, seconds)
            if report.host is not None and report.host.cpus is not None:
                host_cpus.add_metric(ls, report.host.cpus)
            if report.host is not None and report.host.memory_bytes is not None:
                host_mem.add_metric(ls, report.host.memory_bytes)
        yield from (used_cpus, used_mem, host_cpus, host_mem, report_age)
        svc_cpus = GaugeMetricFamily("shoal_service_used_cpus", "CPU cores the service's tasks use, summed",
                                     labels=["service"])
        svc_mem = GaugeMetricFamily("shoal_service_used_memory_bytes", "Memory the service's tasks use, summed",
                                    labels=["service"])
        for su in per_service(v, reports):
            svc_cpus.add_metric([su.name], su.cpus)
            svc_mem.add_metric([su.name], su.memory_bytes)
        yield svc_cpus
        yield svc_mem

    def _tasks(self, manager: Manager, v: ReadTx) -> Iterator[Metric]:
        stats = manager.stats
        names = {s.id: s.name for s in v.services()}
        stats.forget_services(set(names))
        for what, counts, doc in (
                ("failures", stats.failures, "Tasks that failed, by service and reason (node_down: its node went "
                                             "down)"),
                ("restarts", stats.restarts, "Tasks replaced by a new one after they ended or lost their node, by "
                                             "service and the reason the old one ended")):
            c = CounterMetricFamily(f"shoal_task_{what}", doc, labels=["service", "reason"])
            # Every reason of every service from zero, so that increase() sees a series' first count.
            for sid, name in sorted(names.items(), key=lambda kv: kv[1]):
                for reason in REASONS:
                    c.add_metric([name, reason], counts.get((sid, reason), 0))
            yield c
        for metric, counts, label, values, doc in (
                ("shoal_task_moves", stats.moves, "reason", ("drain", "rebalance"),
                 "Running tasks moved to another node, by service and why: a drain that keeps a start-first "
                 "service up (docs/drain.md) or rebalancing (docs/rebalance.md)"),
                ("shoal_autoscale_decisions", stats.autoscaled, "direction", ("up", "down"),
                 "Replica count changes the autoscaler made, by service and direction (docs/autoscale.md)")):
            c = CounterMetricFamily(metric, doc, labels=["service", label])
            for sid, name in sorted(names.items(), key=lambda kv: kv[1]):
                for value in values:  # from zero, as the failures above
                    c.add_metric([name, value], counts.get((sid, value), 0))
            yield c


class AgentCollector(Collector):
    """This node's agent: its heartbeats' round trips to the dispatcher, and the ones that failed."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        agent = self.source.agent
        if agent is None:
            return
        st = agent.heartbeat_stats
        buckets = [(str(bound), n) for bound, n in zip(HEARTBEAT_BUCKETS, st.buckets, strict=True)]
        buckets.append(("+Inf", st.count))
        yield HistogramMetricFamily("shoal_agent_heartbeat_latency_seconds",
                                    "Round trips of this agent's heartbeats to the leader's dispatcher",
                                    buckets=buckets, sum_value=st.sum)
        yield CounterMetricFamily("shoal_agent_heartbeat_failures", "Heartbeats of this agent that failed (each "
                                  "ends its session; it registers again)", value=st.failures)
