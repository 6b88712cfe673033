"""The differential harness: one scenario, two swarms, a structured diff of the normalised answers.

`Side` is one swarm manager reached three ways: raw HTTP over its unix socket (`call`), the stock CLI (`cli`)
and docker-py (`client`). The reference side is a private dockerd 20.10 in swarm mode; the other is Shoal
(`shoal daemon --executor docker`) on a second private dockerd.

A scenario is a function of a `Side` that returns its `Answer`s, in order; `compare()` runs it on both sides at
once (two threads: timing is not compared, only what is answered), normalises every answer (`normalise`) and
diffs them (`diff`). A difference is acceptable only when `deviations.yaml` lists it (request pattern + JSON
pointer pattern + reason); anything else fails the test with the request, the pointer and both values.

Normalisation replaces exactly what differs between two equally correct swarms and nothing else: IDs (swarm
object IDs, 64-hex engine IDs, short IDs in CLI output), timestamps (and the CLI's "2 seconds ago"), object
versions and engine versions, join tokens, unlock keys and CA material, and allocator-chosen addresses and
ports (IPv4 addresses/subnets, `host:port` listen addresses, published ports from the 30000-32767 range).
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

HERE = Path(__file__).parent
DEVIATIONS_FILE = HERE / "deviations.yaml"
# The version the comparison runs at: Debian's dockerd 20.10 speaks up to 1.41.
DIFF_API = "1.41"


def run_all() -> bool:
    """True for the long run (`SHOAL_DIFF_ALL=1`): every stack file and every scenario variant."""
    return os.environ.get("SHOAL_DIFF_ALL", "") not in ("", "0", "false")


# --- talking to one side ---------------------------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


@dataclass
class Answer:
    """One observed answer: `label` names the request with its variable parts as placeholders
    ("GET /services/{id}"), it is what deviations.yaml patterns match."""

    label: str
    status: int | None = None
    body: Any = None
    ordered: bool = False  # a list body whose order is part of the answer (events); others are sorted
    cli: bool = False  # the stock CLI's output: normalised as text a user reads


@dataclass
class Side:
    name: str  # "dockerd" or "shoal"
    socket_path: str
    config_dir: Path
    version: str = DIFF_API
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def request(self, method: str, path: str, body: Any = None, *, query: dict[str, Any] | None = None,
                version: str | None = None, raw: bytes | None = None, timeout: float = 60.0,
                headers: dict[str, str] | None = None, binary: bool = False) -> tuple[int, Any, dict[str, str]]:
        """One HTTP request; the body of the answer is decoded JSON when it is JSON, else text (bytes with
        `binary`)."""
        v = self.version if version is None else version
        url = (f"/v{v}" if v else "") + path
        if query:
            url += "?" + urllib.parse.urlencode({k: (json.dumps(x) if isinstance(x, dict | list) else x)
                                                 for k, x in query.items()})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        conn = _UnixConnection(self.socket_path, timeout)
        try:
            conn.request(method, url, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            rh = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        if binary:
            return resp.status, payload, rh
        text = payload.decode(errors="replace")
        parsed: Any = text
        if "json" in rh.get("content-type", "") and text.strip():
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
        return resp.status, parsed, rh

    def call(self, label: str, method: str, path: str, body: Any = None, **kw: Any) -> Answer:
        status, parsed, _ = self.request(method, path, body, **kw)
        return Answer(label, status, parsed)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=self.url, DOCKER_CONFIG=str(self.config_dir), DOCKER_CLI_HINTS="false",
                   DOCKER_API_VERSION=self.version)
        return env

    def cli(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 90.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
        e = self.env()
        if env is not None:
            e = {**{k: v for k, v in e.items() if k.startswith("DOCKER_") or k in ("PATH", "HOME")}, **env}
        return subprocess.run(["docker", *args], env=e, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              input=input)

    def cli_answer(self, label: str, *args: str, **kw: Any) -> Answer:
        """The CLI's output as an answer: exit status and both streams, one list item per line."""
        r = self.cli(*args, **kw)
        return Answer(label, r.returncode, {"stdout": r.stdout.splitlines(), "stderr": r.stderr.splitlines()},
                      cli=True)

    def client(self) -> Any:
        import docker  # type: ignore[import-untyped]

        return docker.DockerClient(base_url=self.url, version=self.version, timeout=60)


# --- normalisation ---------------------------------------------------------------------------------------------

