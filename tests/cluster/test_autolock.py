"""Autolock and encryption at rest (issue 5), through the stock CLI against real `shoal daemon` managers."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from tests.cluster.conftest import _require_cli
from tests.support.managers import ManagerCluster, free_port
from tests.support.shoal_node import ShoalNode
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("managers")]

SECRET = "s3cr3t-that-must-never-be-on-disk"


def at_rest(n: ShoalNode) -> bytes:
    """Everything the manager keeps on disk about the swarm (Raft log, snapshots, keys, events)."""
    out = b""
    for d in (n.data_dir / "raft", n.data_dir / "certificates"):
        for p in sorted(d.rglob("*")):
            if p.is_file():
                out += p.read_bytes()
    return out


def assert_not_on_disk(n: ShoalNode) -> None:
    blob = at_rest(n)
    for form in (SECRET.encode(), base64.b64encode(SECRET.encode())):
        assert form not in blob


def unlock_key(n: ShoalNode) -> str:
    return n.docker("swarm", "unlock-key", "-q").stdout.strip()


def test_autolock_locks_a_restarted_manager_until_unlocked(tmp_path: Path) -> None:
    _require_cli()
    n = ShoalNode(tmp_path / "m1", hostname="m1").start()
    try:
        out = n.docker("swarm", "init", "--autolock", "--advertise-addr", "127.0.0.1", "--listen-addr",
                       f"127.0.0.1:{free_port()}").stdout
        key = re.search(r"SWMKEY-1-\S+", out)
        assert key is not None, out
        assert unlock_key(n) == key.group(0)
        n.docker("secret", "create", "pw", "-", input=SECRET)
        n.docker("swarm", "update", "--snapshot-interval", "5")
        for i in range(12):  # past a snapshot, so the secret is in a snapshot file too
            n.docker("config", "create", f"c{i}", "-", input=f"v{i}")
        wait_until(lambda: list((n.data_dir / "raft" / "snapshots").iterdir()), 20, what="a snapshot")
        assert_not_on_disk(n)
        tls_key = (n.data_dir / "certificates" / "swarm-node.key").read_bytes()
        assert tls_key.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")

        n.restart()
        assert n.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "locked"
        cp = n.docker("service", "ls", check=False)
        assert "Swarm is encrypted and needs to be unlocked before it can be used." in cp.stderr
        cp = n.docker("swarm", "unlock", input="SWMKEY-1-nottherightkeyatall\n", check=False)
        assert "invalid key provided" in cp.stderr
        n.docker("swarm", "unlock", input=key.group(0) + "\n")
        assert n.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "active"
        assert n.docker("secret", "ls", "--format", "{{.Name}}").stdout.split() == ["pw"]
        assert len(n.docker("config", "ls", "-q").stdout.split()) == 12

        # Rotation: the old key stops working at the next restart, the new one works.
        n.docker("swarm", "unlock-key", "--rotate")
        new_key = unlock_key(n)
        assert new_key != key.group(0)
        wait_until(lambda: _opens_with(n, new_key), 20, what="the data key to be re-wrapped with the new key")
        n.restart()
        cp = n.docker("swarm", "unlock", input=key.group(0) + "\n", check=False)
        assert "invalid key provided" in cp.stderr
        n.docker("swarm", "unlock", input=new_key + "\n")

        # Autolock off: a restart needs no key, and the data stays encrypted at rest.
        n.docker("swarm", "update", "--autolock=false")
        wait_until(lambda: not (n.data_dir / "certificates" / "swarm-node.key").read_bytes()
                   .startswith(b"-----BEGIN ENCRYPTED"), 20, what="the TLS key written in the clear")
        n.restart()
        assert n.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "active"
        cp = n.docker("swarm", "unlock", input=new_key + "\n", check=False)
        assert "swarm is not locked" in cp.stderr
        assert n.docker("secret", "ls", "--format", "{{.Name}}").stdout.split() == ["pw"]
        assert_not_on_disk(n)
    finally:
        n.stop()


def _opens_with(n: ShoalNode, key: str) -> bool:
    from shoal.manager.keys import InvalidUnlockKey, KeyStore

    try:
        KeyStore(n.data_dir / "certificates").unlock(key)
        return True
    except InvalidUnlockKey:
        return False


def test_a_locked_manager_of_three_rejoins_once_unlocked(tmp_path: Path) -> None:
    _require_cli()
    with ManagerCluster(tmp_path, 3) as mc:
        lead = mc.leader()
        lead.docker("swarm", "update", "--autolock=true")
        key = unlock_key(lead)
        follower = next(x for x in mc.nodes if x is not lead)
        wait_until(lambda: _opens_with(follower, key), 20, what="the follower to protect its keys")
        follower.docker("secret", "create", "pw", "-", input=SECRET)
        for x in mc.nodes:
            assert_not_on_disk(x)
        follower.restart()
        assert follower.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "locked"
        wait_until(lambda: mc.manager_status(lead)[follower.hostname] == "Unreachable", 20,
                   what="the locked manager unreachable")
        lead.docker("config", "create", "while-locked", "-", input="x")  # the other two still commit
        follower.docker("swarm", "unlock", input=key + "\n")
        wait_until(lambda: mc.manager_status(lead)[follower.hostname] == "Reachable", 30, what="it to rejoin")
        wait_until(lambda: mc.raft(follower)["objects"]["config"] == 1, 20, what="it to catch up")
