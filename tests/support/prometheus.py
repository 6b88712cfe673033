"""A real Prometheus server for tests (Debian's `prometheus` package), started on a generated config.

`ensure_prometheus()` finds the binary, installing the package first when it is missing and we are root on a
Debian machine (as scripts/test does); it raises `PrometheusUnavailable` with the reason otherwise.
`Prometheus(workdir, targets).start()` runs it on a free loopback port, scraping each HOST:PORT target's
`/metrics` every second, and `.query(promql)` asks its HTTP API.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.managers import free_port
from tests.support.wait import wait_until

START_TIMEOUT = 60.0


class PrometheusUnavailable(RuntimeError):
    pass


def ensure_prometheus() -> str:
    """The path of the `prometheus` binary, installed with apt-get when missing (root only)."""
    found = shutil.which("prometheus")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PrometheusUnavailable("prometheus is not installed, and installing it needs root and apt-get "
                                    "(apt-get install prometheus)")
    # One installer at a time (xdist workers): the others wait, then find the binary.
    with open(Path(tempfile.gettempdir()) / "shoal-test-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = shutil.which("prometheus")
        if found:
            return found
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        found = shutil.which("prometheus")
        if done.returncode != 0 or not found:
            raise PrometheusUnavailable(f"apt-get install prometheus failed: {done.stderr.strip()[-500:]}")
        return found


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str], binary: str | None = None,
                 rule_files: tuple[Path, ...] = ()) -> None:
        self.workdir = workdir
        self.targets = targets
        self.rule_files = rule_files
        self.binary = binary or ensure_prometheus()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        config = self.workdir / "prometheus.yml"
        # JSON is YAML: the generated config needs no YAML writer.
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": "shoal", "static_configs": [{"targets": self.targets}]}],
        }))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self._ready, START_TIMEOUT, interval=0.2, what="prometheus to be ready")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise PrometheusUnavailable(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector `promql` evaluates to now (`/api/v1/query`): [{"metric": {...}, "value": [t, "v"]}]."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The one sample `promql` evaluates to, or None while there is none."""
        result = self.query(promql)
        if len(result) != 1:
            return None
        return float(result[0]["value"][1])

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its health ("ok" once evaluated without error) and state."""
        with urllib.request.urlopen(f"{self.url}/api/v1/rules", timeout=5) as r:
            body = json.load(r)
        return [rule for g in body["data"]["groups"] for rule in g["rules"]]

    def targets_health(self) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as r:
            body = json.load(r)
        return [t["health"] for t in body["data"]["activeTargets"]]

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