_ID25 = re.compile(r"\b[0-9a-z]{25}\b")
_HEX64 = re.compile(r"\b[0-9a-f]{64}\b")
_TIME = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)\b")
_ZERO_TIME = "0001-01-01T00:00:00Z"
_ADDR_PORT = re.compile(r"\b(\d{1,3}(?:\.\d{1,3}){3}):\d{2,5}\b")
_MAC = re.compile(r"\b02:42(:[0-9a-f]{2}){4}\b")
_ADDR = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(/\d{1,2})?\b")
_SECRETISH = re.compile(r"SWM(TKN|KEY)-[A-Za-z0-9+/=-]+|-----BEGIN [A-Z ]+-----[^\"]*?-----END [A-Z ]+-----\n?",
                        re.S)
# The task formatter lower-cases it ("Running less than a second ago").
_AGO = re.compile(r"\b(About (a|an) \w+|Less than a second|\d+ \w+) ago\b", re.I)
_CLI_TIME = re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? [+-]\d{4} \w+\b")
# A line of a PEM block, or the base64 issuer subject/key `node inspect --pretty` prints.
_CLI_B64 = re.compile(r"(?<![\w/+])[A-Za-z0-9+/]{24,}={0,2}$")
_CLI_SHORT_ID = re.compile(r"\b[0-9a-z]{12}\b")
_RANDOM_KEYS = frozenset({"CertIssuerSubject", "CertIssuerPublicKey", "TrustRoot"})
# Values the network allocator chooses (the VXLAN ID of an overlay, a MAC derived from an allocated address).
_ALLOCATED_KEYS = frozenset({"com.docker.network.driver.overlay.vxlanid_list", "MacAddress"})
_HEX12 = re.compile(r"^[0-9a-f]{12}$")
_VERSION_KEYS = frozenset({"EngineVersion", "Version"})
_ALLOCATED_PORT = range(30000, 32768)
# Hosts the two sides are both on: kept, they are not allocator choices.
_FIXED_ADDRS = frozenset({"127.0.0.1", "0.0.0.0"})


def norm_text(s: str, *, cli: bool = False) -> str:
    """Placeholders for the variable parts of one string."""
    if s == _ZERO_TIME:
        return s
    s = _SECRETISH.sub("<secret>", s)
    s = _TIME.sub("<time>", s)
    s = _HEX64.sub("<id>", s)
    s = _ID25.sub("<id>", s)
    s = _ADDR_PORT.sub(lambda m: (m.group(1) if m.group(1) in _FIXED_ADDRS else "<addr>") + ":<port>", s)
    s = _MAC.sub("<mac>", s)
    s = _ADDR.sub(lambda m: m.group(0) if m.group(0) in _FIXED_ADDRS else "<addr>", s)
    if cli:
        s = _CLI_TIME.sub("<time>", s)
        s = _CLI_B64.sub("<secret>", s)
        s = _AGO.sub("<ago>", s)
        s = re.sub(r"(?<=\S) {2,}(?=\S)", "  ", s).rstrip()  # table padding follows the widths of the raw values
        s = re.sub(r"^[0-9a-z]{12}(?=\s)", "<id>", s)  # the ID column of a table
        s = _CLI_SHORT_ID.sub(lambda m: "<id>" if any(c.isdigit() for c in m.group(0)) else m.group(0), s)
    return s


def normalise(value: Any, *, key: str = "", cli: bool = False) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k == "Version" and isinstance(v, dict) and set(v) == {"Index"}:
                out[k] = "<version>"
            elif k in _RANDOM_KEYS and isinstance(v, str) and v:
                out[k] = "<secret>"
            elif k in _ALLOCATED_KEYS and isinstance(v, str) and v:
                out[k] = "<allocated>"
            elif k == "PID" and isinstance(v, int) and v > 0:
                out[k] = "<pid>"  # chosen by the kernel, as an ID
            elif k in ("PublishedPort",) and isinstance(v, int) and v in _ALLOCATED_PORT:
                out[k] = "<port>"
            elif k in _VERSION_KEYS and isinstance(v, str) and re.match(r"^\d+\.\d+", v):
                out[k] = "<version>"
            else:
                out[norm_text(k)] = normalise(v, key=k, cli=cli)
        return out
    if isinstance(value, list):
        return [normalise(v, key=key, cli=cli) for v in value]
    if isinstance(value, str):
        return "<id>" if _HEX12.match(value) else norm_text(value, cli=cli)
    return value


def _sort_key(d: Any) -> tuple[str, ...]:
    if not isinstance(d, dict):
        return ("", json.dumps(d, sort_keys=True))
    spec = d.get("Spec") if isinstance(d.get("Spec"), dict) else {}
    return (str(spec.get("Name", "")), str(d.get("Name", "")), str(d.get("Slot", "")),
            json.dumps(d, sort_keys=True))


