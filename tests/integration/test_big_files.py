"""Big files through a real `multiwatch run`: hashed from their close on, in parallel, under
the supervisor-wide `max_parallel_hashes` cap, never holding small files back."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from multiwatch.watcher.hash_slots import HashSlots
from tests.support.consumer import Received, collect
from tests.support.process import LogLine, Multiwatch, write_roster

MIB = 1 << 20
# Long enough that a writer slowed down by a busy machine never pauses for a whole settle
# period in the middle of a file (which would rightly announce the part written so far).
SLOW_WRITER_SETTLE = 2.0


def _roster(tmp_path: Path, broker_url: str, instances: dict[str, Path], *,
            settle: float = 0.3, slots: int | None = None) -> Path:
    supervisor: dict[str, Any] = {"stop_timeout_seconds": 5}
    if slots is not None:
        supervisor["max_parallel_hashes"] = slots
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "broker": {"url": broker_url},
        "defaults": {"settle_seconds": settle},
        "supervisor": supervisor,
        "instances": [{"id": iid, "directory": str(d)} for iid, d in instances.items()],
    })


def _dirs(tmp_path: Path, *names: str) -> dict[str, Path]:
    made = {}
    for name in names:
        made[name] = tmp_path / name
        made[name].mkdir()
    return made


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Multiwatch]]:
    """Every `multiwatch run` a test starts, stopped by process group afterwards."""
    runs: list[Multiwatch] = []
    yield runs
    for run in runs:
        run.cleanup()


def _run(started: list[Multiwatch], roster: Path, *instance_ids: str) -> Multiwatch:
    mw = Multiwatch(["-c", str(roster)])
    started.append(mw)
    for iid in instance_ids:
        mw.wait_watching(iid)
    return mw


def _write(path: Path, size: int) -> str:
    """Write `size` random bytes in 4 MiB chunks; the sha256 of the content."""
    digest = hashlib.sha256()
    with open(path, "ab") as f:
        for offset in range(0, size, 4 * MIB):
            chunk = os.urandom(min(4 * MIB, size - offset))
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def _write_together(first: Path, second: Path, size: int) -> None:
    """Write two files of different content in step, so that both close at the same moment."""
    with open(first, "wb") as f1, open(second, "wb") as f2:
        for _ in range(size // (4 * MIB)):
            block = os.urandom(4 * MIB)
            f1.write(block)
            f2.write(block[::-1])


def _hash_lines(mw: Multiwatch, message: str, path: Path) -> list[LogLine]:
    return [line for line in list(mw.lines)
            if line.get("message") == message and line.get("path") == str(path)]


def _at(line: LogLine) -> datetime:
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))


def _interval(mw: Multiwatch, path: Path) -> tuple[datetime, datetime]:
    """When the watcher began and finished reading `path` (the only hash of it)."""
    [began] = _hash_lines(mw, "hashing big file", path)
    [ended] = _hash_lines(mw, "hashed big file", path)
    return _at(began), _at(ended)


def _by_name(messages: list[Received], name: str) -> list[dict[str, Any]]:
    return [m.body for m in messages if m.body["file_info"]["name"] == name]


def _names(messages: list[Received]) -> set[str]:
    return {m.body["file_info"]["name"] for m in messages}


def test_big_file_appended_to_after_close_is_announced_once_with_final_hashes(
        tmp_path: Path, broker_url: str, started: list[Multiwatch]) -> None:
    """A big file hashed at its close, then appended to within its settle period: one
    announcement, of the final content (the early hash is discarded)."""
    dirs = _dirs(tmp_path, "media")
    mw = _run(started, _roster(tmp_path, broker_url, dirs, settle=3.0), "media")
    big = dirs["media"] / "video.mkv"
    _write(big, 16 * MIB)
    mw.wait_for_log(lambda line: line.get("message") == "hashed big file"
                    and line.get("path") == str(big))
    with open(big, "rb") as f:
        head = f.read()
    tail = os.urandom(MIB)
    with open(big, "ab") as f:
        f.write(tail)

    got = collect(broker_url, "file_events", timeout=60,
                  until=lambda ms: "video.mkv" in _names(ms))
    (dirs["media"] / "barrier.txt").write_text("after the big file")
    got += collect(broker_url, "file_events", timeout=30,
                   until=lambda ms: "barrier.txt" in _names(ms))

    [body] = _by_name(got, "video.mkv")
    assert body["file_info"]["sha256_hash"] == hashlib.sha256(head + tail).hexdigest()
    assert body["file_info"]["size_bytes"] == str(17 * MIB)
    assert len(_hash_lines(mw, "hashed big file", big)) == 2  # the early one, then the final


def _hash_two_together(mw: Multiwatch, broker_url: str, first: Path, second: Path,
                       size: int) -> tuple[tuple[datetime, datetime], tuple[datetime, datetime]]:
    """Write two big files that close together; once both are announced (each exactly
    once), the (start, end) of each one's hash from the watcher's log."""
    _write_together(first, second, size)
    got = collect(broker_url, "file_events", timeout=60,
                  until=lambda ms: {first.name, second.name} <= _names(ms))
    assert len(_by_name(got, first.name)) == len(_by_name(got, second.name)) == 1
    return _interval(mw, first), _interval(mw, second)


def test_two_big_files_are_hashed_at_the_same_time(
        tmp_path: Path, broker_url: str, started: list[Multiwatch]) -> None:
    """Two big files closed together are read in parallel (default cap of 2)."""
    dirs = _dirs(tmp_path, "media")
    mw = _run(started, _roster(tmp_path, broker_url, dirs, settle=SLOW_WRITER_SETTLE), "media")
    (start_one, end_one), (start_two, end_two) = _hash_two_together(
        mw, broker_url, dirs["media"] / "one.bin", dirs["media"] / "two.bin", 128 * MIB)
    assert start_two < end_one and start_one < end_two, "the two hashes did not overlap"


def test_small_file_is_announced_while_a_big_file_waits_for_its_hash(
        tmp_path: Path, broker_url: str, started: list[Multiwatch]) -> None:
    """With every hash slot busy, a big file waits but a small file written after it is
    announced at once; the big one follows when a slot frees."""
    dirs = _dirs(tmp_path, "media")
    mw = _run(started, _roster(tmp_path, broker_url, dirs), "media")
    slots = HashSlots.under(str(tmp_path / "state"), 2)
    held = [slots.try_acquire(), slots.try_acquire()]  # another process's hashes, as it were
    big, small = dirs["media"] / "big.bin", dirs["media"] / "small.txt"
    big_sha = _write(big, 8 * MIB)
    small.write_text("small and quick")

    got = collect(broker_url, "file_events", timeout=30,
                  until=lambda ms: "small.txt" in _names(ms))
    assert "big.bin" not in _names(got)
    assert _hash_lines(mw, "hashing big file", big) == []
    for slot in held:
        assert slot is not None
        slot.release()
    got = collect(broker_url, "file_events", timeout=30,
                  until=lambda ms: "big.bin" in _names(ms))
    [body] = _by_name(got, "big.bin")
    assert body["file_info"]["sha256_hash"] == big_sha


def test_max_parallel_hashes_is_shared_by_all_instances(
        tmp_path: Path, broker_url: str, started: list[Multiwatch]) -> None:
    """With `max_parallel_hashes: 1`, two instances' big files are read one after the other."""
    dirs = _dirs(tmp_path, "left", "right")
    roster = _roster(tmp_path, broker_url, dirs, slots=1, settle=SLOW_WRITER_SETTLE)
    mw = _run(started, roster, "left", "right")
    (start_a, end_a), (start_b, end_b) = _hash_two_together(
        mw, broker_url, dirs["left"] / "a.bin", dirs["right"] / "b.bin", 64 * MIB)
    assert end_a <= start_b or end_b <= start_a, "two hashes ran at once with one slot"


