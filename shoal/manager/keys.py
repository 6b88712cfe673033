"""A manager's keys at rest: the Raft data encryption key (DEK) and, under autolock, the key that protects it.

Every manager encrypts its Raft log entries and snapshot files with its own DEK (AES-256-GCM, `DataCipher`), so
secrets and everything else in the store are never on disk in the clear, whether or not autolock is on (as
swarmkit does). The DEK lives in `certificates/raft-dek.json`:

- autolock off: the DEK itself (the file is mode 0600 next to the TLS key, as swarmkit keeps it in the key's PEM
  headers);
- autolock on: the DEK wrapped (AES key wrap, RFC 3394) with a key-encryption key derived from the swarm's
  unlock key with Argon2id (salt in the file), and the node's TLS key written encrypted with the DEK, so only
  the unlock key opens it (through the DEK). A manager restarted in that state cannot read its log nor present
  its certificate until `docker swarm unlock` gives it the unlock key.

Why the TLS key goes under the DEK and not the KEK: a rotation of the unlock key then rewrites one file (the
wrapped DEK) and can never leave the pair inconsistent; turning autolock on or off rewrites both, and a crash
between the two is harmless because an encrypted TLS key is always read with the DEK.

The unlock key itself is in the cluster object (replicated, so inside the encrypted log); each manager re-wraps
its DEK when the key changes (autolock turned on or off, `swarm unlock-key --rotate`). Files are replaced
atomically (written aside, fsync'd, renamed).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from shoal.errors import ShoalError

DEK_FILE = "raft-dek.json"
KEY_FORMAT = 1
_SEAL_FORMAT = 1
# Argon2id cost: ~0.15 s on this project's 2-core reference machine; paid on unlock and on key changes only.
ARGON_ITERATIONS = 3
ARGON_LANES = 4
ARGON_MEMORY_KIB = 64 * 1024


class InvalidUnlockKey(ShoalError):
    # dockerd's invalidUnlockKey implements Unauthorized() -> 401
    status = 401

    def __init__(self) -> None:
        super().__init__("swarm could not be unlocked: invalid key provided")


class DecryptionError(ShoalError):
    """Data at rest that this key does not open (tampered, or another key)."""


class DataCipher:
    """AES-256-GCM for blobs at rest: format byte, 96-bit random nonce, ciphertext with tag. `aad` binds a blob
    to where it belongs (an entry's index and term), so blobs cannot be swapped around unnoticed."""

    def __init__(self, dek: bytes) -> None:
        if len(dek) != 32:
            raise ValueError("the data encryption key must be 32 bytes")
        self._aead = AESGCM(dek)

    def seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return bytes((_SEAL_FORMAT,)) + nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if not blob or blob[0] != _SEAL_FORMAT:
            raise DecryptionError(f"raft data at rest: unknown encryption format {blob[:1]!r}")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], aad)
        except InvalidTag:
            raise DecryptionError("raft data at rest does not decrypt with this manager's key") from None


def derive_kek(unlock_key: str, salt: bytes) -> bytes:
    """The key-encryption key for an unlock key (slow on purpose: call it off the event loop)."""
    return Argon2id(salt=salt, length=32, iterations=ARGON_ITERATIONS, lanes=ARGON_LANES,
                    memory_cost=ARGON_MEMORY_KIB).derive(unlock_key.strip().encode())


@dataclass(frozen=True)
class Unlocked:
    dek: bytes
    kek: bytes | None  # the unlock key's key-encryption key while autolock is on


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class KeyStore:
    def __init__(self, certs_dir: Path) -> None:
        self.dir = certs_dir

    @property
    def path(self) -> Path:
        return self.dir / DEK_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def _read(self) -> dict[str, object]:
        body = json.loads(self.path.read_text())
        if int(body.get("format", 0)) > KEY_FORMAT:
            raise ShoalError(f"{self.path}: key file format {body.get('format')} is newer than this Shoal")
        return dict(body)

    def locked(self) -> bool:
        """Is the DEK on disk wrapped (autolock): then nothing of the manager opens without the unlock key."""
        return self.exists() and "wrapped" in self._read()

    def create(self) -> Unlocked:
        """A new DEK for a new Raft storage (swarm init, join, promotion), unprotected until told otherwise."""
        dek = os.urandom(32)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store(Unlocked(dek, None), "")
        return Unlocked(dek, None)

    def load(self) -> Unlocked:
        """The DEK of an unlocked manager (autolock off)."""
        body = self._read()
        if "wrapped" in body:
            raise ShoalError("the swarm is locked: the unlock key is needed")
        return Unlocked(base64.b64decode(str(body["dek"])), None)

    def unlock(self, unlock_key: str) -> Unlocked:
        """Open the wrapped DEK with the unlock key (InvalidUnlockKey if it does not)."""
        body = self._read()
        if "wrapped" not in body:
            return self.load()
        salt = base64.b64decode(str(body["salt"]))
        if not unlock_key.strip().startswith("SWMKEY-1-"):
            raise InvalidUnlockKey()
        kek = derive_kek(unlock_key, salt)
        try:
            dek = aes_key_unwrap(kek, base64.b64decode(str(body["wrapped"])))
        except InvalidUnwrap:
            raise InvalidUnlockKey() from None
        return Unlocked(dek, kek)

    def store(self, keys: Unlocked, unlock_key: str) -> Unlocked:
        """Write the DEK protected by `unlock_key` (autolock on) or in the clear (""); returns the keys now in
        effect (the KEK for the TLS key). Slow with a key: call it off the event loop."""
        if not unlock_key:
            body: dict[str, object] = {"format": KEY_FORMAT, "dek": base64.b64encode(keys.dek).decode()}
            _write_atomic(self.path, json.dumps(body).encode())
            return Unlocked(keys.dek, None)
        salt = os.urandom(16)
        kek = derive_kek(unlock_key, salt)
        body = {"format": KEY_FORMAT, "kdf": "argon2id", "iterations": ARGON_ITERATIONS, "lanes": ARGON_LANES,
                "memory_kib": ARGON_MEMORY_KIB, "salt": base64.b64encode(salt).decode(),
                "wrapped": base64.b64encode(aes_key_wrap(kek, keys.dek)).decode()}
        _write_atomic(self.path, json.dumps(body).encode())
        return Unlocked(keys.dek, kek)


def protect_tls_key(key_pem: str, dek: bytes | None) -> bytes:
    """The node's TLS key as written to disk: encrypted PKCS#8 under the DEK while autolock is on."""
    if dek is None:
        return key_pem.encode()
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(dek))


def read_tls_key(data: bytes, dek: bytes | None) -> str:
    """The TLS key in the clear (in memory only), whichever way it sits on disk."""
    if b"ENCRYPTED" not in data.split(b"\n", 1)[0]:
        return data.decode()
    if dek is None:
        raise ShoalError("the node's TLS key is encrypted: the swarm is locked")
    key = serialization.load_pem_private_key(data, password=dek)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


__all__ = ["DEK_FILE", "DataCipher", "DecryptionError", "InvalidUnlockKey", "KeyStore", "Unlocked", "derive_kek",
           "protect_tls_key", "read_tls_key"]