def canonical(a: Answer, *, cli: bool = False) -> dict[str, Any]:
    """The normalised answer; a list of objects (a list endpoint's answer) in a stable order."""
    cli = cli or a.cli
    body = normalise(a.body, cli=cli)
    if isinstance(body, list) and not a.ordered and not cli:
        body = sorted(body, key=_sort_key)
    return {"status": a.status, "body": body}


# --- diff ------------------------------------------------------------------------------------------------------

_ABSENT = "<absent>"


@dataclass(frozen=True)
class Difference:
    label: str
    pointer: str
    dockerd: Any
    shoal: Any

    def __str__(self) -> str:
        return f"{self.label}  {self.pointer or '/'}: dockerd={_short(self.dockerd)} shoal={_short(self.shoal)}"


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) or v != _ABSENT else v
    return s if len(s) <= 300 else s[:300] + "..."


def _esc(k: str) -> str:
    return k.replace("~", "~0").replace("/", "~1")


def diff(a: Any, b: Any, pointer: str = "") -> list[tuple[str, Any, Any]]:
    """(JSON pointer, a's value, b's value) for every place the two differ; a key present on one side only is
    compared with "<absent>"."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in list(a) + [k for k in b if k not in a]:
            p = f"{pointer}/{_esc(k)}"
            if k not in b:
                out.append((p, a[k], _ABSENT))
            elif k not in a:
                out.append((p, _ABSENT, b[k]))
            else:
                out.extend(diff(a[k], b[k], p))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in diff(x, y, f"{pointer}/{i}")]
    return [] if a == b else [(pointer, a, b)]


# --- deviations ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deviation:
    request: str  # fnmatch pattern over the answer's label ("GET /nodes*")
    pointer: str  # fnmatch pattern over the JSON pointer ("/Description/Platform/Architecture")
    reason: str
    open: str = ""  # set while a fix is under way: the entry goes when it merges

    def matches(self, d: Difference) -> bool:
        return fnmatch.fnmatchcase(d.label, self.request) and fnmatch.fnmatchcase(d.pointer or "/", self.pointer)


def load_deviations(path: Path = DEVIATIONS_FILE) -> list[Deviation]:
    data = yaml.safe_load(path.read_text()) or []
    out = []
    for i, e in enumerate(data):
        if not (isinstance(e, dict) and e.get("request") and e.get("pointer") and str(e.get("reason", "")).strip()):
            raise ValueError(f"{path}: entry {i} needs request, pointer and a reason: {e!r}")
        out.append(Deviation(str(e["request"]), str(e["pointer"]), str(e["reason"]).strip(), str(e.get("open", ""))))
    return out


# --- certificates an operator brings ----------------------------------------------------------------------------


def signing_ca(key: Any, name: str) -> tuple[str, str]:
    """A self-signed CA an operator would bring to `docker swarm ca --rotate --ca-cert --ca-key`."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650))  # swarmkit: at least a year left
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()).decode())


def same_cert(a: Any, b: str) -> bool:
    """Whether PEM `a` (an answer's value, maybe absent) is the certificate of PEM `b`."""
    if not isinstance(a, str) or not a.strip():
        return False
    der = serialization.Encoding.DER
    return x509.load_pem_x509_certificate(a.encode()).public_bytes(der) == \
        x509.load_pem_x509_certificate(b.encode()).public_bytes(der)


# --- running a scenario on both sides ---------------------------------------------------------------------------


@dataclass
class Outcome:
    compared: int = 0
    labels: list[str] = field(default_factory=list)  # of every answer compared
    differences: list[Difference] = field(default_factory=list)
    accepted: list[tuple[Difference, Deviation]] = field(default_factory=list)
    matched: list[Deviation] = field(default_factory=list)  # every entry matching a difference

    @property
    def unexplained(self) -> list[Difference]:
        seen = {id(d) for d, _ in self.accepted}
        return [d for d in self.differences if id(d) not in seen]


# Every comparison of the run, for the summary (count of compared answers, deviations used).
LEDGER: list[Outcome] = []
# Set by the suite's conftest to the `figure` fixture of the running test: each comparison reports its counts.
REPORT: list[Callable[[str], None]] = []


