"""Durability at scale: a restart over 100,000 unchanged files (about 2 minutes).

Figures are printed on `DURABILITY:` lines (run pytest with -s to see them).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psutil

from tests.support.consumer import collect, wait_for
from tests.support.faults import (
    durable_roster,
    figure,
    is_message,
    names,
    queue_depth,
    startup_complete,
)
from tests.support.process import Multiwatch

QUEUE = "file_events"
FILES = 100_000
PER_DIRECTORY = 1_000
FILE_SIZE = 4_096  # one disk block each: 400 MiB of content, cheap to create


def _make_tree(root: Path) -> int:
    """FILES distinct files of FILE_SIZE bytes in directories of PER_DIRECTORY; total bytes."""
    for d in range(FILES // PER_DIRECTORY):
        directory = root / f"d{d:03d}"
        directory.mkdir(parents=True)
        for f in range(PER_DIRECTORY):
            name = f"f{d:03d}-{f:04d}.dat"
            (directory / name).write_bytes(name.encode().ljust(FILE_SIZE, b"."))
    return FILES * FILE_SIZE


def _start(roster: Path) -> tuple[Multiwatch, int]:
    """A running multiwatch and the pid of its watcher child."""
    mw = Multiwatch(["-c", str(roster)])
    try:
        pid = mw.wait_watching("tree", timeout=60)["pid"]
    except BaseException:
        mw.cleanup()
        raise
    return mw, pid


def test_restart_over_100k_unchanged_files_reads_and_announces_nothing(
        tmp_path: Path, broker_url: str) -> None:
    """A restart over 100,000 unchanged files hashes none, reads no content, publishes nothing."""
    tree = tmp_path / "tree"
    started = time.monotonic()
    content_bytes = _make_tree(tree)
    created = time.monotonic() - started
    roster = durable_roster(tmp_path, broker_url, [{"id": "tree", "directory": str(tree)}],
                            settle=0.1)
    try:
        # First run: everything is new and announced once.
        first, first_child = _start(roster)
        try:
            started = time.monotonic()
            initial = startup_complete(first, "tree", timeout=300)
            scanned_in = time.monotonic() - started
            first_io = psutil.Process(first_child).io_counters()
            first.wait_for_log(lambda line: is_message(line, "connected to broker", "tree"))
            wait_for(lambda: queue_depth(broker_url, QUEUE) >= FILES, timeout=300, interval=1.0,
                     message="the first run did not publish every file")
            published_in = time.monotonic() - started
            assert first.terminate(timeout=30) == 0
        finally:
            first.cleanup()
        assert initial["files_scanned"] == FILES and initial["files_hashed"] == FILES
        assert first_io.read_chars >= content_bytes  # the measure below does see content reads
        published = queue_depth(broker_url, QUEUE)  # final: nobody publishes any more
        started = time.monotonic()
        got = collect(broker_url, QUEUE, timeout=300, until=lambda ms: len(ms) >= published)
        consumed_in = time.monotonic() - started
        assert len(names(got)) == FILES
        figure(f"first run over {FILES} new files ({content_bytes // 2**20} MiB, created in "
               f"{created:.1f}s): startup scan+hash {scanned_in:.1f}s, all published after "
               f"{published_in:.1f}s (child read {first_io.read_chars / 2**20:.0f} MiB), "
               f"{len(got)} messages ({len(got) - FILES} duplicates), "
               f"consumed by the test in {consumed_in:.1f}s")

        # Second run: nothing changed, so nothing is read and nothing is announced.
        second, child = _start(roster)
        try:
            started = time.monotonic()
            restart = startup_complete(second, "tree", timeout=300)
            restarted_in = time.monotonic() - started
            io = psutil.Process(child).io_counters()
            (tree / "barrier.txt").write_bytes(b"the only change")
            got = collect(broker_url, QUEUE, timeout=60,
                          until=lambda ms: "barrier.txt" in names(ms))
        finally:
            second.cleanup()
        state_bytes = sum(p.stat().st_size for p in (tmp_path / "state").rglob("*")
                          if p.is_file())

        assert [m.body["file_info"]["name"] for m in got] == ["barrier.txt"]
        assert restart["files_scanned"] == FILES
        assert restart["files_hashed"] == 0
        assert restart["bytes_hashed"] == 0
        # Everything the child read (Python, its state database, ...) is well below the
        # content of the tree: it opened none of the watched files.
        assert io.read_chars < content_bytes / 4, io
        figure(f"restart over {FILES} unchanged files: startup complete in {restarted_in:.1f}s, "
               f"files_hashed {restart['files_hashed']}, bytes_hashed {restart['bytes_hashed']}, "
               f"child read {io.read_chars / 2**20:.1f} MiB in all (tree content "
               f"{content_bytes / 2**20:.0f} MiB, state dir {state_bytes / 2**20:.1f} MiB), "
               f"0 events besides the barrier")
    finally:
        shutil.rmtree(tree, ignore_errors=True)  # 100,000 inodes: do not leave them to pytest
