"""Hostile file types: FIFOs, sockets, devices, symlinks, hard links, huge sparse and empty
files."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from multiwatch.watcher import hashing
from tests.support.hostile import (
    EMPTY_SHA256,
    EMPTY_XXH128,
    MIB,
    PeakRss,
    figure,
    observed_pipeline,
)
from tests.watcher.test_pipeline import digests, hashes_of

# Digests of N GiB of zero bytes (hashlib and xxhash, computed once on this machine).
ZERO_DIGESTS = {
    4: ("8479e43911dc45e89f934fe48d01297e16f51d17aa561d4d1c216b1ae0fcddca",
        "621fe222be1f6cee06d0472e82d64247"),
    20: ("6cb118a8f8b3c19385874297e291dcbcdf3a9837ba1ca7b00ace2491adbff551",
         "adb9ddc6b487a54317ee85ea4e3d73df"),
}
SPARSE_GIB = int(os.environ.get("MULTIWATCH_HOSTILE_SPARSE_GIB", "20"))


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path the watcher's hashing opens (os.open as hashing.py calls it)."""
    paths: list[str] = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        paths.append(os.fsdecode(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(hashing.os, "open", recording_open)
    return paths


def test_fifo_socket_and_device_are_never_opened(tmp_path: Path, opened: list[str]) -> None:
    """A FIFO, a UNIX socket and a character device in the tree are never opened and never
    announced (no hang), whether found by the scan or by notifications; a regular file beside
    them is."""
    with observed_pipeline(tmp_path) as (announced, root):
        os.mkfifo(root / "before.fifo")
        announced.pipeline.request_scan()
        os.mkfifo(root / "pipe")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(root / "sock"))
            kinds = ["before.fifo", "pipe", "sock"]
            if os.geteuid() == 0:
                os.mknod(root / "null-device", stat.S_IFCHR | 0o666, os.makedev(1, 3))
                kinds.append("null-device")
            (root / "regular.mp3").write_bytes(b"the only file")
            announced.until(lambda bodies: len(bodies) >= 1)
            announced.pipeline.request_scan()  # a rescan meets them all again
            announced.settled()
        finally:
            server.close()
    assert announced.summary() == [("file_discovered", "regular.mp3")]
    assert [p for p in opened if os.path.basename(p) in kinds] == []
    assert len(kinds) == 4 or os.geteuid() != 0


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the watched root holding a secret file."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_bytes(b"not yours")
    (directory / "sub").mkdir()
    (directory / "sub" / "also-secret.txt").write_bytes(b"nor this")
    return directory


def test_symlinks_out_of_the_root_are_not_followed(
        tmp_path: Path, outside: Path, opened: list[str]) -> None:
    """Symlinks to a file and to a directory outside the watched root, made before and while
    watching, are not announced and their targets are never opened."""
    with observed_pipeline(tmp_path) as (announced, root):
        (root / "early-link.txt").symlink_to(outside / "secret.txt")
        announced.pipeline.request_scan()
        (root / "link.txt").symlink_to(outside / "secret.txt")
        (root / "dir-link").symlink_to(outside / "sub", target_is_directory=True)
        (root / "absolute-etc").symlink_to("/etc")
        (root / "marker.mp3").write_bytes(b"marker")
        announced.until(lambda bodies: len(bodies) >= 1)
        announced.pipeline.request_scan()
        announced.settled()
    assert announced.summary() == [("file_discovered", "marker.mp3")]
    assert [p for p in opened if "secret" in p or p.startswith("/etc")] == []


def test_symlink_loops_do_not_hang_the_scan(tmp_path: Path) -> None:
    """Self-referencing and mutual symlink loops (file and directory) leave the scan and the
    watch finishing promptly; each real file is announced once, under its real path."""
    root = tmp_path / "w"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "up").symlink_to("..", target_is_directory=True)
    (root / "self").symlink_to("self")
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    (root / "sub" / "real.mp3").write_bytes(b"real")
    with observed_pipeline(tmp_path) as (announced, root):
        started = time.monotonic()
        announced.pipeline.request_scan()
        announced.until(lambda bodies: len(bodies) >= 1)
        announced.settled()
        (root / "sub" / "later.mp3").write_bytes(b"later")
        announced.until(lambda bodies: len(bodies) >= 2)
        announced.settled()
        elapsed = time.monotonic() - started
    assert announced.summary() == [("file_discovered", "sub/real.mp3"),
                                   ("file_discovered", "sub/later.mp3")]
    assert elapsed < 10


