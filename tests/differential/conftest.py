"""Fixtures of the differential suite: one real Docker Swarm and one Shoal swarm for the whole session.

- `pair`: a `Pair` of two single-manager swarms, both initialised through `POST /swarm/init` on loopback with
  free ports (never 2377): `pair.dockerd` is Debian's dockerd 20.10 (its own data-root, socket and network
  namespace, started with DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 so its tasks never try a registry), `pair.shoal` is
  `shoal daemon --executor docker` on the session's other private dockerd. Both engines hold the offline
  test image. What the two answered before and at init is kept in `pair.before_init` for test_swarm.py.
- `SHOAL_DIFF_ALL=1` selects the long run (every stack file, every variant); the default run is trimmed.
When dockerd cannot run here the suite is skipped (failed with CI=true), as the e2e suite is.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.differential.harness import REPORT, Answer, Pair, Side, load_deviations, same_cert, settled, signing_ca
from tests.e2e.dockerd import DockerdUnavailable, ensure_test_image, start_dockerd, stop_dockerd
from tests.e2e.shoal_docker import ShoalDocker
from tests.support.managers import free_port


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"differential: no Docker Engine in CI: {reason}", pytrace=False)
    pytest.skip(f"differential: no Docker Engine: {reason}")


# The operator's CA of the init with a signing CA (the same on both sides).
CA_AT_INIT = signing_ca(ec.generate_private_key(ec.SECP256R1()), "diff-init-ca")


def _before_init(s: Side) -> list[Answer]:
    """What a node outside any swarm answers, then the init itself (the same body on both sides)."""
    out = [
        s.call("GET /swarm (inactive)", "GET", "/swarm"),
        s.call("GET /nodes (inactive)", "GET", "/nodes"),
        s.call("GET /services (inactive)", "GET", "/services"),
        s.call("GET /tasks (inactive)", "GET", "/tasks"),
        s.call("GET /secrets (inactive)", "GET", "/secrets"),
        s.call("GET /configs (inactive)", "GET", "/configs"),
        s.call("GET /swarm/unlockkey (inactive)", "GET", "/swarm/unlockkey"),
        s.call("POST /swarm/leave (inactive)", "POST", "/swarm/leave"),
        s.call("POST /swarm/unlock (inactive)", "POST", "/swarm/unlock", {"UnlockKey": "SWMKEY-1-x"}),
        s.call("POST /swarm/update (inactive)", "POST", "/swarm/update", {}, query={"version": 1}),
        s.call("GET /swarm/join-token? (inactive)", "GET", "/info"),
        s.call("POST /swarm/init bad ListenAddr", "POST", "/swarm/init", {"ListenAddr": "bogus:x:y"}),
    ]
    out[-2].label = "GET /info (inactive)"
    out[-2].body = {"Swarm": out[-2].body.get("Swarm")} if isinstance(out[-2].body, dict) else out[-2].body
    port = free_port()
    # ForceNewCluster outside any swarm creates one, with the Spec's autolock: its key readable at once; and
    # with an operator's signing CA and an external CA (`swarm init --external-ca ...` with a root of its own):
    # the root rotates to that CA, the external CA is listed once.
    cert, ca_key = CA_AT_INIT
    out.append(s.call("POST /swarm/init (force new cluster, inactive)", "POST", "/swarm/init", {
        "ListenAddr": f"127.0.0.1:{port}", "AdvertiseAddr": f"127.0.0.1:{port}", "ForceNewCluster": True,
        "Spec": {"Labels": {"init": "1"}, "EncryptionConfig": {"AutoLockManagers": True}, "CAConfig": {
            "SigningCACert": cert, "SigningCAKey": ca_key,
            "ExternalCAs": [{"Protocol": "cfssl", "URL": "https://127.0.0.1:1/api/v1/cfssl/sign"}]}}}))
    _, key, _ = s.request("GET", "/swarm/unlockkey")
    out.append(Answer("GET /swarm/unlockkey (right after init with autolock)", 200,
                      {"has key": bool(isinstance(key, dict) and key.get("UnlockKey"))}))
    done = settled(s, "GET /swarm (init with a signing CA)", "/swarm", lambda b: not b.get(
        "RootRotationInProgress") and same_cert(b.get("TLSInfo", {}).get("TrustRoot"), cert), timeout=60)
    out.append(done)
    out.append(Answer("the trust root after init with a signing CA", 200,
                      {"swarm": same_cert(done.body.get("TLSInfo", {}).get("TrustRoot"), cert)}))
    # Leave it: a swarm that had autolock on restarts locked (or not at all, while the key's re-encryption is
    # under way) on a ForceNewCluster, which is not what this checks.
    out.append(s.call("POST /swarm/leave?force (the autolocked swarm)", "POST", "/swarm/leave",
                      query={"force": "true"}))
    out.append(s.call("POST /swarm/init", "POST", "/swarm/init", {
        "ListenAddr": f"127.0.0.1:{port}", "AdvertiseAddr": f"127.0.0.1:{port}",
        "Spec": {"Orchestration": {"TaskHistoryRetentionLimit": 5}}}))
    out.append(s.call("POST /swarm/init (active)", "POST", "/swarm/init",
                      {"ListenAddr": f"127.0.0.1:{free_port()}", "AdvertiseAddr": "127.0.0.1"}))
    # The rest of the session runs on the same spec on both sides whatever the above did. (ForceNewCluster
    # on the active swarm is not checked here: dockerd restarts its swarm node for it, and under load it
    # was seen to stop being a manager for a while after answering, which no later scenario should inherit.)
    _, sw, _ = s.request("GET", "/swarm")
    s.request("POST", "/swarm/update", dict(sw["Spec"], Labels={"init": "2"}, EncryptionConfig={
        "AutoLockManagers": False}, Orchestration={"TaskHistoryRetentionLimit": 5}),
              query={"version": sw["Version"]["Index"]})
    return out


def _unmount_under(*roots: Path) -> None:
    """Lazily unmount what a stopped dockerd left mounted under `roots` (the bind-mounted namespaces of its
    overlay sandboxes survive its shutdown), deepest first, so that the directories can be removed."""
    exact = {str(r).rstrip("/") for r in roots}  # dockerd bind-mounts its data-root onto itself
    prefixes = tuple(r + "/" for r in exact)
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in sorted((p for p in points if p in exact or p.startswith(prefixes)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.fixture(scope="session")
def pair() -> Iterator[Pair]:
    base = Path(tempfile.mkdtemp(prefix="sdiff", dir="/run"))  # short: unix socket paths max 107 bytes
    started: list[Callable[[], None]] = []
    try:
        old = os.environ.get("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE")
        os.environ["DOCKER_SERVICE_PREFER_OFFLINE_IMAGE"] = "1"  # dockerd reads it: no pull attempt offline
        try:
            # The reference dockerd in a network namespace of its own: its overlay (VXLAN) devices and swarm
            # ports cannot collide with anything else on the machine.
            ns = f"sdiff-{os.getpid()}"
            if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
                raise DockerdUnavailable(f"cannot create network namespace {ns}")
            started.append(lambda: subprocess.run(["ip", "netns", "del", ns], capture_output=True))
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            ref_data, eng_data = Path(tempfile.mkdtemp(prefix="sdiff-r-")), Path(tempfile.mkdtemp(prefix="sdiff-e-"))
            started.append(lambda: (_unmount_under(base, ref_data, eng_data),
                                    shutil.rmtree(ref_data, ignore_errors=True),
                                    shutil.rmtree(eng_data, ignore_errors=True)))
            ref = start_dockerd(base / "r", data_root=ref_data, prefix=("nsenter", f"--net=/run/netns/{ns}"))
            started.append(lambda: stop_dockerd(ref))
            eng = start_dockerd(base / "e", data_root=eng_data)
            started.append(lambda: stop_dockerd(eng))
        finally:
            if old is None:
                os.environ.pop("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", None)
            else:
                os.environ["DOCKER_SERVICE_PREFER_OFFLINE_IMAGE"] = old
        images = [threading.Thread(target=ensure_test_image, args=(d.url,)) for d in (ref, eng)]
        for t in images:
            t.start()
        node = ShoalDocker(base / "s", eng.url, hostname=socket.gethostname())
        node.start()
        started.append(node.stop)
        for t in images:
            t.join()
        (base / "rc").mkdir()
        pair = Pair(Side("dockerd", str(ref.socket), base / "rc"), Side("shoal", str(node.socket), node.config_dir),
                    load_deviations())
        ref_a, shoal_a = pair.both(_before_init)
        pair.before_init = (ref_a, shoal_a)  # type: ignore[attr-defined]
        for s, answers in ((pair.dockerd, ref_a), (pair.shoal, shoal_a)):
            _, info, _ = s.request("GET", "/info")
            assert info["Swarm"]["LocalNodeState"] == "active", f"swarm init on {s.name}: {answers}"
        yield pair
    except DockerdUnavailable as e:
        _unavailable(str(e))
    finally:
        for stop in reversed(started):
            stop()
        shutil.rmtree(base, ignore_errors=True)


# The node IDs of the suite's tests run in this process (test_zz_deviations.py judges stale entries only
# after all of them).
RAN: set[str] = set()


@pytest.fixture(autouse=True)
def _count_answers(figure: Callable[[str], None], request: pytest.FixtureRequest) -> Iterator[None]:
    """Each comparison a test makes reports how many answers it compared and how many differences were
    documented (printed in the run's "figures" section)."""
    REPORT.append(figure)
    try:
        yield
    finally:
        REPORT.remove(figure)
        RAN.add(request.node.nodeid)
