"""The `shoal` subcommands that talk to a running daemon: status, top, wait, scale, rollback, drain, activate,
diagnose. `shoal.cli` adds them to its group, whose `-H/--host`, `--context` and `--tls...` options (docker's) land in
`Target`. rich and the client are imported inside the commands, so `shoal --help` loads neither.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.ctl.client import Client
    from shoal.ctl.follow import Outcome


@dataclass(frozen=True)
class Target:
    """The connection flags of the `shoal` group, resolved into a client when a command needs one."""
    hosts: tuple[str, ...] = ()
    context: str | None = None
    tls: bool = False
    tlsverify: bool = False
    tlscacert: Path | None = None
    tlscert: Path | None = None
    tlskey: Path | None = None

    def client(self, timeout: float = 30.0) -> Client:
        from shoal.ctl.client import Client
        from shoal.ctl.endpoint import EndpointError, resolve

        try:
            ep = resolve(hosts=self.hosts, context=self.context, tls=self.tls, tlsverify=self.tlsverify,
                         tlscacert=self.tlscacert, tlscert=self.tlscert, tlskey=self.tlskey, env=os.environ,
                         home=Path.home())
            return Client(ep, timeout=timeout)
        except EndpointError as e:
            raise click.ClickException(str(e)) from None


def _target() -> Target:
    obj = click.get_current_context().find_root().obj
    return obj if isinstance(obj, Target) else Target()


def _console(width: int | None = None) -> Console:
    from rich.console import Console

    return Console(width=width) if width else Console()


def _run(fn: Any) -> Any:
    """Call `fn` turning the client's errors into the docker CLI's message on stderr and exit status 1."""
    from shoal.ctl.client import APIError, Unreachable

    try:
        return fn()
    except (APIError, Unreachable) as e:
        click.echo(str(e), err=True)
        raise SystemExit(1) from None


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print the summaries as JSON instead of tables")
def status(as_json: bool) -> None:
    """One screen: managers and Raft health, nodes, services converging or not, and what cannot be placed and
    why. Exit status 1 when the daemon cannot be reached, 0 otherwise."""
    from dataclasses import asdict

    from shoal.ctl import view

    client = _target().client()
    snap = _run(lambda: view.gather(client))
    if as_json:
        import json

        click.echo(json.dumps({
            "endpoint": snap.endpoint, "error": snap.error, "raft": asdict(view.raft_health(snap)),
            "raft_member": snap.raft, "nodes": [asdict(r) for r in view.node_rows(snap)],
            "services": [asdict(r) | {"converged": r.converged} for r in view.service_rows(snap)],
            "unplaceable": [asdict(u) for u in view.unplaceable(snap)],
            "failures": [asdict(f) for f in view.recent_failures(snap)]}, indent=2))
        return
    _console().print(view.status_view(snap))


@click.command()
@click.option("--interval", type=click.FloatRange(0.2, 3600), default=2.0, show_default=True,
              help="seconds between refreshes")
@click.option("--once", is_flag=True, help="draw one screen and exit (for scripts and logs)")
@click.option("-n", "--iterations", type=click.IntRange(1), default=None,
              help="exit after this many refreshes")
def top(interval: float, once: bool, iterations: int | None) -> None:
    """A live view of the cluster: nodes with their tasks and reservations, services converging, what cannot be
    placed, and the newest events. Ctrl-C quits."""
    from rich.live import Live

    from shoal.ctl import view

    client = _target().client()
    console = _console()
    events: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    since = time.time() - 300

    def refresh() -> Any:
        nonlocal since
        snap = view.gather(client)
        if not snap.error:
            now = time.time()
            for ev in client.stream_json("/events", since=f"{since:.6f}", until=f"{now:.6f}"):
                key = (ev.get("timeNano"), ev.get("Type"), ev.get("Action"), (ev.get("Actor") or {}).get("ID"))
                if key not in seen:
                    seen.add(key)
                    events.append(ev)
            since = now - 1  # an event stamped in the last second may not have been stored yet
            del events[:-50]
        return view.top_view(snap, events, interval)

    limit = 1 if once else iterations
    if once or not console.is_terminal:
        for i in range(limit or 1):
            if i:
                time.sleep(interval)  # the refresh period of the view, between two draws
            console.print(_run(refresh))
        return
    count = 0
    try:
        with Live(_run(refresh), console=console, screen=True, auto_refresh=False) as live:
            count = 1
            while limit is None or count < limit:
                time.sleep(interval)  # the refresh period of the view
                live.update(_run(refresh), refresh=True)
                count += 1
    except KeyboardInterrupt:
        pass


def _follow(probes: list[Any], timeout: float | None, what: str) -> None:
    from shoal.ctl.follow import follow

    console = _console()
    try:
        out: Outcome = _run(lambda: follow(probes, console, timeout))
    except KeyboardInterrupt:
        click.echo(f"Stopped following; {what} goes on in the cluster.", err=True)
        raise SystemExit(130) from None
    _report(out, console, what)


def _report(out: Outcome, console: Console, what: str) -> None:
    for s in out.steps:
        if s.failed:
            console.print(f"[bold red]{s.name}: {s.failed}")
        elif s.finished:
            console.print(f"{s.name}: {s.note} ({s.done}/{s.total})")
        else:
            console.print(f"[yellow]{s.name}: not yet: {s.note} ({s.done}/{s.total})")
    if out.timed_out:
        click.echo(f"Timed out waiting for {what}; it goes on in the cluster.", err=True)
    if not out.ok:
        raise SystemExit(1)


_TIMEOUT = click.option("--timeout", type=click.FloatRange(0), default=None, metavar="SECONDS",
                        help="give up waiting after this long (exit status 1; the operation itself goes on)")
_DETACH = click.option("-d", "--detach", is_flag=True, help="return at once instead of following the operation")


def _service_probes(client: Client, names: tuple[str, ...], baselines: dict[str, str] | None = None) -> list[Any]:
    from shoal.ctl.follow import service_state

    def probe(name: str) -> Any:
        return lambda: service_state(client, name, (baselines or {}).get(name))

    return [probe(n) for n in names]


@click.command("wait")
@click.argument("services", nargs=-1, required=True)
@_TIMEOUT
def wait_cmd(services: tuple[str, ...], timeout: float | None) -> None:
    """Follow SERVICES until each has converged: no update or rollback under way, every task meant to run
    running, and as many on the current spec as wanted. Exit status 1 if one pauses, vanishes or the timeout
    passes. Pending tasks show the scheduler's reason."""
    client = _target().client()
    _follow(_service_probes(client, services), timeout, "convergence")


