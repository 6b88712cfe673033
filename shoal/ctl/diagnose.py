"""`shoal diagnose`: a support bundle, written as a tar.gz (or a directory), of what one daemon's API tells about the
cluster: versions, the swarm's configuration, nodes, services, tasks, networks, secret and config metadata, this
member's Raft state, the last hour of events, the daemon's newest log lines, and the status screen as text.

Nothing secret goes in. Answers are cut down before they are written (`redact`): secret and config payloads
(`Spec.Data`), join tokens, CA signing keys, the unlock key and the values of service environment variables are
replaced by `<redacted>`; then every file's text is scrubbed once more for join tokens (`SWMTKN-1-...`), unlock
keys (`SWMKEY-1-...`) and PEM private keys, wherever they appear (a log line, an event attribute, a label).
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal import __version__
from shoal.ctl.client import APIError, Client, Unreachable

REDACTED = "<redacted>"

# Keys whose values never leave the daemon in a bundle, wherever they sit in an answer.
_SECRET_KEYS = frozenset({"JoinTokens", "SigningCAKey", "UnlockKey", "CAKey", "Key", "PrivateKey", "Password",
                          "IdentityToken", "RegistryToken"})
_TEXT_SECRETS = [
    re.compile(r"SWMTKN-1-[A-Za-z0-9]+-[A-Za-z0-9]+"),
    re.compile(r"SWMKEY-1-[A-Za-z0-9+/=_-]+"),
    re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S),
]


def redact(obj: Any, *, payloads: bool = False) -> Any:
    """A copy of an API answer without what must stay secret: `_SECRET_KEYS` anywhere, `Data` where `payloads`
    (secrets' and configs' Spec), and the values of `Env` entries (`NAME=<redacted>`)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if k in _SECRET_KEYS or (payloads and k == "Data"):
                out[k] = REDACTED if v not in (None, "", {}, []) else v
            elif k == "Env" and isinstance(v, list):
                out[k] = [f"{e.split('=', 1)[0]}={REDACTED}" if isinstance(e, str) and "=" in e else e for e in v]
            else:
                out[k] = redact(v, payloads=payloads)
        return out
    if isinstance(obj, list):
        return [redact(v, payloads=payloads) for v in obj]
    return obj


def scrub(text: str) -> str:
    """`text` with join tokens, unlock keys and PEM private keys replaced, wherever they appear."""
    for rx in _TEXT_SECRETS:
        text = rx.sub(REDACTED, text)
    return text


@dataclass
class Bundle:
    files: dict[str, str] = field(default_factory=dict)  # name in the bundle -> text
    missing: list[str] = field(default_factory=list)  # what could not be read, and why

    def add_json(self, name: str, obj: Any) -> None:
        self.files[name] = json.dumps(obj, indent=2, sort_keys=True) + "\n"

    def add_text(self, name: str, text: str) -> None:
        self.files[name] = text if text.endswith("\n") or not text else text + "\n"


def collect(client: Client, *, events_since: float, log_lines: int, status_text: Callable[[], str],
            context: str, now: float | None = None) -> Bundle:
    """Read everything the bundle holds from the daemon; what fails is listed in `missing`, not fatal."""
    now = time.time() if now is None else now
    b = Bundle()
    b.add_json("client.json", {"shoal": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
                               "endpoint": client.endpoint.url, "context": context,
                               "collected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})

    def get(name: str, path: str, payloads: bool = False, **query: Any) -> Any:
        try:
            obj = client.get(path, **query)
        except APIError as e:
            b.missing.append(f"{name}: GET {path}: {e.status} {e.message}")
            return None
        b.add_json(name, redact(obj, payloads=payloads))
        return obj

    get("version.json", "/version")
    get("info.json", "/info")
    get("swarm.json", "/swarm")
    get("nodes.json", "/nodes")
    get("services.json", "/services", status="true")
    get("tasks.json", "/tasks")
    get("networks.json", "/networks")
    get("secrets.json", "/secrets", payloads=True)
    get("configs.json", "/configs", payloads=True)
    get("raft.json", "/_shoal/raft")
    get("agent.json", "/_shoal/agent")
    try:
        events = list(client.stream_json("/events", since=f"{events_since:.6f}", until=f"{now:.6f}"))
        b.add_text("events.jsonl", "".join(json.dumps(redact(e), sort_keys=True) + "\n" for e in events))
    except APIError as e:
        b.missing.append(f"events.jsonl: GET /events: {e.status} {e.message}")
    try:
        log = client.get("/_shoal/log", tail=str(log_lines))
        if isinstance(log, dict) and log.get("kept"):
            b.add_text("daemon.log", "\n".join(str(x) for x in log.get("lines") or []))
        else:
            b.missing.append("daemon.log: the daemon keeps no log lines in memory")
    except APIError as e:
        b.missing.append(f"daemon.log: GET /_shoal/log: {e.status} {e.message}")
    try:
        b.add_text("status.txt", status_text())
    except (APIError, Unreachable) as e:
        b.missing.append(f"status.txt: {e}")
    b.add_text("README.txt", _readme(b))
    return b


def _readme(b: Bundle) -> str:
    lines = ["Shoal support bundle (shoal diagnose).", "",
             "Redacted: secret and config payloads, join tokens, CA signing keys, the unlock key, private keys",
             "and the values of service environment variables (names are kept).", "", "Files:"]
    lines += [f"  {name}" for name in sorted(b.files)]
    if b.missing:
        lines += ["", "Not collected:"] + [f"  {m}" for m in b.missing]
    return "\n".join(lines) + "\n"


def write(b: Bundle, dest: Path, as_dir: bool, top: str) -> Path:
    """Write the bundle under `top/` in a tar.gz at `dest` (or the directory `dest`), every file scrubbed."""
    if as_dir:
        dest.mkdir(mode=0o700, parents=True, exist_ok=False)
        for name, text in sorted(b.files.items()):
            fd = os.open(dest / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(scrub(text))
        return dest
    with tarfile.open(dest, "w:gz") as tar:
        for name, text in sorted(b.files.items()):
            data = scrub(text).encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    dest.chmod(0o600)
    return dest