@dataclass
class Pair:
    dockerd: Side
    shoal: Side
    deviations: list[Deviation]

    def both(self, scenario: Callable[[Side], list[Answer]]) -> tuple[list[Answer], list[Answer]]:
        """Run `scenario` on both sides at once; an exception on either side is raised here."""
        results: dict[str, list[Answer]] = {}
        errors: dict[str, BaseException] = {}

        def run(s: Side) -> None:
            try:
                results[s.name] = scenario(s)
            except BaseException as e:  # re-raised in the test's thread
                errors[s.name] = e

        threads = [threading.Thread(target=run, args=(s,)) for s in (self.dockerd, self.shoal)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, e in errors.items():
            raise AssertionError(f"scenario failed on {name}: {e!r}") from e
        return results["dockerd"], results["shoal"]

    def compare_answers(self, ref: list[Answer], got: list[Answer], *, cli: bool = False) -> Outcome:
        out = Outcome()
        labels_a, labels_b = [a.label for a in ref], [b.label for b in got]
        assert labels_a == labels_b, f"the scenario asked different things: {labels_a} vs {labels_b}"
        for a, b in zip(ref, got, strict=True):
            out.compared += 1
            out.labels.append(a.label)
            for p, x, y in diff(canonical(a, cli=cli), canonical(b, cli=cli)):
                pointer = p.removeprefix("/body") if p.startswith("/body") else p
                if p == "/status":
                    pointer = "status"
                d = Difference(a.label, pointer, x, y)
                out.differences.append(d)
                devs = [v for v in self.deviations if v.matches(d)]
                if devs:
                    out.accepted.append((d, devs[0]))
                out.matched.extend(devs)
        LEDGER.append(out)
        if dump := os.environ.get("SHOAL_DIFF_DUMP"):  # every difference, documented or not, for review
            with open(dump, "a") as f:
                f.writelines(f"{d.label}  {d.pointer or '/'}: dockerd={json.dumps(d.dockerd, sort_keys=True)} "
                             f"shoal={json.dumps(d.shoal, sort_keys=True)}\n" for d in out.differences)
        for note in REPORT:
            note(f"differential: {out.compared} answers compared, {len(out.differences)} differences "
                 f"({len(out.accepted)} documented in {DEVIATIONS_FILE.name})")
        return out

    def compare(self, scenario: Callable[[Side], list[Answer]], *, cli: bool = False) -> Outcome:
        ref, got = self.both(scenario)
        return self.compare_answers(ref, got, cli=cli)

    def check(self, scenario: Callable[[Side], list[Answer]], *, cli: bool = False) -> Outcome:
        """compare(), failing the test on any difference deviations.yaml does not list."""
        out = self.compare(scenario, cli=cli)
        assert_explained(out)
        return out


def stale_deviations(deviations: list[Deviation], outcomes: list[Outcome]) -> list[Deviation]:
    """The entries that excused nothing although an answer they name was compared: stale (the difference
    is gone, or the pattern no longer names it). An entry whose request matched no compared answer is not
    judged, the scenario that could show its difference did not run."""
    used = {dev for o in outcomes for dev in o.matched}
    labels = {label for o in outcomes for label in o.labels}
    return [dev for dev in deviations if dev not in used
            and any(fnmatch.fnmatchcase(label, dev.request) for label in labels)]


def assert_explained(out: Outcome) -> None:
    bad = out.unexplained
    assert not bad, (f"{len(bad)} difference(s) from dockerd not listed in {DEVIATIONS_FILE.name} "
                     f"(of {out.compared} answers compared):\n" + "\n".join(f"  {d}" for d in bad))


def settled(side: Side, label: str, path: str, done: Callable[[Any], bool], timeout: float = 20.0,
            **kw: Any) -> Answer:
    """GET `path` until `done(body)` (asynchronous work such as VIP allocation or an update finished), then
    return that answer; at the deadline, the last answer (the comparison then shows what was reached)."""
    deadline = time.monotonic() + timeout
    while True:
        a = side.call(label, "GET", path, **kw)
        if (a.status == 200 and done(a.body)) or time.monotonic() > deadline:
            return a
        time.sleep(0.2)  # polling interval of a bounded poll


@contextlib.contextmanager
def cleanup(side: Side, *paths: str) -> Iterator[None]:
    """DELETE each path on the way out, whatever happened (objects a scenario created), retrying while the
    object is still in use."""
    try:
        yield
    finally:
        for p in paths:
            # Until it is gone: a network is refused while the tasks of a service just removed still use it.
            deadline = time.monotonic() + 30
            while True:
                try:
                    status, _, _ = side.request("DELETE", p)
                except OSError:
                    break
                if status < 400 or status == 404 or time.monotonic() > deadline:
                    break
                time.sleep(0.3)  # polling interval of a bounded poll
