"""The `shoal` command: `shoal daemon` runs a node; `shoal demo` starts a local demo cluster."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import logging
import os
import random
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from shoal import logring
from shoal.clock import SystemClock
from shoal.ctl import commands as ctl
from shoal.host.addrs import is_loopback
from shoal.manager.dispatcher import DEFAULT_MAX_HEARTBEATS
from shoal.manager.raft import DEFAULT_TICK
from shoal.procmem import return_large_frees_to_os


def _engine_reachable(host: str) -> bool:
    import socket

    if host.startswith("unix://"):
        path = host[len("unix://"):]
        if not os.path.exists(path):
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(1.0)
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1")
        except OSError:
            return False
        finally:
            s.close()
    return True


@dataclass(frozen=True)
class TCPListener:
    """`--api-tcp` with dockerd's TLS flags: where to listen, and the TLS context (None: plain HTTP)."""
    host: str
    port: int
    ssl: ssl.SSLContext | None = None
    verify: bool = False  # --tlsverify: clients must present a certificate signed by --tlscacert

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_tcp_addr(raw: str, param_hint: str = "--api-tcp") -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT (as dockerd's -H tcp://...) -> (host without brackets, port)."""
    raw = raw.removeprefix("tcp://")
    host, sep, port = raw.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise click.BadParameter(f"{raw}: an IPv6 address goes in brackets, as [::1]:PORT",
                                 param_hint=param_hint)
    try:
        num = int(port)
    except ValueError:
        num = -1
    if not sep or not 0 < num < 65536:
        raise click.BadParameter(f"{raw}: expected HOST:PORT", param_hint=param_hint)
    return host or "127.0.0.1", num


def tcp_listener(api_tcp: str, tls: bool, tlsverify: bool, cacert: Path | None, cert: Path | None,
                 key: Path | None) -> TCPListener:
    """The TCP API listener the flags ask for. Without --tlsverify anyone who can connect is root on this host:
    only loopback is allowed then (dockerd slows its start down for any other address; Shoal refuses)."""
    host, port = parse_tcp_addr(api_tcp)
    if not (tls or tlsverify):
        if not is_loopback(host):
            raise click.UsageError("--api-tcp without --tlsverify is only allowed on loopback: anyone who can "
                                   "connect has root access on this machine")
        return TCPListener(host, port)
    if not tlsverify and not is_loopback(host):
        raise click.UsageError("--api-tcp off loopback needs --tlsverify: with --tls alone anyone who can connect "
                               "has root access on this machine")
    certs = Path(os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")  # dockerd's defaults
    cacert, cert, key = cacert or certs / "ca.pem", cert or certs / "cert.pem", key or certs / "key.pem"
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # as dockerd
    try:
        ctx.load_cert_chain(str(cert), str(key))
        if tlsverify:
            ctx.load_verify_locations(cafile=str(cacert))
    except (OSError, ssl.SSLError) as e:
        raise click.UsageError(f"could not load the TLS files for --api-tcp: {e}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if tlsverify else ssl.CERT_NONE
    return TCPListener(host, port, ctx, tlsverify)


@dataclass(frozen=True)
class WebListener:
    """`--web-addr` with its TLS (None: plain HTTP, loopback only)."""
    host: str
    port: int
    ssl: ssl.SSLContext | None = None


def web_listener(addr: str, cert: Path | None, key: Path | None, cacert: Path | None) -> WebListener:
    """The web view's listener: off loopback only with TLS (docs/web.md)."""
    from shoal.web.auth import WebConfigError, check_listener, tls_context

    host, port = parse_tcp_addr(addr, "--web-addr")
    if (cert is None) != (key is None):
        raise click.UsageError("--web-tlscert and --web-tlskey go together")
    if cacert is not None and cert is None:
        raise click.UsageError("--web-tlscacert needs --web-tlscert and --web-tlskey")
    try:
        ctx = tls_context(cert, key, cacert) if cert is not None and key is not None else None
        check_listener(host, ctx)
    except WebConfigError as e:
        raise click.UsageError(str(e)) from None
    return WebListener(host, port, ctx)


def warn_unauthenticated(listener: TCPListener) -> None:
    """dockerd's warnings for a TCP listener that does not verify clients (cmd/dockerd/daemon.go)."""
    if listener.verify:
        return
    log = logging.getLogger("shoal")
    log.warning("Binding to IP address without --tlsverify is insecure and gives root access on this machine to "
                "everyone who has access to your network. host=%s", listener.url)
    log.warning("Binding to an IP address, even on localhost, can also give access to scripts run in a browser. "
                "Be safe out there! host=%s", listener.url)
    log.warning("Every local user who can connect to %s has root access on this machine through it; use "
                "--tlsverify (with --tlscacert, --tlscert, --tlskey) or the API socket, whose file mode "
                "limits who can.", listener.url)


async def run_daemon(data_dir: Path, api_socket: Path, api_tcp: TCPListener | None, executor: str,
                     engine_host: str | None, hostname: str, strategy: str, ready_file: Path | None = None,
                     dns_upstreams: tuple[str, ...] | None = None,
                     mesh_keepalive: tuple[int, int, int] | None = None, raft_tick: float = DEFAULT_TICK,
                     leave_on_exit: bool = False, metrics_addr: tuple[str, int] | None = None,
                     web_at: WebListener | None = None, max_heartbeats: float = DEFAULT_MAX_HEARTBEATS) -> None:
    from aiohttp import web

    from shoal import gctune, threadprio
    from shoal.engineapi.engine_client import EngineClient
    from shoal.engineapi.proxy import EngineProxy
    from shoal.engineapi.server import InProcessAPI, make_app
    from shoal.node import NodeConfig, ShoalNode

    gctune.tune()
    seed = int.from_bytes(os.urandom(8), "big")
    node = ShoalNode(NodeConfig(data_dir=data_dir, executor=executor, engine_host=engine_host,
                                hostname=hostname, scheduler_strategy=strategy, api_socket=api_socket,
                                dns_upstreams=dns_upstreams, mesh_keepalive=mesh_keepalive, raft_tick=raft_tick,
                                max_heartbeats=max_heartbeats),
                     SystemClock(), random.Random(seed))
    proxy = EngineProxy(engine_host)
    engine = EngineClient(engine_host)
    metrics_runner = None
    observe = None
    if metrics_addr is not None:
        from shoal.metrics.daemon import DaemonMetrics, serve_metrics

        metrics = DaemonMetrics(node)
        node.on_manager = metrics.watch_manager
        observe = metrics.observe_request
        # Before the node starts: an address that cannot be bound stops the daemon before anything runs.
        metrics_runner = await serve_metrics(metrics, *metrics_addr)
    web_view = None
    if web_at is not None:
        from shoal.web.server import serve_web

        # Before the node starts, as the metrics: it reaches the node through the API socket once that is up.
        web_view = await serve_web(api_socket, data_dir, web_at.host, web_at.port, web_at.ssl)
    await node.start()
    app = make_app(node, proxy, engine, observe)
    node.local_api = InProcessAPI(app)  # forwarded writes, on the leader
    # A stop gives requests in flight a moment, then cancels what is left: the streams (`docker events`,
    # `logs -f`, attach) never end by themselves and held aiohttp's default 60 s graceful shutdown until the
    # 15 s watchdog ended the process.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=STREAM_GRACE)
    await runner.setup()
    gctune.freeze()  # start-up's objects (modules, the restored store) need never be traversed again
    api_socket.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        api_socket.unlink()
    await web.UnixSite(runner, str(api_socket)).start()
    os.chmod(api_socket, 0o660)
    logging.getLogger("shoal").info("API listen on %s", api_socket)
    if api_tcp is not None:
        warn_unauthenticated(api_tcp)
        await web.TCPSite(runner, api_tcp.host, api_tcp.port, ssl_context=api_tcp.ssl).start()
        logging.getLogger("shoal").info("API listen on %s (%s)", api_tcp.url,
                                        "TLS, client certificates verified" if api_tcp.verify else
                                        "TLS, clients not verified" if api_tcp.ssl else "plain HTTP, no TLS")
    if ready_file is not None:
        ready_file.write_text(str(os.getpid()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Raft heartbeats and the dispatcher's answers run on this loop: gRPC's I/O threads must not crowd it out.
    loop_first = asyncio.create_task(threadprio.keep_loop_first(), name="loop-first")
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    await stop.wait()
    # An orderly stop that hangs (a loop starved under load) must not keep the process: past dockerd's default
    # shutdown timeout it exits as after kill -9, which Raft's fsynced log makes safe.
    watchdog = exit_after(SHUTDOWN_TIMEOUT)
    loop_first.cancel()
    try:
        if leave_on_exit and node.state != "inactive":
            # A throwaway node (`shoal demo`): leave as `docker swarm leave --force` does, which removes its
            # tasks, their mounts, networks and state; a daemon stops without touching its tasks otherwise.
            try:
                await node.leave(force=True)
                logging.getLogger("shoal").info("left the swarm on exit (--leave-on-exit)")
            except Exception:
                logging.getLogger("shoal").exception("leaving the swarm on exit failed")
        if web_view is not None:
            await web_view[0].cleanup()
            await web_view[1].close()
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await node.stop()
        await proxy.close()
        await engine.close()
        with contextlib.suppress(FileNotFoundError):
            api_socket.unlink()  # as dockerd removes its socket when it stops
    finally:
        watchdog.cancel()


SHUTDOWN_TIMEOUT = 15.0  # seconds (dockerd's --shutdown-timeout default)
STREAM_GRACE = 0.5  # seconds the API server waits for requests in flight at a stop before cancelling them


def exit_after(seconds: float, exit: Callable[[int], object] = os._exit) -> threading.Timer:
    """A thread that ends the process with status 1 unless cancelled within `seconds`: a thread, because the event
    loop it guards may be the thing that is stuck."""
    def fire() -> None:
        logging.getLogger("shoal").warning("the daemon did not stop within %.0f s; exiting", seconds)
        exit(1)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    return t


def _dump_tasks() -> None:
    """SIGUSR1: log every asyncio task with its stack (what a hung await is waiting on)."""
    logging.getLogger("shoal").warning("asyncio tasks:\n%s", format_tasks(asyncio.all_tasks()))


def _await_chain(coro: Any, limit: int) -> list[Any]:
    """The frames of a suspended coroutine and of what it awaits, down to the innermost (Task.get_stack shows
    only the outermost: a suspended coroutine's frame has no f_back)."""
    frames: list[Any] = []
    while coro is not None and len(frames) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await",
                                                                                                  None)
    return frames


def format_tasks(tasks: Iterable[asyncio.Task[Any]], limit: int = 12) -> str:
    """Each task's name and the frames of its await chain, outermost first. Not Task.print_stack: it shows one
    frame of a suspended task, and raises TypeError on a frame whose f_lineno is None."""
    import linecache

    out = []
    for t in tasks:
        out.append(f"--- {t.get_name()}{' (done)' if t.done() else ''}")
        try:
            frames = _await_chain(t.get_coro(), limit) if not t.done() else []
        except Exception as e:  # a dump must show the other tasks whatever one of them holds
            out.append(f"  (no stack: {e!r})")
            continue
        for f in frames:
            code, lineno = f.f_code, f.f_lineno
            out.append(f'  File "{code.co_filename}", line {lineno if lineno is not None else "?"}, '
                       f"in {code.co_name}")
            if lineno is not None:
                src = linecache.getline(code.co_filename, lineno, f.f_globals).strip()
                if src:
                    out.append(f"    {src}")
    return "\n".join(out) + "\n"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(ctl.version_text())
        ctx.exit()


@click.group()
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="print the version and exit")
@click.option("-H", "--host", "hosts", multiple=True, metavar="URL",
              help="daemon to talk to, as docker's -H: unix:///PATH or tcp://HOST:PORT (default: DOCKER_HOST, "
                   "else the docker context's, else unix:///var/run/docker.sock)")
@click.option("-c", "--context", default=None, help="docker context to use (default: DOCKER_CONTEXT, else the "
              "currentContext of ~/.docker/config.json)")
@click.option("--tls", is_flag=True, help="use TLS (implied by --tlsverify; or DOCKER_TLS)")
@click.option("--tlsverify", is_flag=True, help="use TLS and verify the daemon (or DOCKER_TLS_VERIFY)")
@click.option("--tlscacert", type=click.Path(path_type=Path), default=None,
              help="trust certificates signed by this CA (default: DOCKER_CERT_PATH/ca.pem)")
@click.option("--tlscert", type=click.Path(path_type=Path), default=None,
              help="client certificate (default: DOCKER_CERT_PATH/cert.pem)")
@click.option("--tlskey", type=click.Path(path_type=Path), default=None,
              help="client key (default: DOCKER_CERT_PATH/key.pem)")
@click.pass_context
def main(ctx: click.Context, hosts: tuple[str, ...], context: str | None, tls: bool, tlsverify: bool,
         tlscacert: Path | None, tlscert: Path | None, tlskey: Path | None) -> None:
    """Shoal: a container orchestrator that speaks the Docker Swarm API.

    `shoal daemon` runs a node. status, top, wait, scale, rollback, drain, activate and diagnose talk to a
    running daemon, found as the docker CLI finds it (docs/cli.md)."""
    ctx.obj = ctl.Target(hosts, context, tls, tlsverify, tlscacert, tlscert, tlskey)


for _cmd in ctl.COMMANDS:
    main.add_command(_cmd)


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("/var/lib/shoal"), show_default=True)
@click.option("--api-socket", type=click.Path(path_type=Path), default=Path("/var/run/shoal.sock"),
              show_default=True)
@click.option("--api-tcp", default=None, metavar="HOST:PORT",
              help="also serve the API on TCP ([::1]:PORT for IPv6); only loopback without --tlsverify, and "
                   "then every local user who can connect is root on this machine")
@click.option("--tls", is_flag=True, help="serve --api-tcp with TLS (implied by --tlsverify)")
@click.option("--tlsverify", is_flag=True, help="serve --api-tcp with TLS and require client certificates "
              "signed by --tlscacert")
@click.option("--tlscacert", type=click.Path(path_type=Path), default=None,
              help="trust clients' certificates signed by this CA (default: ~/.docker/ca.pem)")
@click.option("--tlscert", type=click.Path(path_type=Path), default=None,
              help="the TCP API's certificate (default: ~/.docker/cert.pem)")
@click.option("--tlskey", type=click.Path(path_type=Path), default=None,
              help="the TCP API's key (default: ~/.docker/key.pem)")
@click.option("--executor", type=click.Choice(["docker", "process", "auto"]), default="auto", show_default=True)
@click.option("--engine-host", default=None, help="local Docker Engine, e.g. unix:///var/run/docker.sock")
@click.option("--hostname", default="", help="node hostname (default: the machine's)")
@click.option("--scheduler-strategy", type=click.Choice(["spread", "binpack", "random"]), default="spread",
              show_default=True, help="cluster-wide default; services override it with the label "
                                      "com.shoal.scheduler.strategy")
@click.option("--dns-upstream", multiple=True, help="IP[:PORT] the tasks' DNS server forwards other names to "
              "(repeatable; default: the nameservers of /etc/resolv.conf; 'none': no forwarding)")
@click.option("--mesh-keepalive", default=None, metavar="IDLE[,INTERVAL[,COUNT]]",
              help="TCP keepalive of routing mesh connections, both legs: seconds idle before the first probe, "
                   "seconds between probes, probes before the connection is given up (default 60,15,4); set "
                   "IDLE below the shortest idle timeout of a firewall or load balancer in front of the nodes")
@click.option("--raft-tick", type=click.FloatRange(0.01, 10.0), default=DEFAULT_TICK, show_default=True,
              metavar="SECONDS",
              help="seconds per Raft tick on a manager: the leader sends heartbeats every tick and a follower "
                   "campaigns after 10-15 ticks without its word (1.0-1.5 s by default; Swarm's tick is 1 s). "
                   "Raise it, on every manager alike, where a manager's process can stall for a second (an "
                   "overloaded machine), at the cost of a slower failover")
@click.option("--max-heartbeats-per-second", "max_heartbeats", type=click.FloatRange(1.0, None),
              default=DEFAULT_MAX_HEARTBEATS, show_default=True, metavar="N",
              help="on a manager while it leads: the heartbeats a second it takes from all nodes together; where "
                   "the swarm's heartbeat period would bring more, the period nodes are told grows with their "
                   "number (a silent node is down after three periods; one whose connection closes after 3 s)")
@click.option("--leave-on-exit", is_flag=True,
              help="on SIGTERM or SIGINT leave the swarm first, as `docker swarm leave --force`: the node's tasks, "
                   "networks, mounts and swarm state are removed (a throwaway node, as `shoal demo` runs). "
                   "Without it a stop leaves the tasks running for the next start to adopt (docs/design/"
                   "executors.md)")
@click.option("--metrics-addr", default=None, metavar="HOST:PORT",
              help="serve Prometheus metrics on http://HOST:PORT/metrics, without authentication, as dockerd's "
                   "flag (docs/metrics.md lists them)")
@click.option("--web-addr", default=None, metavar="HOST:PORT",
              help="serve the web view on HOST:PORT (loopback; any other address needs --web-tlscert and "
                   "--web-tlskey); log in with the token printed at start (docs/web.md)")
@click.option("--web-tlscert", type=click.Path(path_type=Path), default=None, help="the web view's TLS certificate")
@click.option("--web-tlskey", type=click.Path(path_type=Path), default=None, help="the web view's TLS key")
@click.option("--web-tlscacert", type=click.Path(path_type=Path), default=None,
              help="log in browsers presenting a client certificate signed by this CA (the swarm's: `docker swarm "
                   "ca`), except worker nodes' certificates")
@click.option("--ready-file", type=click.Path(path_type=Path), default=None, hidden=True)
@click.option("--log-level", default="info", show_default=True)
def daemon(data_dir: Path, api_socket: Path, api_tcp: str | None, tls: bool, tlsverify: bool,
           tlscacert: Path | None, tlscert: Path | None, tlskey: Path | None, executor: str, engine_host: str | None,
           hostname: str, scheduler_strategy: str, dns_upstream: tuple[str, ...], mesh_keepalive: str | None,
           raft_tick: float, max_heartbeats: float, leave_on_exit: bool, metrics_addr: str | None, web_addr: str | None,
           web_tlscert: Path | None, web_tlskey: Path | None, web_tlscacert: Path | None, ready_file: Path | None,
           log_level: str) -> None:
    """Run a Shoal node serving the Docker Engine API."""
    # A crash below Python (a signal in gRPC's or SQLite's C code) leaves the threads' stacks in the log.
    with contextlib.suppress(io.UnsupportedOperation, ValueError):  # stderr without a file (a test's runner)
        faulthandler.enable()
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=log_level.upper(), format=log_format, stream=sys.stderr)
    logring.install(log_format)  # GET /_shoal/log: the newest lines, for `shoal diagnose`
    return_large_frees_to_os()  # a manager's removed configs and old Raft entries give their memory back
    if (tls or tlsverify or tlscacert or tlscert or tlskey) and not api_tcp:
        raise click.UsageError("--tls, --tlsverify, --tlscacert, --tlscert and --tlskey apply to --api-tcp")
    listener = tcp_listener(api_tcp, tls, tlsverify, tlscacert, tlscert, tlskey) if api_tcp else None
    default_engine = "unix:///var/run/docker.sock"
    if executor == "auto":
        executor = "docker" if _engine_reachable(engine_host or default_engine) else "process"
    if executor == "docker" and engine_host is None:
        engine_host = default_engine
    if engine_host is not None and not _engine_reachable(engine_host):
        logging.getLogger("shoal").warning("Docker Engine at %s is not reachable", engine_host)
    upstreams = None if not dns_upstream else tuple(u for u in dns_upstream if u != "none")
    metrics = parse_tcp_addr(metrics_addr, "--metrics-addr") if metrics_addr else None
    # Absolute: task network namespaces are bound and entered by path from processes with another cwd.
    data_dir = data_dir.absolute()
    if (web_tlscert or web_tlskey or web_tlscacert) and not web_addr:
        raise click.UsageError("--web-tlscert, --web-tlskey and --web-tlscacert apply to --web-addr")
    web_at = web_listener(web_addr, web_tlscert, web_tlskey, web_tlscacert) if web_addr else None
    asyncio.run(run_daemon(data_dir, api_socket, listener, executor, engine_host, hostname, scheduler_strategy,
                           ready_file, upstreams, _keepalive(mesh_keepalive), raft_tick, leave_on_exit, metrics,
                           web_at, max_heartbeats))


def _keepalive(raw: str | None) -> tuple[int, int, int] | None:
    if raw is None:
        return None
    try:
        parts = [int(x) for x in raw.split(",")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3 or any(p < 1 for p in parts):
        raise click.BadParameter("IDLE[,INTERVAL[,COUNT]] in whole seconds (and probes), each at least 1",
                                 param_hint="--mesh-keepalive")
    idle, interval, count = (parts + [15, 4][len(parts) - 1:])[:3]
    return idle, interval, count


@main.command()
@click.option("--dir", "workdir", type=click.Path(path_type=Path), default=Path(".shoal-demo"), show_default=True)
@click.option("--executor", type=click.Choice(["docker", "process"]), default="process", show_default=True)
@click.option("--engine-host", default=None, help="the Docker Engine of --executor docker "
              "(default: unix:///var/run/docker.sock)")
@click.option("--listen-addr", default="127.0.0.1:2377", show_default=True, help="the demo manager's swarm port")
@click.option("--detach", is_flag=True, help="leave the daemon running and return; `kill $(cat DIR/daemon.pid)` "
              "stops it and removes what it started")
def demo(workdir: Path, executor: str, engine_host: str | None, listen_addr: str, detach: bool) -> None:
    """Start a local one-node demo swarm and deploy a small stack (see README). Ctrl-C, SIGTERM or a closed
    terminal stop it and remove everything it started."""
    from shoal.demo import run_demo

    sys.exit(run_demo(workdir.resolve(), executor=executor, detach=detach, engine_host=engine_host,
                      listen_addr=listen_addr))




@main.group()
def swarm() -> None:
    """Swarm membership of the local daemon (what `docker swarm ...` does, through its Engine API)."""


def _api_call(api_socket: Path, method: str, path: str, body: object) -> tuple[int, bytes]:
    import http.client
    import json
    import socket

    class _Unix(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(str(api_socket))

    conn = _Unix("localhost", timeout=60)
    try:
        conn.request(method, path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@swarm.command("join")
@click.option("--token", required=True, help="worker join token (SWMTKN-1-...)")
@click.option("--api-socket", type=click.Path(path_type=Path), default=Path("/var/run/shoal.sock"),
              show_default=True, help="the local daemon's Engine API socket")
@click.option("--listen-addr", default="0.0.0.0:2377", show_default=True)
@click.option("--advertise-addr", default="")
@click.option("--availability", type=click.Choice(["active", "pause", "drain"]), default="active",
              show_default=True)
@click.argument("manager")
def swarm_join(token: str, api_socket: Path, listen_addr: str, advertise_addr: str, availability: str,
               manager: str) -> None:
    """Ask the local daemon to join the swarm of MANAGER (HOST:PORT), as POST /swarm/join does."""
    import json

    try:
        status, raw = _api_call(api_socket, "POST", "/swarm/join", {
            "ListenAddr": listen_addr, "AdvertiseAddr": advertise_addr, "RemoteAddrs": [manager],
            "JoinToken": token, "Availability": availability})
    except OSError as e:
        raise click.ClickException(f"cannot reach the shoal daemon at {api_socket}: {e}") from None
    if status != 200:
        try:
            msg = json.loads(raw).get("message", raw.decode())
        except ValueError:
            msg = raw.decode(errors="replace")
        click.echo(f"Error response from daemon: {msg}", err=True)
        raise SystemExit(1)
    click.echo("This node joined a swarm as a worker.")



@main.group()
def raft() -> None:
    """Offline check and repair of a stopped manager's Raft data (see docs/operations.md)."""


_DATA_DIR = click.option("--data-dir", type=click.Path(path_type=Path), default=Path("/var/lib/shoal"),
                         show_default=True, help="the stopped manager's data directory")
_UNLOCK_KEY = click.option("--unlock-key", default="", envvar="SHOAL_UNLOCK_KEY",
                           help="the swarm's unlock key, when autolock is on (or SHOAL_UNLOCK_KEY)")


@raft.command("check")
@_DATA_DIR
@_UNLOCK_KEY
def raft_check(data_dir: Path, unlock_key: str) -> None:
    """List the changes in the log and snapshot that a manager cannot apply; exit status 1 if there are any."""
    from shoal.errors import ShoalError
    from shoal.manager import logrepair

    try:
        storage = logrepair.open_storage(data_dir, unlock_key)
    except ShoalError as e:
        raise click.ClickException(e.message) from None
    try:
        bad = logrepair.check(storage)
        click.echo(f"log: entries {storage.first_index()} to {storage.last_index()}")
    finally:
        storage.close()
    for b in bad:
        click.echo(f"{b.where}: {b.kind} {b.obj_id}: {b.error}")
    if bad:
        raise SystemExit(1)
    click.echo("every change can be applied")


@raft.command("repair")
@_DATA_DIR
@_UNLOCK_KEY
@click.option("--index", "indexes", type=int, multiple=True, help="a log entry to repair (repeatable)")
@click.option("--snapshot", is_flag=True, help="repair the snapshot (drop its objects that cannot be decoded)")
def raft_repair(data_dir: Path, unlock_key: str, indexes: tuple[int, ...], snapshot: bool) -> None:
    """Drop the changes that cannot be applied from log entries INDEX (an entry left empty stays in the log as a
    no-op) and, with --snapshot, from the snapshot. Run it on every manager, all of them stopped."""
    from shoal.errors import ShoalError
    from shoal.manager import logrepair

    if not indexes and not snapshot:
        raise click.UsageError("name an entry with --index N (see `shoal raft check`) or give --snapshot")
    try:
        storage = logrepair.open_storage(data_dir, unlock_key)
        try:
            dropped = logrepair.repair_snapshot(storage) if snapshot else []
            for i in indexes:
                dropped += logrepair.repair_entry(storage, i)
        finally:
            storage.close()
    except ShoalError as e:
        raise click.ClickException(e.message) from None
    for b in dropped:
        click.echo(f"dropped from {b.where}: {b.kind} {b.obj_id}: {b.error}")
    if not dropped:
        click.echo("nothing to repair: every change there can be applied")


if __name__ == "__main__":
    main()
