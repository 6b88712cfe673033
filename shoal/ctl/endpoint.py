"""Which daemon a `shoal` subcommand talks to, found the way the docker CLI finds it.

The context name, first match wins (docker's resolveContextName): `--context`; `default` when `-H/--host` is given
or `DOCKER_HOST` is set; `DOCKER_CONTEXT`; `currentContext` of `config.json` in the config directory
(`DOCKER_CONFIG`, else `~/.docker`); `default`. `--context` together with `-H` is refused, as docker refuses it.

The `default` context's host is `-H` (one only), else `DOCKER_HOST`, else `unix:///var/run/docker.sock`; its TLS
comes from `--tls`/`--tlsverify` (or non-empty `DOCKER_TLS`/`DOCKER_TLS_VERIFY`) with `ca.pem`, `cert.pem` and
`key.pem` from `DOCKER_CERT_PATH` (else the config directory) unless `--tlscacert`, `--tlscert`, `--tlskey` name
others. Any other context is read from `contexts/meta/<sha256 of its name>/meta.json` (its `docker` endpoint's `Host`
and `SkipTLSVerify`) with TLS material from `contexts/tls/<sha256>/docker/`, as `docker context create` stores it.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_CONTEXT = "default"


class EndpointError(Exception):
    """The flags, environment or docker configuration do not name a daemon that can be reached; the message is
    what to tell the user."""


@dataclass(frozen=True)
class TLSFiles:
    ca: Path | None
    cert: Path | None
    key: Path | None
    verify: bool  # check the daemon's certificate against `ca` (docker's --tlsverify; not SkipTLSVerify)


@dataclass(frozen=True)
class Endpoint:
    """A daemon's address: `unix` with `path`, or `tcp` with `host` and `port` (and `tls` when it speaks TLS)."""
    context: str
    url: str  # as given: unix:///run/shoal.sock, tcp://10.0.0.1:2376
    scheme: str  # unix | tcp
    path: str = ""
    host: str = ""
    port: int = 0
    tls: TLSFiles | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context docker would use for this endpoint (None: plain HTTP)."""
        if self.tls is None:
            return None
        t = self.tls
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if t.verify:
                if t.ca is not None:
                    ctx.load_verify_locations(cafile=str(t.ca))
            else:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if t.cert is not None and t.key is not None:
                ctx.load_cert_chain(str(t.cert), str(t.key))
        except (OSError, ssl.SSLError) as e:
            raise EndpointError(f"could not load the TLS files of context {self.context!r}: {e}") from None
        return ctx


def config_dir(env: Mapping[str, str], home: Path) -> Path:
    """docker's configuration directory: DOCKER_CONFIG, else ~/.docker."""
    return Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"


def context_id(name: str) -> str:
    """The directory name `docker context` stores a context under: the hex SHA-256 of its name."""
    return hashlib.sha256(name.encode()).hexdigest()


def context_name(flag_context: str | None, hosts: tuple[str, ...], env: Mapping[str, str], cfg_dir: Path) -> str:
    """The context the flags, environment and config.json select (docker's order)."""
    if flag_context and hosts:
        raise EndpointError("conflicting options: cannot specify both --host and --context")
    if flag_context:
        return flag_context
    if hosts or env.get("DOCKER_HOST"):
        return DEFAULT_CONTEXT
    if env.get("DOCKER_CONTEXT"):
        return env["DOCKER_CONTEXT"]
    current = _read_config(cfg_dir).get("currentContext")
    if isinstance(current, str) and current:
        return current
    return DEFAULT_CONTEXT