def _update(client: Client, name: str, change: Any, rollback: bool = False) -> str:
    svc = client.get(f"/services/{name}")
    spec = svc["Spec"]
    change(spec)
    query: dict[str, Any] = {"version": svc["Version"]["Index"]}
    if rollback:
        query["rollback"] = "previous"
    answer = client.request("POST", f"/services/{svc['ID']}/update", query, spec) or {}
    for w in answer.get("Warnings") or []:
        click.echo(f"warning: {w}", err=True)
    return str(spec.get("Name", name))


@click.command()
@click.argument("pairs", nargs=-1, required=True, metavar="SERVICE=REPLICAS...")
@_DETACH
@_TIMEOUT
def scale(pairs: tuple[str, ...], detach: bool, timeout: float | None) -> None:
    """Set the replicas of replicated services and follow them converging (`docker service scale` with progress).
    Pending tasks show why the scheduler cannot place them."""
    wanted: list[tuple[str, int]] = []
    for p in pairs:
        name, sep, num = p.partition("=")
        if not sep or not num.isdigit() or not name:
            raise click.BadParameter(f"invalid scale specifier {p!r}: expected SERVICE=REPLICAS",
                                     param_hint="SERVICE=REPLICAS")
        wanted.append((name, int(num)))
    client = _target().client()

    def set_replicas(n: int) -> Any:
        def change(spec: dict[str, Any]) -> None:
            mode = spec.get("Mode") or {}
            if "Replicated" not in mode:
                raise click.ClickException(f"scale can only be used with replicated mode: {spec.get('Name')}")
            mode["Replicated"]["Replicas"] = n
        return change

    names = tuple(_run(lambda name=name, n=n: _update(client, name, set_replicas(n))) for name, n in wanted)
    for (name, n) in wanted:
        click.echo(f"{name} scaled to {n}")
    if not detach:
        _follow(_service_probes(client, names), timeout, "scaling")


@click.command()
@click.argument("services", nargs=-1, required=True)
@_DETACH
@_TIMEOUT
def rollback(services: tuple[str, ...], detach: bool, timeout: float | None) -> None:
    """Roll SERVICES back to their previous spec and follow the rollback (`docker service rollback`)."""
    from shoal.ctl.follow import update_started

    client = _target().client()
    baselines = {}
    for s in services:
        before = _run(lambda s=s: update_started(client, s))
        name = _run(lambda s=s: _update(client, s, lambda spec: None, rollback=True))
        baselines[name] = before
        click.echo(f"{name}: rollback requested")
    if not detach:
        _follow(_service_probes(client, tuple(baselines), baselines), timeout, "the rollback")


