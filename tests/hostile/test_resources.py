"""Resources: a full state disk and a storm of filesystem events."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import psutil

from tests.support.consumer import collect
from tests.support.faults import FAST_BROKER
from tests.support.hostile import (
    MIB,
    PeakRss,
    figure,
    fill_up,
    is_log,
    roster,
    tiny_tmpfs,
)
from tests.support.process import LogLine, Multiwatch

FILES_WHILE_FULL = 200


def _disk_full_reported(line: LogLine) -> bool:
    text = f"{line.get('message', '')} {line.get('error', '')}".lower()
    return line.get("level") in ("WARNING", "ERROR", "CRITICAL") and (
        "disk is full" in text or "no space" in text or "enospc" in text)


def test_full_state_disk_is_reported_and_recovered_from(tmp_path: Path, broker_url: str) -> None:
    """With the state database's filesystem full, the watcher logs a clear disk-full error and
    keeps running (same pid); nothing unstored is announced; once space returns, every file
    that arrived meanwhile is announced with its right hashes."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with tiny_tmpfs(tmp_path / "state", "2m") as state:
        mw = Multiwatch(["-c", str(roster(tmp_path, [{"id": "full", "directory": str(inbox)}],
                                          broker={"url": broker_url, **FAST_BROKER}))])
        try:
            watching = mw.wait_watching("full")
            (inbox / "before.mp3").write_bytes(b"before")
            collect(broker_url, "file_events", timeout=30, until=lambda ms: len(ms) >= 1)
            filled = fill_up(state / "filler")
            mark = len(mw.lines)
            contents = {f"f{i:03d}.mp3": b"while full %d" % i for i in range(FILES_WHILE_FULL)}
            for name, data in contents.items():
                (inbox / name).write_bytes(data)
            line = mw.wait_for_log(lambda x: _disk_full_reported(x)
                                   or is_log(x, "watcher crashed"), timeout=30, after=mark)
            assert _disk_full_reported(line), line.get("exception", line)
            assert not [x for x in mw.lines[mark:] if is_log(x, "watcher crashed")]
            assert state.joinpath("filler").stat().st_size == filled
            (state / "filler").unlink()
            messages = collect(broker_url, "file_events", timeout=60,
                               until=lambda ms: {m.body["file_info"]["name"] for m in ms}
                               >= set(contents))
            assert not [x for x in mw.lines[mark:] if is_log(x, "watcher crashed")]
            assert not [x for x in mw.lines[mark:] if is_log(x, "child started")]
            assert watching["pid"] in mw.child_pids()  # the same watcher, never restarted
        finally:
            mw.cleanup()
    by_name = {m.body["file_info"]["name"]: m.body for m in messages}
    # before.mp3 may come again: if the disk filled between its confirm and the outbox
    # delete, it stays in the outbox and is re-sent (at-least-once, same message_id).
    assert set(by_name) - {"before.mp3"} == set(contents)
    for name, data in contents.items():
        assert by_name[name]["file_info"]["sha256_hash"] == hashlib.sha256(data).hexdigest()


def test_half_a_million_events_do_not_grow_memory(tmp_path: Path) -> None:
    """500,000 changes to 1,000 files in a few seconds: the watcher's memory stays within a few
    MiB of where it was (kernel overflow becomes a rescan, nothing queues up without bound),
    and it still announces a new file promptly afterwards."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    paths = [str(inbox / f"f{i:04d}.dat") for i in range(1000)]
    for i, path in enumerate(paths):
        Path(path).write_bytes(b"%d" % i)
    mw = Multiwatch(["-c", str(roster(tmp_path, [{"id": "burst", "directory": str(inbox)}],
                                      defaults={"settle_seconds": 1.0}))])
    try:
        watching = mw.wait_watching("burst")
        mw.wait_for_log(lambda x: is_log(x, "startup scan complete", "burst"), timeout=60)
        child = psutil.Process(watching["pid"])
        started = time.monotonic()
        with PeakRss(child.pid, interval=0.02) as memory:
            for round_ in range(500):
                stamp = 10**18 + round_
                for path in paths:
                    os.utime(path, ns=(stamp, stamp))
            burst_seconds = time.monotonic() - started
            (inbox / "marker.mp3").write_bytes(b"still listening")
            mw.wait_for_log(lambda x: is_log(x, "file discovered", "burst")
                            and x["path"].endswith("/marker.mp3"), timeout=120)
        total_seconds = time.monotonic() - started
        after = child.memory_info().rss
    finally:
        mw.cleanup()
    figure(f"500,000 changes in {burst_seconds:.1f}s; marker announced {total_seconds:.1f}s "
           f"after the burst began; child RSS {memory.start_rss / MIB:.1f} MiB -> peak "
           f"{memory.peak / MIB:.1f} MiB (+{memory.growth / MIB:.1f}), after "
           f"{after / MIB:.1f} MiB")
    assert memory.samples >= 10
    assert memory.growth < 64 * MIB
    # Touching without changing content announces nothing (only the marker was new).
    discovered = [x for x in mw.lines if is_log(x, "file discovered", "burst")]
    assert len(discovered) == 1001