def test_directory_moved_in_with_a_symlink_to_outside_announces_nothing_outside(
        tmp_path: Path, outside: Path, opened: list[str]) -> None:
    """A directory moved into the tree that holds a symlink to a directory outside the root:
    its own file is announced, nothing reached through the symlink is opened or announced."""
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "own.mp3").write_bytes(b"own")
    (staging / "escape").symlink_to(outside, target_is_directory=True)
    (staging / "loop").symlink_to("..", target_is_directory=True)
    with observed_pipeline(tmp_path) as (announced, root):
        os.rename(staging, root / "arrived")
        announced.until(lambda bodies: "arrived/own.mp3" in announced.paths())
        announced.settled()
    assert announced.summary() == [("file_discovered", "arrived/own.mp3")]
    assert [p for p in opened if "secret" in p] == []


def test_hard_links_are_announced_once_per_path(tmp_path: Path) -> None:
    """Two names for one inode (a hard link) are two files: each path is announced, with the
    same hashes."""
    with observed_pipeline(tmp_path) as (announced, root):
        (root / "first.mp3").write_bytes(b"shared content")
        os.link(root / "first.mp3", root / "second.mp3")
        announced.pipeline.request_scan()
        announced.until(lambda bodies: len(bodies) >= 2)
        os.link(root / "first.mp3", root / "third.mp3")
        announced.until(lambda bodies: len(bodies) >= 3)
        announced.settled()
    assert sorted(announced.paths("file_discovered")) == ["first.mp3", "second.mp3", "third.mp3"]
    assert len(announced.bodies) == 3
    assert {hashes_of(b) for b in announced.bodies} == {digests(b"shared content")}


def test_zero_byte_file_is_announced_with_the_empty_hashes(tmp_path: Path) -> None:
    """An empty file is announced, size "0", with the SHA-256 and XXH128 of no bytes."""
    with observed_pipeline(tmp_path) as (announced, root):
        (root / "empty.flag").touch()
        [body] = announced.until(lambda bodies: len(bodies) >= 1)
    assert body["event_type"] == "file_discovered"
    assert body["file_info"]["size_bytes"] == "0"
    assert hashes_of(body) == (EMPTY_SHA256, EMPTY_XXH128)


@pytest.fixture
def ram_dir() -> Iterator[Path]:
    """A scratch directory on tmpfs when there is one (a sparse file there costs no memory and
    reads fastest); removed afterwards."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="mw-hostile-sparse-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_huge_sparse_file_is_hashed_streaming_with_bounded_memory(ram_dir: Path) -> None:
    """A 20 GiB sparse file (MULTIWATCH_HOSTILE_SPARSE_GIB) is announced with the right hashes
    while the watcher's memory grows by far less than 100 MiB: it is read in chunks."""
    size = SPARSE_GIB * 1024 * MIB
    with observed_pipeline(ram_dir, settle_seconds=0.05) as (announced, root):
        with open(root / "huge.img", "wb") as handle:
            handle.truncate(size)
        assert os.stat(root / "huge.img").st_blocks == 0  # really sparse
        started = time.monotonic()
        with PeakRss(interval=0.05) as memory:
            [body] = announced.until(lambda bodies: len(bodies) >= 1, timeout=600)
        elapsed = time.monotonic() - started
    figure(f"{SPARSE_GIB} GiB sparse file hashed in {elapsed:.1f}s "
           f"({size / elapsed / 1e9:.2f} GB/s), RSS growth {memory.growth / MIB:.1f} MiB "
           f"over {memory.samples} samples")
    assert body["file_info"]["size_bytes"] == str(size)
    if SPARSE_GIB in ZERO_DIGESTS:
        assert hashes_of(body) == ZERO_DIGESTS[SPARSE_GIB]
    assert memory.samples >= 3
    assert memory.growth < 100 * MIB