def _set_availability(client: Client, node: str, availability: str) -> dict[str, Any]:
    n: dict[str, Any] = client.get(f"/nodes/{node}")
    spec = dict(n["Spec"])
    spec["Availability"] = availability
    client.request("POST", f"/nodes/{n['ID']}/update", {"version": n["Version"]["Index"]}, spec)
    return n


@click.command()
@click.argument("nodes", nargs=-1, required=True)
@_DETACH
@_TIMEOUT
def drain(nodes: tuple[str, ...], detach: bool, timeout: float | None) -> None:
    """Drain NODES (`docker node update --availability drain`) and follow their tasks leaving; then the services
    that had tasks there converging elsewhere."""
    from shoal.ctl.client import filters
    from shoal.ctl.follow import drain_state

    client = _target().client()
    affected: set[str] = set()
    ids = []
    for node in nodes:
        before = _run(lambda node=node: client.get(f"/nodes/{node}"))
        for t in _run(lambda n=before: client.get("/tasks", filters=filters(node=n["ID"]))) or []:
            if t.get("DesiredState") == "running":
                affected.add(t["ServiceID"])  # to follow them converging on the other nodes
        n = _run(lambda node=node: _set_availability(client, node, "drain"))
        ids.append(n["ID"])
        click.echo(f"{(n.get('Description') or {}).get('Hostname') or node}: availability drain")
    if detach:
        return

    def probe(nid: str) -> Any:
        return lambda: drain_state(client, nid)

    probes: list[Any] = [probe(i) for i in ids]
    services = [s["Spec"]["Name"] for s in _run(lambda: client.get("/services")) if s["ID"] in affected]
    _follow(probes + _service_probes(client, tuple(sorted(services))), timeout, "the drain")


@click.command()
@click.argument("nodes", nargs=-1, required=True)
def activate(nodes: tuple[str, ...]) -> None:
    """Make NODES take tasks again (`docker node update --availability active`). Running tasks are not moved
    back: `docker service update --force SERVICE` rebalances."""
    client = _target().client()
    for node in nodes:
        n = _run(lambda node=node: _set_availability(client, node, "active"))
        click.echo(f"{(n.get('Description') or {}).get('Hostname') or node}: availability active")


@click.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="where to write (default: shoal-diagnose-<time>.tar.gz in the current directory)")
@click.option("--dir", "as_dir", is_flag=True, help="write a directory instead of a tar.gz")
@click.option("--since", type=click.FloatRange(0), default=3600, show_default=True, metavar="SECONDS",
              help="how far back the events go")
@click.option("--log-lines", type=click.IntRange(0), default=2000, show_default=True,
              help="how many of the daemon's newest log lines to include")
def diagnose(output: Path | None, as_dir: bool, since: float, log_lines: int) -> None:
    """Write a support bundle: versions, the swarm's configuration, nodes, services, tasks, networks, secret and
    config metadata, Raft state, recent events, the daemon's log and the status screen. Secret and config
    payloads, join tokens, keys, the unlock key and environment values are left out (docs/cli.md)."""
    from shoal.ctl import diagnose as D
    from shoal.ctl import view

    target = _target()
    client = target.client()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    top_name = f"shoal-diagnose-{stamp}"
    dest = output or Path(top_name + ("" if as_dir else ".tar.gz"))
    if dest.exists():
        raise click.ClickException(f"{dest} exists; choose another --output")

    def status_text() -> str:
        console = _console(width=160)
        with console.capture() as cap:
            console.print(view.status_view(view.gather(client)))
        return cap.get()

    now = time.time()
    bundle = _run(lambda: D.collect(client, events_since=now - since, log_lines=log_lines, status_text=status_text,
                                    context=client.endpoint.context, now=now))
    path = D.write(bundle, dest, as_dir, top_name)
    click.echo(f"Wrote {path} ({len(bundle.files)} files)")
    for m in bundle.missing:
        click.echo(f"  not collected: {m}", err=True)


COMMANDS = (status, top, wait_cmd, scale, rollback, drain, activate, diagnose)


def version_text() -> str:
    from shoal import __version__

    return f"shoal {__version__} (python {sys.version.split()[0]})"
