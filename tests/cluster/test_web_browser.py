"""The web view in a real browser: Debian's headless Chromium driven by selenium against a manager (with
`--web-addr`) and a worker, both real `shoal daemon` processes, while the stock docker CLI changes the swarm.

A service created with the CLI appears, is scaled and rolled back from the page (each confirmed in its dialog,
the CLI sees the change, the events page shows it), its logs follow, the worker is drained and activated, and
when the worker's daemon dies the page shows the node down without a reload. A screenshot of each page is kept
in artifacts/web/ (printed), or $SHOAL_WEB_ARTIFACTS."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.managers import free_port
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until
from tests.support.workers import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SECRET_PAYLOAD = "browser-must-never-see-this-payload"
STACK = """\
version: "3.8"
services:
  api:
    image: busybox
    command: ["sleep", "600"]
    deploy:
      replicas: 1
"""


def artifacts() -> Path:
    d = Path(os.environ.get("SHOAL_WEB_ARTIFACTS") or Path(__file__).resolve().parents[2] / "artifacts" / "web")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            why = f"{path} is not installed (Debian's chromium and chromium-driver; scripts/test installs them)"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(why, pytrace=False)
            pytest.skip(why)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: script errors, CSP refusals
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1440,1100", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The page through selenium, read with one script call at a time (the view redraws every few seconds, so an
    element found earlier may be gone)."""

    def __init__(self, driver: Any, base: str, shots: Path) -> None:
        self.d = driver
        self.base = base
        self.shots = shots

    def text(self, css: str) -> str:
        return str(self.d.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", css))

    def count(self, css: str) -> int:
        return int(self.d.execute_script("return document.querySelectorAll(arguments[0]).length;", css))

    def body(self) -> str:
        return str(self.d.execute_script("return document.body.innerText;"))

    def wait_text(self, css: str, want: str, timeout: float = 60) -> None:
        wait_until(lambda: want in self.text(css), timeout, what=f"{css} to show {want!r}")

    def click(self, css: str) -> None:
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

        def once() -> bool:
            try:
                self.d.find_element("css selector", css).click()
                return True
            except (StaleElementReferenceException, NoSuchElementException):  # not drawn yet, or redrawn
                return False

        wait_until(once, 20, what=f"a click on {css}")

    def confirm(self, value: str | None = None) -> None:
        wait_until(lambda: self.d.execute_script("return document.getElementById('confirm').open;"), 10,
                   what="the confirmation dialog")
        if value is not None:
            field = self.d.find_element("id", "confirm-input")
            field.clear()
            field.send_keys(value)
        self.d.find_element("id", "confirm-ok").click()
        wait_until(lambda: not self.d.execute_script("return document.getElementById('confirm').open;"), 10,
                   what="the dialog to close")

    def go(self, route: str, name: str) -> None:
        """Follow a link of the page (its hash route) and wait until the page `name` is drawn."""
        self.d.execute_script("location.hash = arguments[0];", route)
        wait_until(lambda: self.d.execute_script("return document.body.dataset.page;") == name, 10,
                   what=f"the page {route}")

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.d.save_screenshot(str(path))
        return path


def _replicas(node: ShoalNode, name: str) -> int:
    return int(node.docker("service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}", name).stdout)


def test_the_web_view_in_chromium(tmp_path: Path, browser: Any) -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not on the PATH")
    shots = artifacts()
    print(f"\nscreenshots of the web view: {shots}")
    port = free_port()
    cl = Cluster(tmp_path)
    cl.manager = ShoalNode(tmp_path / "mgr", hostname="mgr", extra_args=("--web-addr", f"127.0.0.1:{port}"))
    try:
        cl.start()
        worker = cl.add_worker("w1")
        mgr = cl.manager
        page = Page(browser, f"http://127.0.0.1:{port}", shots)

        # Log in with the token the daemon printed (and keeps in its data dir).
        browser.get(f"{page.base}/")
        wait_until(lambda: browser.current_url.endswith("/login"), 10, what="the login page")
        browser.find_element("id", "token").send_keys("not-the-token")
        browser.find_element("id", "login-submit").click()
        page.wait_text("#login-error", "not this daemon's", 10)
        page.shot("login")
        browser.find_element("id", "token").send_keys((mgr.data_dir / "web-token").read_text().strip())
        browser.find_element("id", "login-submit").click()
        page.wait_text("#live", "live", 20)
        page.wait_text('tr[data-node="w1"] .state', "ready")
        browser.get_log("browser")  # what the wrong token's 401 logged

        # A service made with the docker CLI appears, converges, and its logs follow.
        sid = mgr.docker("service", "create", "--detach", "--name", "web", "--replicas", "2", "busybox", "sh", "-c",
                         "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done").stdout.strip()
        # A label is text, never markup, in the page.
        mgr.docker("secret", "create", "--label", "note=<img src=x id=xss>", "db-password", "-", input=SECRET_PAYLOAD)
        (mgr.workdir / "stack.yml").write_text(STACK)
        mgr.docker("stack", "deploy", "-c", "stack.yml", "shop")
        page.wait_text('tr[data-service="web"] .replicas', "2/2")
        page.shot("overview")
        page.go("#/services", "services")
        page.wait_text('tr[data-service="web"] .image', "busybox")
        page.wait_text('tr[data-stack="shop"]', "shop_api")
        page.wait_text('tr[data-stack="shop"]', "1/1")
        page.d.find_element("id", "filter").send_keys("shop")
        wait_until(lambda: page.count("table.services tbody tr") == 1, 10, what="the filter to leave one service")
        assert page.text("table.services tbody tr").startswith("shop_api")
        page.shot("services-filtered")
        page.d.find_element("id", "filter").clear()
        page.d.execute_script("document.getElementById('filter').dispatchEvent(new Event('input'));")
        wait_until(lambda: page.count("table.services tbody tr") == 2, 10, what="both services unfiltered")
        page.shot("services")
        page.go("#/grid", "grid")
        wait_until(lambda: page.count('td[data-service="web"][data-node="w1"] .task.running') == 2, 30,
                   what="two running tasks of web on w1 in the grid")
        assert page.count('td[data-service="web"][data-node="mgr"] .task') == 0  # the manager is drained
        page.shot("grid")

        # A failing service: its error in the services table and in its task history, with the exit code.
        broken = mgr.docker("service", "create", "--detach", "--name", "broken", "--restart-delay", "1s", "busybox",
                            "sh", "-c", "exit 3").stdout.strip()
        page.go("#/services", "services")
        page.wait_text('tr[data-service="broken"] .error', "non-zero exit (3)")
        page.go(f"#/services/{broken}", "service")
        wait_until(lambda: page.count("table.history tr.failed") >= 2, 60, what="two failed tasks in the history")
        assert "task: non-zero exit (3)" in page.text("table.history tr.failed")
        page.wait_text("dl.spec", "any, delay 1s")  # its restart policy, from --restart-delay
        page.shot("service-failing")
        mgr.docker("service", "rm", "broken")

        page.go(f"#/services/{sid}", "service")
        page.wait_text("#service-replicas", "2/2")
        page.wait_text("#logs", "tick")
        assert "web." in page.text("#logs") and "@w1" in page.text("#logs")

        # Scale from the page: confirmed in the dialog, seen by the CLI, converged in the page.
        page.click("#act-scale")
        page.confirm("3")
        wait_until(lambda: _replicas(mgr, "web") == 3, 30, what="the CLI to see 3 replicas")
        page.wait_text("#service-replicas", "3/3")
        page.shot("service")

        # Roll back from the page: back to the previous spec (2 replicas).
        page.click("#act-rollback")
        page.confirm()
        wait_until(lambda: _replicas(mgr, "web") == 2, 30, what="the CLI to see the rollback to 2 replicas")
        page.wait_text("#service-replicas", "2/2")
        page.wait_text("#service-update", "rollback completed")
        assert mgr.docker("service", "inspect", "-f", "{{.UpdateStatus.State}}", "web").stdout.strip() == \
            "rollback_completed"

        # Both changes are in the live events.
        page.go("#/events", "events")
        page.wait_text("#events", "replicas 2 → 3")
        page.wait_text("#events", "replicas 3 → 2")
        page.shot("events")

        page.go("#/objects", "objects")
        page.wait_text('table.secrets tr[data-name="db-password"]', "db-password")
        assert SECRET_PAYLOAD not in browser.page_source
        assert "<img src=x id=xss>" in page.text('table.secrets tr[data-name="db-password"]')
        assert page.count("#xss") == 0
        page.shot("objects")

        page.go("#/raft", "raft")
        page.wait_text("#raft-health", "Healthy")
        page.shot("raft")

        # Drain and activate the worker from the nodes page.
        page.go("#/nodes", "nodes")
        page.click('button.act-drain[data-node="w1"]')
        page.confirm()
        page.wait_text('tr[data-node="w1"] .availability', "drain")
        assert mgr.docker("node", "inspect", "-f", "{{.Spec.Availability}}", "w1").stdout.strip() == "drain"
        wait_until(lambda: page.text('tr[data-node="w1"] .tasks') == "0", 60, what="w1 drained of its tasks")
        page.click('button.act-activate[data-node="w1"]')
        page.confirm()
        page.wait_text('tr[data-node="w1"] .availability', "active")
        wait_until(lambda: page.text('tr[data-node="w1"] .tasks') == "3", 60,
                   what="web's two tasks and shop_api's back on w1")
        page.shot("nodes")

        # No script error and no Content-Security-Policy refusal on any page so far.
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors

        # The worker's daemon dies: the page follows it down, without a reload.
        marker = browser.execute_script("window.__noReload = 1; return window.__noReload;")
        worker.kill9()
        page.wait_text('tr[data-node="w1"] .state', "down", 30)
        assert browser.execute_script("return window.__noReload;") == marker
        page.shot("node-down")
        page.go("#/", "overview")
        page.wait_text('tr[data-service="web"] .replicas', "0/2")
        page.shot("overview-node-down")
    finally:
        cl.stop()


def test_a_scheduled_service_in_chromium(tmp_path: Path, browser: Any) -> None:
    """docs/cron.md in the page: the schedule and the next run in the services table and on the service's page,
    and `Run now`, confirmed in its dialog, runs it."""
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not on the PATH")
    port = free_port()
    node = ShoalNode(tmp_path / "cron", hostname="cron", extra_args=("--web-addr", f"127.0.0.1:{port}")).start()
    try:
        node.docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}")
        out = tmp_path / "runs.txt"
        sid = node.docker("service", "create", "--detach", "--name", "nightly", "--replicas", "0",
                          "--restart-condition", "none", "--label", "swarm.cronjob.enable=true",
                          "--label", "swarm.cronjob.schedule=0 3 * * *", "--label",
                          "com.shoal.cron.timezone=Europe/Berlin", "busybox", "sh", "-c",
                          f"echo ran >> {out}").stdout.strip()
        page = Page(browser, f"http://127.0.0.1:{port}", artifacts())
        browser.get(f"{page.base}/login?token={(node.data_dir / 'web-token').read_text().strip()}")
        page.wait_text("#live", "live", 20)
        page.go("#/services", "services")
        page.wait_text('tr[data-service="nightly"] .cron', "cron 0 3 * * *, next in")
        page.go(f"#/services/{sid}", "service")
        page.wait_text("#service-schedule", "0 3 * * * (Europe/Berlin)")
        page.wait_text("#service-next-run", "T0")  # 03:00 Berlin is 01:00 or 02:00 UTC
        page.shot("service-cron")
        page.click("#act-run-now")
        page.confirm()
        wait_until(lambda: out.exists() and out.read_text() == "ran\n", 30, what="the run asked for from the page")
        # no script error (the browser's own favicon request is answered 404: no icon is shipped)
        errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"
                  and "favicon.ico" not in e.get("message", "")]
        assert not errors, errors
    finally:
        node.stop()
