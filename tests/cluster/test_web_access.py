"""Who gets into the web view (`shoal daemon --web-addr`), and what never leaves it: each refusal, on a real
daemon driven by the stock docker CLI.

Loopback without TLS, off loopback only with TLS (refused at start otherwise); a login by the token printed at
start or, over TLS, a client certificate from the swarm's CA that is not a worker's; DNS rebinding refused by
the Host check; changes only with the X-Shoal-Web header and this site's Origin; no secret or config payload in
any answer; actions pass the Engine API's validation and show in `docker events`."""

from __future__ import annotations

import base64
import json
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.managers import free_port
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until
from tests.support.web import CSRF, WebClient
from tests.support.workers import Cluster, join_worker

SECRET_PAYLOAD = b"hunter2-web-view-must-never-show-this"
CONFIG_PAYLOAD = b"config-payload-the-page-does-not-render"


def _require_cli() -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not on the PATH")


@pytest.fixture(scope="module")
def web_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ShoalNode, str]]:
    _require_cli()
    port = free_port()
    node = ShoalNode(tmp_path_factory.mktemp("web"), extra_args=("--web-addr", f"127.0.0.1:{port}")).start()
    try:
        node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")
        yield node, f"http://127.0.0.1:{port}"
    finally:
        node.stop()


def _token(node: ShoalNode) -> str:
    return (node.data_dir / "web-token").read_text().strip()


def _logged_in(node: ShoalNode, base: str) -> WebClient:
    c = WebClient(base)
    assert c.login(_token(node)) == 302
    return c


def _replicas(node: ShoalNode, name: str) -> int:
    return int(node.docker("service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}", name).stdout)


def _service(node: ShoalNode, name: str, replicas: int = 1) -> str:
    return node.docker("service", "create", "--detach", "--name", name, "--replicas", str(replicas), "busybox",
                       "sleep", "600").stdout.strip()


def test_off_loopback_without_tls_is_refused_at_start(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "shoal.cli", "daemon", "--data-dir", str(tmp_path / "d"), "--api-socket",
            str(tmp_path / "s.sock"), "--executor", "process"]
    for args, why in ((["--web-addr", f"0.0.0.0:{free_port()}"], "needs TLS"),
                      (["--web-addr", f"0.0.0.0:{free_port()}", "--web-tlscert", str(tmp_path / "c.pem")],
                       "go together"),
                      (["--web-tlscert", "c.pem", "--web-tlskey", "k.pem"], "apply to --web-addr")):
        r = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r
        assert why in r.stderr, r.stderr
    assert not (tmp_path / "s.sock").exists()


def test_the_token_is_printed_at_start_and_kept_for_root_only(web_node: tuple[ShoalNode, str]) -> None:
    node, base = web_node
    token = _token(node)
    assert len(token) >= 40
    assert (node.data_dir / "web-token").stat().st_mode & 0o777 == 0o600
    assert f"{base}/login?token={token}" in node.log_path.read_text()


def test_nothing_but_the_login_page_without_a_login(web_node: tuple[ShoalNode, str]) -> None:
    node, base = web_node
    sid = _service(node, "nologin")
    c = WebClient(base)
    status, headers, _ = c.get("/")
    assert (status, headers["location"]) == (302, "/login")
    for path in ("/api/state", "/api/stream", f"/api/services/{sid}/logs"):
        status, headers, body = c.get(path)
        assert status == 401, path
        assert "log in first" in json.loads(body)["message"]
    for path, body in ((f"/api/services/{sid}/scale", {"replicas": 3}), (f"/api/services/{sid}/rollback", {}),
                       (f"/api/services/{sid}/force-update", {}),
                       (f"/api/nodes/{node.docker('info', '-f', '{{.Swarm.NodeID}}').stdout.strip()}/availability",
                        {"availability": "drain"})):
        status, _, _ = c.post(path, body, headers=CSRF)
        assert status == 401, path
    assert _replicas(node, "nologin") == 1
    assert node.docker("node", "ls", "--format", "{{.Availability}}").stdout.split() == ["Active"]
    status, _, body = c.get("/login")
    assert status == 200 and b'name="token"' in body
    status, _, body = c.get("/static/app.js")  # the assets hold no data: served to anyone
    assert status == 200 and b"EventSource" in body


