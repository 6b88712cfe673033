"""How the `shoal` subcommands find their daemon: docker's order of -H, DOCKER_HOST, --context, DOCKER_CONTEXT and
config.json's currentContext, the context store's meta.json and TLS files, and DOCKER_TLS_VERIFY/DOCKER_CERT_PATH.
Each test writes a docker configuration into a temporary HOME."""

from __future__ import annotations

import hashlib
import json
import ssl
from pathlib import Path

import pytest
import trustme

from shoal.ctl.endpoint import Endpoint, EndpointError, context_id, resolve


def write_context(cfg: Path, name: str, host: str, *, skip_verify: bool = False,
                  tls: dict[str, bytes] | None = None) -> None:
    cid = hashlib.sha256(name.encode()).hexdigest()
    meta = cfg / "contexts" / "meta" / cid
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({
        "Name": name, "Metadata": {"Description": "test"},
        "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": skip_verify}}}))
    if tls:
        d = cfg / "contexts" / "tls" / cid / "docker"
        d.mkdir(parents=True)
        for fname, data in tls.items():
            (d / fname).write_bytes(data)


def set_current(cfg: Path, name: str) -> None:
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "config.json").write_text(json.dumps({"auths": {}, "currentContext": name}))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    (h / ".docker").mkdir(parents=True)
    return h


def ep(home: Path, env: dict[str, str] | None = None, **kw: object) -> Endpoint:
    return resolve(env=env or {}, home=home, **kw)  # type: ignore[arg-type]


def test_context_id_is_docker_store_directory_name() -> None:
    # docker context create stores "default"-named dirs under the SHA-256 of the name
    assert context_id("prod") == hashlib.sha256(b"prod").hexdigest()


def test_default_is_the_docker_socket(home: Path) -> None:
    e = ep(home)
    assert (e.context, e.scheme, e.path, e.tls) == ("default", "unix", "/var/run/docker.sock", None)


def test_docker_host_env(home: Path) -> None:
    e = ep(home, {"DOCKER_HOST": "unix:///run/shoal.sock"})
    assert (e.context, e.url, e.path) == ("default", "unix:///run/shoal.sock", "/run/shoal.sock")


def test_host_flag_wins_over_env_and_current_context(home: Path) -> None:
    write_context(home / ".docker", "prod", "unix:///run/prod.sock")
    set_current(home / ".docker", "prod")
    e = ep(home, {"DOCKER_HOST": "unix:///run/env.sock", "DOCKER_CONTEXT": "prod"}, hosts=("tcp://10.1.2.3:2375",))
    assert (e.context, e.scheme, e.host, e.port) == ("default", "tcp", "10.1.2.3", 2375)


def test_only_one_host(home: Path) -> None:
    with pytest.raises(EndpointError, match="Specify only one -H"):
        ep(home, hosts=("unix:///a", "unix:///b"))


def test_host_and_context_conflict(home: Path) -> None:
    with pytest.raises(EndpointError, match="conflicting options: cannot specify both --host and --context"):
        ep(home, hosts=("unix:///a",), context="prod")


def test_current_context_from_config(home: Path) -> None:
    write_context(home / ".docker", "prod", "unix:///run/prod.sock")
    set_current(home / ".docker", "prod")
    e = ep(home)
    assert (e.context, e.url) == ("prod", "unix:///run/prod.sock")


def test_docker_host_env_beats_current_context(home: Path) -> None:
    write_context(home / ".docker", "prod", "unix:///run/prod.sock")
    set_current(home / ".docker", "prod")
    assert ep(home, {"DOCKER_HOST": "unix:///run/env.sock"}).url == "unix:///run/env.sock"


def test_docker_context_env_beats_config(home: Path) -> None:
    write_context(home / ".docker", "prod", "unix:///run/prod.sock")
    write_context(home / ".docker", "stage", "unix:///run/stage.sock")
    set_current(home / ".docker", "prod")
    assert ep(home, {"DOCKER_CONTEXT": "stage"}).url == "unix:///run/stage.sock"
    assert ep(home, {"DOCKER_CONTEXT": "stage"}, context="prod").url == "unix:///run/prod.sock"


