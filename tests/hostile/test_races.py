"""Races: files and directories that change under the watcher's feet, the root itself vanishing,
and trees deep enough to break recursive code."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import multiwatch.watcher.pipeline as pipeline_module
from multiwatch.watcher.hashing import CHUNK_BYTES
from multiwatch.watcher.raw_event import EventKind, RawEvent
from tests.support.consumer import wait_for
from tests.support.hostile import (
    Announced,
    descend,
    during_hashing,
    instance_view,
    is_log,
    observed_pipeline,
    remove_tree,
    roster,
    write_at,
)
from tests.support.process import Multiwatch, free_port
from tests.watcher.test_pipeline import digests, hashes_of, make_pipeline

# watchdog warns (harmlessly, with an 80 kB message) when it re-adds a watch in a deep tree.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

BIG = b"0123456789abcdef" * (CHUNK_BYTES // 16) * 3  # three chunks: the hook fires mid-file


def _pipeline(tmp_path: Path) -> tuple[Announced, Path]:
    pipeline, outbox, root = make_pipeline(tmp_path)
    return Announced(pipeline, outbox), root


def test_new_file_deleted_while_being_hashed_is_never_announced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new file deleted after the first chunk was read is not announced at all (no partial
    hash), and the pipeline carries on."""
    announced, root = _pipeline(tmp_path)
    (root / "doomed.bin").write_bytes(BIG)
    chunks = during_hashing(monkeypatch, lambda: (root / "doomed.bin").unlink())
    announced.pipeline.notifications.put(RawEvent(EventKind.CREATED, False, "doomed.bin"))
    announced.settled()
    assert chunks and chunks[0] >= 1  # the deletion really happened mid-read
    assert announced.bodies == []
    assert "doomed.bin" not in announced.pipeline.tracked


def test_known_file_deleted_while_being_rehashed_is_announced_deleted_with_old_hashes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A known file changed and then deleted while its new content is read: one file_deleted
    carrying the last announced hashes, never a file_modified with a partial hash."""
    announced, root = _pipeline(tmp_path)
    (root / "song.bin").write_bytes(b"version 1")
    announced.pipeline.request_scan()
    announced.until(lambda bodies: len(bodies) == 1)
    (root / "song.bin").write_bytes(BIG)
    during_hashing(monkeypatch, lambda: (root / "song.bin").unlink())
    announced.pipeline.notifications.put(RawEvent(EventKind.MODIFIED, False, "song.bin"))
    announced.settled()
    assert announced.summary() == [("file_discovered", "song.bin"), ("file_deleted", "song.bin")]
    assert hashes_of(announced.bodies[1]) == digests(b"version 1")


@pytest.mark.parametrize("how", ["truncated", "rewritten-same-size", "replaced-by-rename"])
def test_file_changed_while_being_hashed_is_resettled_with_final_hashes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A file truncated, rewritten in place or replaced while being read is settled again and
    announced once, with the hashes of its final content."""
    announced, root = _pipeline(tmp_path)
    path = root / "movie.bin"
    path.write_bytes(BIG)
    final = {"truncated": b"short now",
             "rewritten-same-size": BIG[::-1],
             "replaced-by-rename": b"another file"}[how]

    def change() -> None:
        if how == "replaced-by-rename":
            (root / "movie.bin.part").write_bytes(final)
            os.replace(root / "movie.bin.part", path)
        else:
            with open(path, "r+b") as handle:  # same inode, new content
                handle.truncate(0)
                handle.write(final)

    chunks = during_hashing(monkeypatch, change)
    announced.pipeline.notifications.put(RawEvent(EventKind.CREATED, False, "movie.bin"))
    announced.settled()
    assert len(chunks) >= 2  # read, found changed, settled again and read again
    [body] = announced.bodies
    assert body["event_type"] == "file_discovered"
    assert body["file_info"]["size_bytes"] == str(len(final))
    assert hashes_of(body) == digests(final)


