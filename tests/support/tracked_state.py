"""A state database that already tracks files, as if a watcher had announced them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import xxhash

from multiwatch.watcher.hashing import FileVersion, Hashed
from multiwatch.watcher.state import StateStore


def track_written(db: str, root: Path, names: Iterable[str]) -> None:
    """Write each file under `root` (its name as its content) and commit it to the state
    database `db` at the version now on disk, with its real hashes."""
    tracked = {}
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
        st = os.stat(path)
        tracked[name] = Hashed(
            FileVersion(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino),
            hashlib.sha256(name.encode()).hexdigest(), xxhash.xxh128_hexdigest(name.encode()),
            ctime_ns=st.st_ctime_ns)
    os.makedirs(os.path.dirname(db), exist_ok=True)
    store = StateStore(db)
    try:
        store.commit(tracked, [])
    finally:
        store.close()