def test_docker_config_env_moves_the_config_dir(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    write_context(other, "ci", "tcp://ci.example:2375")
    set_current(other, "ci")
    e = ep(home, {"DOCKER_CONFIG": str(other)})
    assert (e.context, e.host, e.port) == ("ci", "ci.example", 2375)


def test_context_default_by_name_is_the_default_endpoint(home: Path) -> None:
    e = ep(home, {"DOCKER_HOST": "unix:///run/x.sock"}, context="default")
    assert e.url == "unix:///run/x.sock"


def test_missing_contexts(home: Path) -> None:
    with pytest.raises(EndpointError, match='context \'nope\' does not exist'):
        ep(home, context="nope")
    set_current(home / ".docker", "gone")
    with pytest.raises(EndpointError, match=r"current context 'gone' is not found on the file system, please "
                                            r"check your config file at .*config\.json"):
        ep(home)


def test_broken_config_json(home: Path) -> None:
    (home / ".docker" / "config.json").write_text("{nope")
    with pytest.raises(EndpointError, match="is not valid JSON"):
        ep(home)


@pytest.mark.parametrize(("raw", "tls", "host", "port"), [
    ("tcp://10.0.0.1", False, "10.0.0.1", 2375),
    ("tcp://10.0.0.1", True, "10.0.0.1", 2376),
    ("tcp://[::1]:2400", False, "::1", 2400),
    ("10.0.0.2:2377", False, "10.0.0.2", 2377),
    ("tcp://:2380", False, "localhost", 2380),
])
def test_tcp_hosts(home: Path, raw: str, tls: bool, host: str, port: int, tmp_path: Path) -> None:
    env = {"DOCKER_HOST": raw}
    if tls:
        env["DOCKER_TLS"] = "1"
    e = ep(home, env)
    assert (e.scheme, e.host, e.port, e.tls is not None) == ("tcp", host, port, tls)


@pytest.mark.parametrize("raw", ["ssh://user@host", "npipe:////./pipe/docker_engine", "tcp://h:notaport"])
def test_unsupported_or_bad_hosts(home: Path, raw: str) -> None:
    with pytest.raises(EndpointError):
        ep(home, {"DOCKER_HOST": raw})


def _ca_files(tmp: Path) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("client")
    tmp.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    return ca, tmp


def test_tls_verify_from_env_and_cert_path(home: Path, tmp_path: Path) -> None:
    _, certs = _ca_files(tmp_path / "certs")
    e = ep(home, {"DOCKER_HOST": "tcp://127.0.0.1:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)})
    assert e.tls is not None and e.tls.verify
    assert (e.tls.ca, e.tls.cert, e.tls.key) == (certs / "ca.pem", certs / "cert.pem", certs / "key.pem")
    ctx = e.ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_tls_without_verify_skips_the_daemon_check(home: Path) -> None:
    e = ep(home, {"DOCKER_HOST": "tcp://127.0.0.1:2376"}, tls=True)
    ctx = e.ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE


def test_tls_verify_needs_the_ca(home: Path) -> None:
    with pytest.raises(EndpointError, match="could not read CA certificate"):
        ep(home, {"DOCKER_HOST": "tcp://127.0.0.1:2376", "DOCKER_TLS_VERIFY": "1"})


def test_tls_defaults_to_the_config_dir(home: Path) -> None:
    _ca_files(home / ".docker")
    e = ep(home, {"DOCKER_HOST": "tcp://127.0.0.1:2376"}, tlsverify=True)
    assert e.tls is not None and e.tls.ca == home / ".docker" / "ca.pem"


def test_context_tls_material(home: Path, tmp_path: Path) -> None:
    _, certs = _ca_files(tmp_path / "certs")
    files = {n: (certs / n).read_bytes() for n in ("ca.pem", "cert.pem", "key.pem")}
    write_context(home / ".docker", "secure", "tcp://10.9.9.9:2376", tls=files)
    write_context(home / ".docker", "lax", "tcp://10.9.9.8:2376", skip_verify=True, tls=files)
    e = ep(home, context="secure")
    assert e.tls is not None and e.tls.verify and e.tls.ca is not None and e.tls.ca.name == "ca.pem"
    assert e.ssl_context() is not None
    lax = ep(home, context="lax")
    assert lax.tls is not None and not lax.tls.verify
    ctx = lax.ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE


def test_context_without_tls_is_plain(home: Path) -> None:
    write_context(home / ".docker", "plain", "tcp://10.9.9.7:2375")
    e = ep(home, context="plain")
    assert e.tls is None and e.ssl_context() is None