def test_directories_deleted_recreated_and_moved_away_mid_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the startup scan is half-way: a directory deleted and recreated with other files,
    another moved out of the tree. The scan finishes without error; exactly the files on disk
    at the end are announced, with their final content."""
    monkeypatch.setattr(pipeline_module, "SCAN_ENTRIES_PER_STEP", 1)
    root = tmp_path / "w"
    for name in ("keep", "recreate", "leave"):
        for i in range(5):
            path = root / name / f"f{i}.mp3"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"%s old %d" % (name.encode(), i))
    with observed_pipeline(tmp_path, settle_seconds=0.3) as (announced, root):
        announced.pipeline.request_scan()
        for _ in range(3):
            announced.pipeline.step(0.0)
        assert announced.pipeline.busy  # really mid-scan
        shutil.rmtree(root / "recreate")
        (root / "recreate").mkdir()
        for i in range(3):
            (root / "recreate" / f"new{i}.mp3").write_bytes(b"new %d" % i)
        os.rename(root / "leave", tmp_path / "gone-elsewhere")
        announced.until(lambda bodies: len({b["file_info"]["relative_path"] for b in bodies})
                        >= 8, timeout=15)
        announced.settled()
    present = {f"keep/f{i}.mp3": b"keep old %d" % i for i in range(5)}
    present |= {f"recreate/new{i}.mp3": b"new %d" % i for i in range(3)}
    live: dict[str, tuple[str, str]] = {}
    for body in announced.bodies:
        relative = body["file_info"]["relative_path"]
        if body["event_type"] == "file_deleted":
            live.pop(relative, None)
        else:
            live[relative] = hashes_of(body)
    assert live == {relative: digests(data) for relative, data in present.items()}
    assert not [p for p in announced.paths() if p.startswith("leave/")]


def test_watched_root_deleted_and_recreated_recovers(tmp_path: Path) -> None:
    """Deleting the watched directory itself: the instance is reported "directory missing" and
    retried; once the directory is back it runs again and announces new files."""
    port = free_port()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "other").mkdir()
    mw = Multiwatch(["-c", str(roster(tmp_path, [
        {"id": "inbox", "directory": str(inbox)},
        {"id": "other", "directory": str(tmp_path / "other")}], http_port=port))])
    try:
        first = mw.wait_watching("inbox")
        mw.wait_watching("other")
        shutil.rmtree(inbox)
        wait_for(lambda: instance_view(port, "inbox").get("reason") == "directory missing",
                 timeout=30, message="vanished root not reported as directory missing")
        assert instance_view(port, "other").get("state") == "RUNNING"
        inbox.mkdir()
        again = mw.wait_watching("inbox", after=mw.lines.index(first) + 1, timeout=30)
        assert again["pid"] != first["pid"]
        (inbox / "after.mp3").write_bytes(b"back")
        mw.wait_for_log(lambda line: is_log(line, "file discovered", "inbox")
                        and line.get("path") == str(inbox / "after.mp3"), timeout=30)
        wait_for(lambda: instance_view(port, "inbox").get("state") == "RUNNING", timeout=30)
    finally:
        mw.cleanup()


DEPTH = 1000


def test_tree_1000_levels_deep_is_scanned_without_recursion(tmp_path: Path) -> None:
    """The reconcile scan walks a 1,000-level tree without RecursionError and announces the
    files at the bottom and half-way down."""
    announced, root = _pipeline(tmp_path)
    try:
        with descend(root, ["d"] * (DEPTH // 2)) as middle:
            write_at(middle, "middle.mp3", b"half-way")
            with descend(Path(f"/proc/self/fd/{middle}"), ["d"] * (DEPTH // 2)) as bottom:
                write_at(bottom, "bottom.mp3", b"deep down")
        announced.pipeline.request_scan()
        announced.until(lambda bodies: len(bodies) >= 2, timeout=60)
        announced.settled()
    finally:
        remove_tree(root / "d")
    assert sorted(p.count("/") for p in announced.paths("file_discovered")) == [
        DEPTH // 2, DEPTH]
    assert {hashes_of(b) for b in announced.bodies} == {digests(b"half-way"),
                                                        digests(b"deep down")}


def _announced_or_broken(mw: Multiwatch, instance_id: str, suffix: str,
                         timeout: float) -> str:
    """Wait until the instance announces a path ending in `suffix` ("announced"), or the watcher
    shows it is broken: a crash, a dead observer, or a traceback on its output."""
    outcome: list[str] = []

    def settled() -> bool:
        for line in list(mw.lines):
            if line.get("instance_id") != instance_id:
                continue
            if is_log(line, "file discovered") and str(line.get("path")).endswith(suffix):
                outcome.append("announced")
            elif line.get("message") in ("watcher crashed",
                                         "filesystem observer died; restarting it and rescanning"):
                outcome.append(f"{line['message']}: {str(line.get('exception'))[-200:]}")
        outcome.extend(f"traceback: {raw[-200:]}" for raw in list(mw.raw)
                       if "RecursionError" in raw and not raw.startswith("{"))
        return bool(outcome)

    wait_for(settled, timeout=timeout, interval=0.1,
             message=f"neither announced nor broken within {timeout}s: {mw.raw[-5:]}")
    return outcome[0]


def test_tree_1000_levels_deep_moved_in_while_watching(tmp_path: Path) -> None:
    """A 1,000-level tree moved into a watched directory: the file at its bottom is announced
    and the watch keeps working (a file written afterwards is announced too)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    mw = Multiwatch(["-c", str(roster(tmp_path, [{"id": "deep", "directory": str(inbox)}]))])
    try:
        with descend(staging, ["d"] * DEPTH) as bottom:
            write_at(bottom, "bottom.mp3", b"deep down")
        mw.wait_watching("deep")
        os.rename(staging / "d", inbox / "d")
        assert _announced_or_broken(mw, "deep", "/d/bottom.mp3", timeout=60) == "announced"
        (inbox / "top.mp3").write_bytes(b"top")
        assert _announced_or_broken(mw, "deep", "/top.mp3", timeout=30) == "announced"
    finally:
        mw.cleanup()
        remove_tree(inbox)
        remove_tree(staging)


def test_tree_1000_levels_deep_present_at_start(tmp_path: Path) -> None:
    """A watcher started on a tree that is already 1,000 levels deep comes up, announces the
    file at the bottom, and keeps watching there."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    mw = None
    try:
        with descend(inbox, ["d"] * DEPTH) as bottom:
            write_at(bottom, "bottom.mp3", b"deep down")
        mw = Multiwatch(["-c", str(roster(tmp_path, [{"id": "deep", "directory": str(inbox)}]))])
        assert _announced_or_broken(mw, "deep", "/d/bottom.mp3", timeout=60) == "announced"
        (inbox / "top.mp3").write_bytes(b"top")
        assert _announced_or_broken(mw, "deep", "/top.mp3", timeout=30) == "announced"
    finally:
        if mw is not None:
            mw.cleanup()
        remove_tree(inbox)
