"""Who this node is in its swarm, as kept on disk under the data dir:

    node.json        the node's identity and swarm membership (absent while inactive)
    certificates/    its TLS key, node certificate and the cluster's root certificate; a manager's Raft data key
                     (DEK) and, under autolock, its protection by the unlock key; before `swarm init`, an
                     operator-placed `swarm-root-ca.crt` (and optionally `.key`) to use as the new root

The TLS key is sealed under the Raft data key while autolock is on (only the unlock key opens it), so turning
autolock on or off rewrites it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from shoal.api import messages as M
from shoal.errors import Unavailable
from shoal.manager.keys import DEK_FILE, KeyStore, Unlocked, protect_tls_key, read_tls_key
from shoal.rpc.client import NodeCredentials

log = logging.getLogger(__name__)


class NodeIdentity:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.fields: dict[str, Any] = {}  # node.json
        self.keys: Unlocked | None = None  # a manager's Raft data key (and the unlock key's KEK under autolock)
        self.unlock_key = ""  # the unlock key the keys on disk are protected with now ("": none)

    @property
    def file(self) -> Path:
        return self.data_dir / "node.json"

    @property
    def certs_dir(self) -> Path:
        return self.data_dir / "certificates"

    def load(self) -> bool:
        """Read node.json (False: there is none, the node is inactive)."""
        if not self.file.exists():
            return False
        self.fields = json.loads(self.file.read_text())
        return True

    def save(self) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.fields))
        os.replace(tmp, self.file)

    def forget(self) -> None:
        """Leaving the swarm: node.json and the certificates go, and the keys in memory."""
        self.file.unlink(missing_ok=True)
        shutil.rmtree(self.certs_dir, ignore_errors=True)
        self.fields = {}
        self.drop_keys()

    # --- TLS credentials ---------------------------------------------------------------------------

    def has_credentials(self) -> bool:
        return (self.certs_dir / "swarm-node.key").exists()

    def read_creds(self) -> NodeCredentials:
        d = self.certs_dir
        dek = self.keys.dek if self.keys is not None else None
        return NodeCredentials(key_pem=read_tls_key((d / "swarm-node.key").read_bytes(), dek),
                               cert_pem=(d / "swarm-node.crt").read_text(),
                               root_pem=(d / "swarm-root-ca.crt").read_text())

    def write_creds(self, creds: NodeCredentials) -> None:
        d = self.certs_dir
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Encrypted (under the Raft data key) while autolock is on: only the unlock key opens it.
        locked = self.keys is not None and self.keys.kek is not None and self.fields.get("role") == "manager"
        dek = self.keys.dek if locked and self.keys is not None else None
        for name, data, mode in (("swarm-root-ca.crt", creds.root_pem.encode(), 0o644),
                                 ("swarm-node.key", protect_tls_key(creds.key_pem, dek), 0o600),
                                 ("swarm-node.crt", creds.cert_pem.encode(), 0o644)):
            tmp = d / (name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, d / name)

    # --- keys at rest and autolock (shoal/manager/keys.py) -----------------------------------------

    def locked_on_disk(self) -> bool:
        return KeyStore(self.certs_dir).locked()

    def manager_keys(self) -> Unlocked:
        """This manager's Raft data key: in memory already (unlocked), from disk, or new (first Raft storage)."""
        if self.keys is not None:
            return self.keys
        store = KeyStore(self.certs_dir)
        if store.exists():
            if store.locked():
                raise Unavailable(M.SWARM_LOCKED)
            self.keys = store.load()
        else:
            self.keys = store.create()
        return self.keys

    def drop_keys(self, *, on_disk: bool = False) -> None:
        """Forget the data key in memory (a new role or swarm gets a new one); `on_disk`: its file too."""
        self.keys, self.unlock_key = None, ""
        if on_disk:
            (self.certs_dir / DEK_FILE).unlink(missing_ok=True)

    async def unlock(self, unlock_key: str) -> None:
        """Open the keys on disk with the unlock key (raises for a wrong one)."""
        self.keys = await asyncio.to_thread(KeyStore(self.certs_dir).unlock, unlock_key)
        self.unlock_key = unlock_key.strip()

    async def protect(self, want: str) -> None:
        """Protect the data key on disk by the unlock key `want` ("": autolock off), and the TLS key with it."""
        keys = self.keys
        if keys is None:
            return
        self.unlock_key = want
        try:
            new = await asyncio.to_thread(KeyStore(self.certs_dir).store, keys, want)
        except OSError as e:
            log.error("protecting the Raft data key failed: %s", e)
            return
        was_locked = keys.kek is not None
        self.keys = new  # the same DEK: the TLS key on disk reads the same under either
        # On or off; a rotation leaves the TLS key (under the DEK) as it is. At `swarm init --autolock` this can
        # run before the node's first certificate is written: that write then protects it (it reads `keys`),
        # and there is nothing on disk to rewrite yet.
        if was_locked != bool(want) and self.has_credentials():
            self.write_creds(self.read_creds())
        log.info("autolock %s: the Raft data key and TLS key on disk are %s", "on" if want else "off",
                 "protected by the unlock key" if want else "no longer locked")