# Holds every slot of a state_dir's hash-slots, says so, then sleeps until killed.
_HOLDER = """
import sys, time
from multiwatch.watcher.hash_slots import HashSlots
slots = HashSlots.under(sys.argv[1], int(sys.argv[2]))
held = [slots.try_acquire() for _ in range(int(sys.argv[2]))]
assert all(held), held
print("holding", flush=True)
time.sleep(600)
"""


def test_slot_of_a_killed_process_is_freed(
        tmp_path: Path, broker_url: str, started: list[Multiwatch]) -> None:
    """A process holding the only hash slot is kill -9'd: the kernel frees the slot and the
    waiting big file is announced."""
    dirs = _dirs(tmp_path, "media")
    state = tmp_path / "state"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(state), "1"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        mw = _run(started, _roster(tmp_path, broker_url, dirs, slots=1), "media")
        big = dirs["media"] / "big.bin"
        sha = _write(big, 8 * MIB)
        (dirs["media"] / "small.txt").write_text("proves the big file has settled")
        collect(broker_url, "file_events", timeout=30,
                until=lambda ms: "small.txt" in _names(ms))
        assert _hash_lines(mw, "hashing big file", big) == []
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        got = collect(broker_url, "file_events", timeout=30,
                      until=lambda ms: "big.bin" in _names(ms))
        [body] = _by_name(got, "big.bin")
        assert body["file_info"]["sha256_hash"] == sha
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)


def test_slot_of_a_watcher_killed_while_hashing_is_freed(
        tmp_path: Path, broker_url: str, started: list[Multiwatch]) -> None:
    """With one slot, a watcher kill -9'd in the middle of a hash does not keep the slot:
    the other instance's big file is hashed and announced, and so is the killed one's file
    once its watcher is restarted."""
    dirs = _dirs(tmp_path, "left", "right")
    roster = _roster(tmp_path, broker_url, dirs, slots=1, settle=SLOW_WRITER_SETTLE)
    mw = _run(started, roster, "left", "right")
    left_pid = next(line["pid"] for line in mw.lines
                    if line.get("message") == "watching" and line.get("instance_id") == "left")
    a, b = dirs["left"] / "a.bin", dirs["right"] / "b.bin"
    _write(a, 512 * MIB)
    mw.wait_for_log(lambda line: line.get("message") == "hashing big file"
                    and line.get("path") == str(a))
    b_sha = _write(b, 8 * MIB)
    os.kill(left_pid, signal.SIGKILL)
    exited = mw.wait_for_log(lambda line: line.get("message", "").startswith("child exited")
                             and line.get("instance_id") == "left")
    before_exit = mw.lines[:mw.lines.index(exited)]
    assert not [line for line in before_exit if line.get("message") == "hashed big file"
                and line.get("path") == str(a)], "finished before the kill: file too small"

    got = collect(broker_url, "file_events", timeout=90,
                  until=lambda ms: {"a.bin", "b.bin"} <= _names(ms))
    [body] = _by_name(got, "b.bin")
    assert body["file_info"]["sha256_hash"] == b_sha
