"""Hashing: one read feeding SHA-256 and XXH128, never opening anything but a regular file."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash

from multiwatch.watcher import hashing
from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.hashing import (
    CHUNK_BYTES,
    ChangedWhileHashing,
    FileVersion,
    Hashed,
    NotRegularFile,
    hash_file,
    stat_regular,
)


def hash_path(path: str, *args: Any, **kwargs: Any) -> Hashed:
    """hash_file of a file named by its path, confined to the file's own directory."""
    directory, name = os.path.split(path)
    return hash_file(ConfinedRoot(directory), name, *args, **kwargs)


@pytest.mark.parametrize("size", [0, 5, CHUNK_BYTES, 2 * CHUNK_BYTES + 17],
                         ids=["empty", "small", "one-chunk", "multi-chunk"])
def test_hashes_equal_reference_implementations(tmp_path: Path, size: int) -> None:
    """sha256 and xxh128 are exactly hashlib's and xxhash's digests of the file's bytes."""
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    hashed = hash_path(str(path))
    assert hashed.sha256 == hashlib.sha256(data).hexdigest()
    assert hashed.xxh128 == xxhash.xxh128(data).hexdigest()
    assert hashed.version == FileVersion.of(os.stat(path))
    assert hashed.version.size == size


def test_fifo_raises_not_regular_file_without_blocking(tmp_path: Path) -> None:
    """A FIFO in the tree is refused at once instead of hanging the watcher on open()."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    outcome: dict[str, BaseException | None] = {}

    def attempt() -> None:
        try:
            hash_path(str(fifo))
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            outcome["error"] = exc

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # release the blocked reader
        worker.join(5)
        pytest.fail("hash_file blocked on a FIFO")
    assert isinstance(outcome["error"], NotRegularFile)


def test_unix_socket_raises_not_regular_file(tmp_path: Path) -> None:
    """A unix socket in the tree is refused, not opened."""
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        with pytest.raises(NotRegularFile):
            hash_path(str(path))
    finally:
        server.close()


def test_directory_raises_not_regular_file(tmp_path: Path) -> None:
    """A directory at the path is refused."""
    (tmp_path / "d").mkdir()
    with pytest.raises(NotRegularFile):
        hash_path(str(tmp_path / "d"))


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    """A symlink to a regular file raises NotRegularFile instead of hashing its target."""
    target = tmp_path / "target.txt"
    target.write_bytes(b"secret")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with pytest.raises(NotRegularFile):
        hash_path(str(link))


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    """A path that vanished before hashing raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        hash_path(str(tmp_path / "gone.txt"))


def _hook_first_chunk(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run `action` (a real filesystem change) right after hash_file has read its first chunk."""
    real_xxh128 = xxhash.xxh128

    class FirstUpdateHook:
        def __init__(self) -> None:
            self._real = real_xxh128()
            self._pending: Callable[[], None] | None = action

        def update(self, data: bytes) -> None:
            self._real.update(data)
            if self._pending is not None:
                pending, self._pending = self._pending, None
                pending()

        def hexdigest(self) -> str:
            return self._real.hexdigest()

    monkeypatch.setattr(hashing, "xxhash", types.SimpleNamespace(xxh128=FirstUpdateHook))


def test_append_during_hashing_raises_changed_while_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that grows while it is being read is reported as changed, not hashed half-way."""
    path = tmp_path / "growing.bin"
    path.write_bytes(b"a" * (CHUNK_BYTES + 10))

    def append() -> None:
        with open(path, "ab") as handle:
            handle.write(b"more")

    _hook_first_chunk(monkeypatch, append)
    with pytest.raises(ChangedWhileHashing):
        hash_path(str(path))


def test_rename_over_during_hashing_raises_changed_while_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file replaced by rename while being read (same size) is reported as changed."""
    path = tmp_path / "song.mp3"
    path.write_bytes(b"a" * 100)
    replacement = tmp_path / "song.mp3.part"
    replacement.write_bytes(b"b" * 100)
    _hook_first_chunk(monkeypatch, lambda: os.replace(replacement, path))
    with pytest.raises(ChangedWhileHashing):
        hash_path(str(path))


def test_unchanged_file_hashes_normally_with_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control for the two tests above: the hook alone does not make a file look changed."""
    path = tmp_path / "still.bin"
    data = b"z" * (CHUNK_BYTES + 10)
    path.write_bytes(data)
    _hook_first_chunk(monkeypatch, lambda: None)
    assert hash_path(str(path)).xxh128 == xxhash.xxh128(data).hexdigest()


def test_stat_regular_accepts_only_regular_files(tmp_path: Path) -> None:
    """stat_regular returns a stat for a regular file and None for anything else or nothing."""
    regular = tmp_path / "f.txt"
    regular.write_bytes(b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(regular)
    os.mkfifo(tmp_path / "fifo")
    root = ConfinedRoot(str(tmp_path))
    st = stat_regular(root, "f.txt")
    assert st is not None and st.st_size == 1
    for other in ["d", "link", "fifo", "missing", "f.txt/below-a-file"]:
        assert stat_regular(root, other) is None, other


def test_long_hash_reports_progress_so_heartbeats_keep_flowing(tmp_path: Path,
                                                              monkeypatch) -> None:
    """Hashing a big file calls the progress hook along the way (the watcher heartbeats from
    it, so a slow mount is not mistaken for a hang)."""
    import multiwatch.watcher.hashing as hashing_module

    monkeypatch.setattr(hashing_module, "PROGRESS_EVERY_BYTES", 1 << 20)
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * (5 << 20))
    calls: list[int] = []
    hash_path(str(path), lambda: calls.append(1))
    assert len(calls) >= 4


def test_cancelled_hash_stops_reading(tmp_path: Path) -> None:
    """A hash whose result is no longer wanted stops with HashCancelled instead of reading on."""
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(3 * CHUNK_BYTES))
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(hashing.HashCancelled):
        hash_path(str(path), cancelled=cancelled)


def test_file_changed_since_the_expected_version_is_not_read(tmp_path: Path) -> None:
    """With `expected` (the stat taken at close), a file found with another version when
    opened raises ChangedWhileHashing: it settles again instead of being announced."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"as closed")
    at_close = FileVersion.of(os.lstat(path))
    assert hash_path(str(path), expected=at_close).version == at_close

    path.write_bytes(b"changed since, with no event")
    with pytest.raises(ChangedWhileHashing):
        hash_path(str(path), expected=at_close)