def _read_config(cfg_dir: Path) -> dict[str, object]:
    path = cfg_dir / "config.json"
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise EndpointError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError as e:
        raise EndpointError(f"{path} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def parse_host(raw: str, tls: bool, context: str = DEFAULT_CONTEXT, tls_files: TLSFiles | None = None) -> Endpoint:
    """An address as docker's -H takes it: unix://PATH, tcp://HOST[:PORT] (port 2375, or 2376 with TLS), or
    HOST:PORT (tcp)."""
    url = raw.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "tcp", url
    scheme = scheme.lower()
    if scheme == "unix":
        if not rest:
            rest = DEFAULT_HOST.removeprefix("unix://")
        return Endpoint(context, f"unix://{rest}", "unix", path=rest)
    if scheme in ("tcp", "http", "https"):
        tls = tls or scheme == "https"
        hostport = rest.split("/", 1)[0]
        if hostport.startswith("["):
            host, _, tail = hostport[1:].partition("]")
            port_s = tail.removeprefix(":")
        elif hostport.count(":") == 1:
            host, _, port_s = hostport.partition(":")
        else:
            host, port_s = hostport, ""
        host = host or "localhost"
        default_port = 2376 if tls else 2375
        try:
            port = int(port_s) if port_s else default_port
        except ValueError:
            port = -1
        if not 0 < port < 65536:
            raise EndpointError(f"invalid bind address format: {raw}")
        files = tls_files if tls_files is not None else (TLSFiles(None, None, None, False) if tls else None)
        return Endpoint(context, f"tcp://{'[' + host + ']' if ':' in host else host}:{port}", "tcp", host=host,
                        port=port, tls=files if tls else None)
    raise EndpointError(f"{scheme}:// hosts are not supported by shoal (use unix:// or tcp://): {raw}")


def _existing(p: Path | None) -> Path | None:
    return p if p is not None and p.is_file() else None


def resolve(*, hosts: tuple[str, ...] = (), context: str | None = None, tls: bool = False, tlsverify: bool = False,
            tlscacert: Path | None = None, tlscert: Path | None = None, tlskey: Path | None = None,
            env: Mapping[str, str], home: Path) -> Endpoint:
    """The daemon the flags (`-H`, `--context`, `--tls...`), environment and docker configuration select."""
    cfg_dir = config_dir(env, home)
    name = context_name(context, hosts, env, cfg_dir)
    if name == DEFAULT_CONTEXT:
        if len(hosts) > 1:
            raise EndpointError("Specify only one -H")
        host = hosts[0] if hosts else (env.get("DOCKER_HOST") or DEFAULT_HOST)
        verify = tlsverify or bool(env.get("DOCKER_TLS_VERIFY"))
        use_tls = tls or verify or bool(env.get("DOCKER_TLS"))
        files = None
        if use_tls:
            certs = Path(env["DOCKER_CERT_PATH"]) if env.get("DOCKER_CERT_PATH") else cfg_dir
            ca = tlscacert or certs / "ca.pem"
            if verify and not ca.is_file():
                raise EndpointError(f"could not read CA certificate {str(ca)!r}: no such file")
            cert, key = tlscert or certs / "cert.pem", tlskey or certs / "key.pem"
            if (tlscert or tlskey) and not (cert.is_file() and key.is_file()):
                raise EndpointError(f"could not load X509 key pair: {cert}, {key}")
            pair = cert.is_file() and key.is_file()
            files = TLSFiles(ca if verify else None, cert if pair else None, key if pair else None, verify)
        return parse_host(host, use_tls, DEFAULT_CONTEXT, files)
    return _from_store(name, cfg_dir, from_config=not context and not env.get("DOCKER_CONTEXT"))


def _from_store(name: str, cfg_dir: Path, from_config: bool) -> Endpoint:
    cid = context_id(name)
    meta_path = cfg_dir / "contexts" / "meta" / cid / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        if from_config:
            raise EndpointError(f"current context {name!r} is not found on the file system, please check your "
                                f"config file at {cfg_dir / 'config.json'}") from None
        raise EndpointError(f"context {name!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise EndpointError(f"context {name!r}: cannot read {meta_path}: {e}") from None
    ep = (meta.get("Endpoints") or {}).get("docker") if isinstance(meta, dict) else None
    if not isinstance(ep, dict):
        raise EndpointError(f"context {name!r} has no docker endpoint")
    host = ep.get("Host") or DEFAULT_HOST
    tls_dir = cfg_dir / "contexts" / "tls" / cid / "docker"
    ca, cert, key = (_existing(tls_dir / f) for f in ("ca.pem", "cert.pem", "key.pem"))
    has_tls = any(p is not None for p in (ca, cert, key))
    files = TLSFiles(ca, cert if key else None, key if cert else None, verify=not ep.get("SkipTLSVerify", False))
    return parse_host(str(host), has_tls, name, files if has_tls else None)
