"""Keys and encryption at rest (shoal/manager/keys.py): the Raft data key, its wrapping under autolock, the TLS
key, and SqliteStorage sealing every entry and snapshot with the data key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal import ca as CA
from shoal.errors import ShoalError
from shoal.manager.keys import (
    DataCipher,
    DecryptionError,
    InvalidUnlockKey,
    KeyStore,
    protect_tls_key,
    read_tls_key,
)
from shoal.manager.raft.core import Entry, EntryType, HardState, Snapshot, SnapshotMeta, UnsupportedFormat
from shoal.manager.raft.sqlite_storage import SqliteStorage

SECRET = b"top-secret-value-0123456789"
KEY = "SWMKEY-1-Jd8Xq0rNw3m1Hf0L2sTtYb7Kz9Vc4Pe6Ua5Gi8Oo"


def raw_bytes(d: Path) -> bytes:
    """Every byte under the directory, as someone who copied the disk would see it."""
    out = b""
    for p in sorted(d.rglob("*")):
        if p.is_file():
            out += p.read_bytes()
    return out


def write_some(st: SqliteStorage) -> None:
    st.append([Entry(i, 1, EntryType.NORMAL, SECRET + str(i).encode()) for i in range(1, 6)])
    st.set_hard_state(HardState(1, 0, 5))
    st.sync()
    st.save_snapshot(Snapshot(SnapshotMeta(3, 1, frozenset({1})), b"state:" + SECRET))
    st.sync()


def test_entries_and_snapshots_are_sealed_and_read_back(tmp_path: Path) -> None:
    dek = os.urandom(32)
    st = SqliteStorage(tmp_path, DataCipher(dek))
    write_some(st)
    st.close()
    assert SECRET not in raw_bytes(tmp_path)
    again = SqliteStorage(tmp_path, DataCipher(dek))
    state = again.load()
    assert [e.data for e in state.entries] == [SECRET + b"4", SECRET + b"5"]
    assert state.snapshot is not None and state.snapshot.data == b"state:" + SECRET
    again.close()
    with pytest.raises(UnsupportedFormat):
        SqliteStorage(tmp_path)  # encrypted data needs the key
    with pytest.raises(DecryptionError):
        SqliteStorage(tmp_path, DataCipher(os.urandom(32)))  # and the right one


def test_clear_data_of_an_older_version_is_sealed_in_place(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path)
    write_some(st)
    st.close()
    assert SECRET in raw_bytes(tmp_path)
    dek = os.urandom(32)
    sealed = SqliteStorage(tmp_path, DataCipher(dek))
    assert [e.data for e in sealed.load().entries] == [SECRET + b"4", SECRET + b"5"]
    sealed.close()
    assert SECRET not in raw_bytes(tmp_path)
    assert [p.suffix for p in (tmp_path / "snapshots").iterdir()] == [".ssnap"]


def test_a_swapped_entry_is_detected(tmp_path: Path) -> None:
    import sqlite3

    dek = os.urandom(32)
    st = SqliteStorage(tmp_path, DataCipher(dek))
    st.append([Entry(i, 1, EntryType.NORMAL, b"x%d" % i) for i in (1, 2)])
    st.sync()
    st.close()
    db = sqlite3.connect(tmp_path / "raft.db")
    rows = dict(db.execute("SELECT idx, data FROM entries").fetchall())
    db.execute("UPDATE entries SET data = ? WHERE idx = 1", (rows[2],))
    db.commit()
    db.close()
    with pytest.raises(DecryptionError):
        SqliteStorage(tmp_path, DataCipher(dek)).load()


def test_keystore_plain_locked_unlock_and_rotation(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path)
    keys = ks.create()
    assert not ks.locked() and ks.load().dek == keys.dek
    locked = ks.store(keys, KEY)
    assert ks.locked() and locked.kek is not None
    assert keys.dek not in ks.path.read_bytes()
    with pytest.raises(ShoalError, match="locked"):
        ks.load()
    with pytest.raises(InvalidUnlockKey) as ei:
        ks.unlock("SWMKEY-1-wrong")
    assert ei.value.status == 401 and ei.value.message == "swarm could not be unlocked: invalid key provided"
    assert ks.unlock(KEY).dek == keys.dek
    new_key = KEY[:-3] + "xyz"
    ks.store(keys, new_key)
    with pytest.raises(InvalidUnlockKey):
        ks.unlock(KEY)  # the old key no longer opens it
    assert ks.unlock(new_key).dek == keys.dek
    ks.store(keys, "")  # autolock off
    assert not ks.locked() and ks.load().dek == keys.dek


def test_tls_key_is_encrypted_under_the_data_key(tmp_path: Path) -> None:
    pem = CA.new_key_pem()
    kek = os.urandom(32)
    sealed = protect_tls_key(pem, kek)
    assert sealed.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert read_tls_key(sealed, kek).startswith("-----BEGIN PRIVATE KEY-----")
    with pytest.raises(ShoalError, match="locked"):
        read_tls_key(sealed, None)
    with pytest.raises(ValueError):
        read_tls_key(sealed, os.urandom(32))
    assert read_tls_key(protect_tls_key(pem, None), None) == pem