def test_a_wrong_token_or_a_forged_cookie_gets_nothing(web_node: tuple[ShoalNode, str]) -> None:
    node, base = web_node
    c = WebClient(base)
    assert c.login(_token(node)[:-1] + "x") == 401
    assert c.login("") == 401
    assert c.cookies == {}
    status, _, _ = c.get(f"/login?token={_token(node)[::-1]}")
    assert status == 401
    port = base.rsplit(":", 1)[1]
    c.cookies = {f"shoal_web_{port}": "forged"}
    assert c.get("/api/state")[0] == 401


def test_token_login_gives_a_strict_httponly_session_until_logout(web_node: tuple[ShoalNode, str]) -> None:
    node, base = web_node
    c = WebClient(base)
    status, headers, _ = c.get(f"/login?token={_token(node)}")  # the link the daemon prints
    assert (status, headers["location"]) == (302, "/")
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    status, headers, body = c.get("/api/state")
    assert status == 200
    assert json.loads(body)["self"]["manager"] is True
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert c.post("/logout", headers=CSRF)[0] == 302
    assert c.get("/api/state")[0] == 401


def test_a_foreign_host_name_is_refused_on_loopback(web_node: tuple[ShoalNode, str]) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 reaches the port, not the view."""
    node, base = web_node
    c = _logged_in(node, base)
    for host in ("evil.example", f"evil.example:{base.rsplit(':', 1)[1]}", "127.0.0.1.nip.io"):
        status, _, _ = c.get("/api/state", headers={"Host": host, "Cookie": c.request_cookie()})
        assert status == 421, host
    assert c.get("/api/state", headers={"Host": "localhost", "Cookie": c.request_cookie()})[0] == 200


def test_changes_need_the_header_and_this_sites_origin(web_node: tuple[ShoalNode, str]) -> None:
    node, base = web_node
    sid = _service(node, "csrf")
    c = _logged_in(node, base)
    assert c.post(f"/api/services/{sid}/scale", {"replicas": 3})[0] == 403
    assert c.post(f"/api/services/{sid}/scale", {"replicas": 3},
                  headers={**CSRF, "Origin": "http://evil.example"})[0] == 403
    assert c.post_form("/login", {"token": _token(node)}, headers={"Origin": "http://evil.example"})[0] == 403
    assert _replicas(node, "csrf") == 1
    since = time.time() - 1
    status, _, body = c.post(f"/api/services/{sid}/scale", {"replicas": 3}, headers={**CSRF, "Origin": base})
    assert status == 200, body
    assert json.loads(body)["done"] == "scaled to 3"
    assert _replicas(node, "csrf") == 3
    # Recorded in the swarm's events, as `docker service scale` is.
    out = node.docker("events", "--since", f"{since:.3f}", "--until", f"{time.time() + 1:.3f}", "--filter",
                      "type=service", "--filter", "service=csrf", "--format", "{{json .}}").stdout
    updates = [json.loads(line) for line in out.splitlines() if '"update"' in line]
    assert any(e["Actor"]["Attributes"].get("replicas.new") == "3" for e in updates), out


def test_actions_get_the_engine_apis_answers(web_node: tuple[ShoalNode, str]) -> None:
    node, base = web_node
    sid = _service(node, "bad-input")
    gid = node.docker("service", "create", "--detach", "--name", "everywhere", "--mode", "global", "busybox",
                      "sleep", "600").stdout.strip()
    c = _logged_in(node, base)
    for body in ({"replicas": -1}, {"replicas": "3"}, {"replicas": True}, {}):
        status, _, answer = c.post(f"/api/services/{sid}/scale", body, headers=CSRF)
        assert status == 400, body
    status, _, answer = c.post(f"/api/services/{gid}/scale", {"replicas": 2}, headers=CSRF)
    assert (status, json.loads(answer)["message"]) == (
        400, "scale can only be used with replicated or replicated-job mode")
    status, _, answer = c.post("/api/services/nosuchservice/rollback", headers=CSRF)
    assert (status, json.loads(answer)["message"]) == (404, "service nosuchservice not found")
    status, _, answer = c.post(f"/api/services/{sid}/rollback", headers=CSRF)  # the Engine API's own refusal
    assert status == 400 and "does not have a previous spec" in json.loads(answer)["message"], answer
    status, _, answer = c.post(f"/api/services/{sid}/force-update", headers=CSRF)
    assert (status, json.loads(answer)["done"]) == (200, "force-updated")
    assert node.docker("service", "inspect", "-f", "{{.Spec.TaskTemplate.ForceUpdate}}",
                       "bad-input").stdout.strip() == "1"
    nid = node.docker("info", "-f", "{{.Swarm.NodeID}}").stdout.strip()
    status, _, _ = c.post(f"/api/nodes/{nid}/availability", {"availability": "gone"}, headers=CSRF)
    assert status == 400
    assert c.request("POST", f"/api/services/{sid}/scale", body=b"{nope", headers={
        **CSRF, "Content-Type": "application/json", "Cookie": c.request_cookie()})[0] == 400


def test_no_secret_or_config_payload_is_ever_sent(web_node: tuple[ShoalNode, str]) -> None:
    node, base = web_node
    node.docker("secret", "create", "--label", "team=web", "db-password", "-", input=SECRET_PAYLOAD.decode())
    node.docker("config", "create", "app-config", "-", input=CONFIG_PAYLOAD.decode())
    node.docker("service", "create", "--detach", "--name", "uses-secret", "--secret", "db-password", "--config",
                "app-config", "busybox", "sleep", "600")
    c = _logged_in(node, base)
    answers = [c.get(p)[2] for p in ("/", "/api/state", "/static/app.js", "/static/style.css", "/login")]
    state = json.loads(answers[1])
    assert [s["name"] for s in state["secrets"]] == ["db-password"]
    assert state["secrets"][0]["labels"] == {"team": "web"}
    assert [s["name"] for s in state["configs"]] == ["app-config"]
    status, head = c.stream_head("/api/stream", b"event: state")
    assert status == 200
    answers.append(head)
    forbidden = [p for payload in (SECRET_PAYLOAD, CONFIG_PAYLOAD)
                 for p in (payload, base64.b64encode(payload), payload.hex().encode())]
    for body in answers:
        for p in forbidden:
            assert p not in body
    # Nor any field the page does not name (a Spec.Data would have to pass views.secret_view).
    assert set(state["secrets"][0]) == {"id", "name", "created", "updated", "labels", "driver", "templating"}


def test_the_stream_sends_the_model_and_the_events(web_node: tuple[ShoalNode, str]) -> None:
    node, base = web_node
    _service(node, "streamed")
    c = _logged_in(node, base)
    status, head = c.stream_head("/api/stream", b'"name":"streamed"}}')  # its create event
    assert status == 200
    first = head.split(b"\n\n", 1)[0].decode()
    assert first.startswith("event: state\ndata: ")
    model = json.loads(first.split("data: ", 1)[1])
    assert "streamed" in [s["name"] for s in model["services"]]
    assert re.search(rb'event: event\ndata: \{[^\n]*"type":"service","action":"create"[^\n]*"streamed"', head)


@pytest.mark.slow
def test_a_worker_node_sends_the_browser_to_a_manager(tmp_path: Path) -> None:
    _require_cli()
    port = free_port()
    cl = Cluster(tmp_path)
    try:
        cl.start()
        w = ShoalNode(tmp_path / "w1", hostname="w1", extra_args=("--web-addr", f"127.0.0.1:{port}")).start()
        cl.workers["w1"] = w
        join_worker(cl.manager, w, cl.addr)
        c = _logged_in(w, f"http://127.0.0.1:{port}")
        model = json.loads(c.get("/api/state")[2])
        assert model["error"] == "this node is a worker: open the web view of a manager"
        # Its actions get what its Engine API gives a worker: dockerd's refusal.
        sid = _service(cl.manager, "on-manager")
        status, _, body = c.post(f"/api/services/{sid}/scale", {"replicas": 2}, headers=CSRF)
        assert status == 503, body
        assert json.loads(body)["message"].startswith("This node is not a swarm manager.")
        assert _replicas(cl.manager, "on-manager") == 1
    finally:
        cl.stop()


@pytest.mark.slow
def test_tls_client_certificates_of_the_swarms_ca(tmp_path: Path) -> None:
    """Off loopback, over TLS: a manager's certificate from the swarm's CA logs in; a worker's, none, or plain
    HTTP gets nothing; the token still works, with a Secure cookie."""
    _require_cli()
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "web.pem"))
    cl = Cluster(tmp_path)
    try:
        cl.start()
        worker = cl.add_worker("w1")
        root = tmp_path / "swarm-ca.pem"
        root.write_text(cl.manager.docker("swarm", "ca").stdout)
        port = free_port()
        cl.manager.extra_args = ("--web-addr", f"0.0.0.0:{port}", "--web-tlscert", str(tmp_path / "web.pem"),
                                 "--web-tlskey", str(tmp_path / "web.pem"), "--web-tlscacert", str(root))
        cl.manager.restart()
        base = f"https://127.0.0.1:{port}"

        def client(node: ShoalNode | None) -> WebClient:
            ctx = ssl.create_default_context(cafile=None)
            ca.configure_trust(ctx)
            if node is not None:
                certs = node.data_dir / "certificates"
                ctx.load_cert_chain(str(certs / "swarm-node.crt"), str(certs / "swarm-node.key"))
            return WebClient(base, ctx)

        manager = client(cl.manager)
        status = wait_until(lambda: manager.get("/api/state")[0] if cl.manager.ping() else 0,
                            what="the web view over TLS")
        assert status == 200
        assert json.loads(manager.get("/api/state")[2])["self"]["manager"] is True
        assert client(worker).get("/api/state")[0] == 401
        anonymous = client(None)
        assert anonymous.get("/api/state")[0] == 401
        with pytest.raises((ConnectionError, OSError)):
            WebClient(f"http://127.0.0.1:{port}").get("/api/state", timeout=5)
        assert anonymous.login(_token(cl.manager)) == 302
        assert "Secure" in anonymous.get(f"/login?token={_token(cl.manager)}")[1]["set-cookie"]
        assert anonymous.get("/api/state")[0] == 200
    finally:
        cl.stop()


def test_a_scheduled_service_shows_its_next_run_and_runs_now(web_node: tuple[ShoalNode, str]) -> None:
    """docs/cron.md in the web view: the schedule and next run in the model, and the `Run now` action (Shoal's
    POST /_shoal/cron/{id}/run), refused for a service without a schedule."""
    node, base = web_node
    out = node.workdir / "web-cron.txt"
    sid = node.docker("service", "create", "--detach", "--name", "webcron", "--replicas", "0",
                      "--restart-condition", "none", "--label", "swarm.cronjob.enable=true",
                      "--label", "swarm.cronjob.schedule=@yearly", "busybox", "sh", "-c",
                      f"echo ran >> {out}").stdout.strip()
    plain = _service(node, "notcron")
    c = _logged_in(node, base)

    def cron_model() -> dict[str, str] | None:
        status, _, body = c.get("/api/state")
        assert status == 200
        (svc,) = [s for s in json.loads(body)["services"] if s["id"] == sid]
        return svc["cron"] if svc["cron"] and svc["cron"]["next_run"] else None

    cron = wait_until(cron_model, 20, what="the next run in the model")
    assert cron["schedule"] == "@yearly" and cron["timezone"] == "UTC" and cron["next_run"].endswith("-01-01T00:00:00Z")
    status, _, answer = c.post(f"/api/services/{sid}/run-now", headers=CSRF)
    assert (status, json.loads(answer)["done"]) == (200, "run requested")
    wait_until(lambda: out.exists() and out.read_text() == "ran\n", 30, what="the run asked for")
    status, _, answer = c.post(f"/api/services/{plain}/run-now", headers=CSRF)
    assert status == 400 and "has no schedule" in json.loads(answer)["message"], answer
    assert WebClient(base).post(f"/api/services/{sid}/run-now", {}, headers=CSRF)[0] == 401
