"""End to end: a real `multiwatch run`, real files, a real RabbitMQ, a consumer counting."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import xxhash

from tests.support.consumer import Received, collect, connection_names, wait_for
from tests.support.process import Multiwatch, write_roster


def _roster(tmp_path: Path, broker_url: str, *instances: tuple[str, Path],
            settle: float = 0.3) -> Path:
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "broker": {"url": broker_url},
        "defaults": {"settle_seconds": settle},
        "supervisor": {"stop_timeout_seconds": 5},
        "instances": [{"id": iid, "directory": str(d)} for iid, d in instances],
    })


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    music, downloads = tmp_path / "music", tmp_path / "downloads"
    music.mkdir()
    downloads.mkdir()
    return music, downloads


@pytest.fixture
def fleet(tmp_path: Path, broker_url: str, dirs: tuple[Path, Path]):
    """A running supervisor over two instances, stopped (by pid group) after the test."""
    music, downloads = dirs
    roster = _roster(tmp_path, broker_url, ("watcher-music", music),
                     ("watcher-downloads", downloads))
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_watching("watcher-music")
        mw.wait_watching("watcher-downloads")
        yield mw
    finally:
        mw.cleanup()


def _by_name(messages: list[Received], name: str) -> list[dict[str, Any]]:
    return [m.body for m in messages if m.body["file_info"]["name"] == name]


def _names(messages: list[Received]) -> set[str]:
    return {m.body["file_info"]["name"] for m in messages}


def test_two_instances_announce_files_with_hashes_and_names(
        fleet: Multiwatch, dirs: tuple[Path, Path], broker_url: str, rabbitmq) -> None:
    """Files in each directory arrive once, tagged with their instance, with correct hashes."""
    music, downloads = dirs
    song, report = os.urandom(300_000), b"quarterly numbers\n"
    (music / "song.mp3").write_bytes(song)
    (downloads / "report.txt").write_bytes(report)

    got = collect(broker_url, "file_events", timeout=30,
                  until=lambda ms: {"song.mp3", "report.txt"} <= _names(ms))

    [song_msg] = _by_name(got, "song.mp3")
    [report_msg] = _by_name(got, "report.txt")
    assert song_msg["instance_id"] == "watcher-music"
    assert song_msg["watched_directory"] == str(music)
    assert song_msg["event_type"] == "file_discovered"
    assert song_msg["file_info"]["path"] == str(music / "song.mp3")
    assert song_msg["file_info"]["size_bytes"] == str(len(song))
    assert song_msg["file_info"]["sha256_hash"] == hashlib.sha256(song).hexdigest()
    assert song_msg["file_info"]["xxh128_hash"] == xxhash.xxh128(song).hexdigest()
    assert report_msg["instance_id"] == "watcher-downloads"
    assert report_msg["file_info"]["sha256_hash"] == hashlib.sha256(report).hexdigest()
    props = next(m for m in got if m.body is song_msg)
    assert props.routing_key == "file.discovered"
    assert props.properties["content_type"] == "application/json"
    assert props.properties["delivery_mode"] == 2
    assert props.properties["message_id"]
    assert props.headers == {"instance_id": "watcher-music", "event_type": "file_discovered"}
    names = connection_names(rabbitmq)
    assert "file_watcher_watcher-music" in names
    assert "file_watcher_watcher-downloads" in names


def test_slow_write_is_announced_once_with_final_hashes(
        fleet: Multiwatch, dirs: tuple[Path, Path], broker_url: str) -> None:
    """A file written in chunks for longer than settle_seconds gives exactly one event."""
    music, _ = dirs
    chunks = [os.urandom(64_000) for _ in range(8)]
    with open(music / "slow.flac", "wb") as f:
        for chunk in chunks:  # 8 x 0.15 s = 1.2 s of writing, settle is 0.3 s
            f.write(chunk)
            f.flush()
            time.sleep(0.15)
    (music / "barrier.txt").write_text("after the slow file")

    got = collect(broker_url, "file_events", timeout=30,
                  until=lambda ms: "barrier.txt" in _names(ms))

    slow = _by_name(got, "slow.flac")
    assert len(slow) == 1, slow
    assert slow[0]["event_type"] == "file_discovered"
    assert slow[0]["file_info"]["sha256_hash"] == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_modify_delete_move_and_rename_into_place(
        fleet: Multiwatch, dirs: tuple[Path, Path], broker_url: str) -> None:
    """Each kind of change gives exactly the one matching event."""
    music, _ = dirs
    (music / "a.mp3").write_bytes(b"first version")
    (music / "gone.mp3").write_bytes(b"to be deleted")
    (music / "old.mp3").write_bytes(b"to be renamed")
    collect(broker_url, "file_events", timeout=30,
            until=lambda ms: {"a.mp3", "gone.mp3", "old.mp3"} <= _names(ms))

    (music / "a.mp3").write_bytes(b"second version")
    (music / "gone.mp3").unlink()
    (music / "old.mp3").rename(music / "new.mp3")
    (music / "x.mp3.part").write_bytes(b"downloaded")
    (music / "x.mp3.part").rename(music / "x.mp3")
    (music / "barrier.txt").write_text("done")
    got = collect(broker_url, "file_events", timeout=30,
                  until=lambda ms: "barrier.txt" in _names(ms) and len(ms) >= 5)

    events = sorted((m.body["event_type"], m.body["file_info"]["name"]) for m in got)
    assert events == sorted([
        ("file_modified", "a.mp3"),
        ("file_deleted", "gone.mp3"),
        ("file_moved", "new.mp3"),
        ("file_discovered", "x.mp3"),
        ("file_discovered", "barrier.txt"),
    ])
    [moved] = _by_name(got, "new.mp3")
    assert moved["file_info"]["old_path"] == str(music / "old.mp3")
    [modified] = _by_name(got, "a.mp3")
    assert modified["file_info"]["sha256_hash"] == hashlib.sha256(b"second version").hexdigest()
    [deleted] = _by_name(got, "gone.mp3")
    assert deleted["file_info"]["sha256_hash"] == hashlib.sha256(b"to be deleted").hexdigest()


def test_killed_child_is_restarted_and_keeps_announcing(
        fleet: Multiwatch, dirs: tuple[Path, Path], broker_url: str) -> None:
    """kill -9 of a watcher: the supervisor restarts it and new files are announced."""
    music, _ = dirs
    first = fleet.wait_watching("watcher-music")
    mark = len(fleet.lines)
    os.kill(first["pid"], signal.SIGKILL)

    fleet.wait_for_log(lambda line: line.get("message") == "child exited; restarting after backoff"
                       and line.get("instance_id") == "watcher-music", after=mark)
    second = fleet.wait_watching("watcher-music", after=mark)
    assert second["pid"] != first["pid"]
    (music / "after-restart.mp3").write_bytes(b"still watching")

    got = collect(broker_url, "file_events", timeout=30,
                  until=lambda ms: "after-restart.mp3" in _names(ms))
    assert _by_name(got, "after-restart.mp3")[0]["instance_id"] == "watcher-music"


def test_sigterm_stops_everything_quickly_with_status_zero(fleet: Multiwatch) -> None:
    """SIGTERM to the supervisor: exit 0 in under 10 s and no watcher left running."""
    children = fleet.child_pids()  # the watchers, their template, the resource tracker
    assert _watcher_pids(fleet) <= set(children)
    started = time.monotonic()
    status = fleet.terminate(timeout=15)
    elapsed = time.monotonic() - started
    assert status == 0
    assert elapsed < 10, f"took {elapsed:.1f}s"
    # multiprocessing's resource tracker leaves on its own once it reads EOF from the parent.
    wait_for(lambda: not [pid for pid in children if _alive(pid)], timeout=5,
             message=f"processes left behind: {_cmdlines(children)}")


def test_children_exit_when_the_supervisor_is_killed(fleet: Multiwatch) -> None:
    """kill -9 of the supervisor leaves no orphaned watcher behind."""
    children = fleet.child_pids()
    assert _watcher_pids(fleet) <= set(children)
    os.kill(fleet.pid, signal.SIGKILL)
    fleet.process.wait(timeout=10)
    wait_for(lambda: not [pid for pid in children if _alive(pid)], timeout=15,
             message=f"orphaned watchers still running: {children}")


def _watcher_pids(fleet: Multiwatch) -> set[int]:
    return {fleet.wait_watching(iid)["pid"] for iid in ("watcher-music", "watcher-downloads")}


def _cmdlines(pids: list[int]) -> list[str]:
    lines = []
    for pid in pids:
        try:
            lines.append(" ".join(psutil.Process(pid).cmdline()))
        except psutil.NoSuchProcess:
            pass
    return lines


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
