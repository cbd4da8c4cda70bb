"""read_rate_limit: the token bucket every hashing thread of a watcher reads under."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from pathlib import Path

import pytest

from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.hashing import HashCancelled, hash_file
from multiwatch.watcher.read_limit import (
    SLICE_SECONDS,
    ReadLimit,
    current_read_limit,
    install_read_limit,
)

MiB = 1 << 20


class FakeClock:
    """A monotonic clock that only moves when the limit pauses on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def pause(self, seconds: float, _cancelled: threading.Event | None) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def fake_limit(rate: float, clock: FakeClock, **options: object) -> ReadLimit:
    return ReadLimit(rate, clock=clock, pause=clock.pause, **options)  # type: ignore[arg-type]


def test_reads_within_the_burst_do_not_wait() -> None:
    """A small file after a quiet spell is read at once (a quarter second's worth is free)."""
    clock = FakeClock()
    limit = fake_limit(4 * MiB, clock)
    limit.take(MiB)
    assert clock.pauses == []


def test_a_long_read_runs_at_the_rate() -> None:
    """16 MiB at 4 MiB/s takes 3.75 s: four seconds' worth, less the quarter-second burst."""
    clock = FakeClock()
    limit = fake_limit(4 * MiB, clock)
    for _ in range(16):
        limit.take(MiB)
    assert clock.now - 1000.0 == pytest.approx(3.75)


def test_waits_are_short_slices_with_a_tick_between() -> None:
    """A chunk that costs 10 s of debt is waited for in slices of at most SLICE_SECONDS,
    with the tick (the watcher's heartbeat) called before each one."""
    clock = FakeClock()
    ticks: list[float] = []
    limit = fake_limit(100_000, clock, burst_seconds=0)
    limit.take(1_000_000, tick=lambda: ticks.append(clock.now))
    assert clock.now - 1000.0 == pytest.approx(10.0)
    assert max(clock.pauses) <= SLICE_SECONDS
    assert len(ticks) == len(clock.pauses) >= 100


def test_a_quiet_spell_refills_only_up_to_the_burst() -> None:
    """After ten idle seconds a 4 MiB read at 4 MiB/s still waits 0.75 s: idle time is not
    saved up beyond the burst."""
    clock = FakeClock()
    limit = fake_limit(4 * MiB, clock)
    limit.take(MiB)
    clock.now += 10.0
    start = clock.now
    limit.take(4 * MiB)
    assert clock.now - start == pytest.approx(0.75)


def test_a_stopping_watcher_reads_without_waiting() -> None:
    """Once the watcher is stopping, throttling ends: SIGTERM is not held up by a debt."""
    clock = FakeClock()
    stopping = False
    limit = fake_limit(1000, clock, released=lambda: stopping)
    limit.take(5000)
    assert clock.now - 1000.0 == pytest.approx(5000 / 1000 - 0.25)
    stopping = True
    before = clock.now
    limit.take(10**9)
    assert clock.now == before


def test_the_release_ends_a_wait_in_progress() -> None:
    """A reader waiting off a big debt returns within a slice of the stop being asked."""
    stopping = threading.Event()
    limit = ReadLimit(1000, released=stopping.is_set)
    reader = threading.Thread(target=limit.take, args=(10**6,))  # 1,000 s of debt
    reader.start()
    time.sleep(0.2)
    asked = time.monotonic()
    stopping.set()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert time.monotonic() - asked < SLICE_SECONDS + 0.3


def test_a_cancelled_wait_ends_at_once() -> None:
    """A hash cancelled while it waits (a newer event for its file) stops waiting at once."""
    limit = ReadLimit(1000)
    cancelled = threading.Event()
    reader = threading.Thread(target=limit.take, args=(10**6,), kwargs={"cancelled": cancelled})
    reader.start()
    time.sleep(0.2)
    asked = time.monotonic()
    cancelled.set()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert time.monotonic() - asked < 0.2


def test_threads_share_one_bucket() -> None:
    """Two threads reading at once get the rate between them, not each."""
    limit = ReadLimit(2_000_000)  # burst: 500,000 bytes

    def read() -> None:
        for _ in range(20):
            limit.take(100_000)

    started = time.monotonic()
    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    # 4,000,000 bytes at 2,000,000/s, less the burst: at least 1.75 s.
    assert time.monotonic() - started >= 1.7


def test_no_limit_is_installed_for_zero() -> None:
    """read_rate_limit: 0 installs no limit; a rate installs one shared by the process."""
    try:
        assert install_read_limit(0) is None and current_read_limit() is None
        limit = install_read_limit(50 * MiB)
        assert limit is not None and current_read_limit() is limit and limit.rate == 50 * MiB
    finally:
        install_read_limit(0)


@pytest.mark.parametrize("size", [3 * MiB, 9 * MiB + 5], ids=["inline", "big-file-reader"])
def test_hash_file_pays_for_every_byte(tmp_path: Path, size: int) -> None:
    """Both read loops (small files inline, big files with SHA-256 beside) read under the
    limit, keep calling progress while they wait, and still hash correctly."""
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    clock = FakeClock()
    limit = fake_limit(MiB, clock)
    beats: list[float] = []
    hashed = hash_file(ConfinedRoot(str(tmp_path)), "f", lambda: beats.append(clock.now),
                       limit=limit)
    assert hashed.sha256 == hashlib.sha256(data).hexdigest()
    assert clock.now - 1000.0 == pytest.approx(size / MiB - 0.25)
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert len(beats) >= 20 and max(gaps) <= SLICE_SECONDS + 1e-9


def test_a_throttled_hash_is_cancelled_promptly(tmp_path: Path) -> None:
    """A big file's hash waiting on the limit stops with HashCancelled as soon as it is
    cancelled (the pool's shutdown at SIGTERM), not when its debt is paid."""
    (tmp_path / "big").write_bytes(os.urandom(8 * MiB))
    cancelled = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            hash_file(ConfinedRoot(str(tmp_path)), "big", cancelled=cancelled,
                      limit=ReadLimit(MiB))
        except HashCancelled as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.5)
    asked = time.monotonic()
    cancelled.set()
    worker.join(timeout=5)
    assert not worker.is_alive() and len(outcome) == 1
    assert time.monotonic() - asked < 0.5
