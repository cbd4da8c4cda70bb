"""Durability under faults: broker outages and freezes, kill -9, restarts, a full outbox.

Every test runs a real `multiwatch run` against the session's private RabbitMQ and counts
what a consumer receives. Figures (duplicates, time to drain) are printed on lines starting
with `DURABILITY:`; run pytest with -s to see them. A test that stops or freezes the broker
brings it back in a `finally` (see tests/support/faults.py) before it ends.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from multiwatch.watcher.batches import BLOCKED_WAIT
from tests.support.consumer import collect, declare_queue, wait_for
from tests.support.faults import (
    FAST_BROKER,
    Burst,
    broker_frozen,
    broker_stopped,
    duplicates,
    durable_roster,
    emitted,
    figure,
    first_occurrences,
    is_message,
    memory_alarm,
    names,
    outbox_rows,
    startup_complete,
    state_db,
    wait_emitted,
)
from tests.support.process import Multiwatch
from tests.support.rabbitmq import RabbitMQ

QUEUE = "file_events"


def _start(roster: Path, instance_id: str = "inbox", *, connected: bool = True) -> Multiwatch:
    """A running multiwatch that is watching (and, by default, has reached the broker)."""
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_watching(instance_id)
        if connected:
            mw.wait_for_log(lambda line: is_message(line, "connected to broker", instance_id))
    except BaseException:
        mw.cleanup()
        raise
    return mw


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---- broker outages -----------------------------------------------------------------------


def test_broker_stopped_during_a_burst_delivers_every_file_in_order(
        tmp_path: Path, inbox: Path, broker_url: str, rabbitmq: RabbitMQ) -> None:
    """RabbitMQ stopped while 1,000 files arrive: once it is back, all 1,000 are delivered."""
    roster = durable_roster(tmp_path, broker_url, [{"id": "inbox", "directory": str(inbox)}])
    mw = _start(roster)
    try:
        burst = Burst(inbox, 1000, batch=10, pause=0.04)  # about 4 s of arrivals
        burst.start()
        burst.wait_written(150)
        mark = len(mw.lines)
        with broker_stopped(rabbitmq, broker_url):
            down_at_written = burst.written
            burst.finish()
            # Watching and hashing go on without a broker: every file reaches the outbox.
            wait_emitted(mw, "inbox", 1000, timeout=60)
            mw.wait_for_log(lambda line: is_message(line, "broker unavailable, retrying",
                                                    "inbox"), after=mark, timeout=10)
        back = time.monotonic()
        got = collect(broker_url, QUEUE, timeout=120,
                      until=lambda ms: len(names(ms)) >= 1000)
        drained = time.monotonic() - back

        assert names(got) == set(burst.names)
        # Delivered in the order the events entered the outbox (first copy of each).
        assert first_occurrences(got) == [line["message_id"] for line in emitted(mw, "inbox")]
        mw.wait_for_log(lambda line: is_message(line, "connected to broker", "inbox"), after=mark)
        figure(f"broker stopped (stop_app) after {down_at_written} of 1000 files written: "
               f"delivered {len(names(got))}/1000 distinct, {len(got)} messages, "
               f"{duplicates(got)} duplicates, drained in {drained:.1f}s after the broker "
               f"accepted connections again")
    finally:
        mw.cleanup()


def test_memory_alarm_blocks_publishing_and_nothing_is_lost(
        tmp_path: Path, inbox: Path, broker_url: str, rabbitmq: RabbitMQ) -> None:
    """RabbitMQ's memory alarm blocks publishers: events wait in the outbox (the blocked
    connection is kept past confirm_timeout), then arrive."""
    roster = durable_roster(tmp_path, broker_url, [{"id": "inbox", "directory": str(inbox)}])
    mw = _start(roster)
    try:
        with memory_alarm(rabbitmq, broker_url):
            mark = len(mw.lines)
            for i in range(200):
                (inbox / f"blocked-{i:03d}.bin").write_bytes(b"%d" % i)
            wait_emitted(mw, "inbox", 200, timeout=60)
            mw.wait_for_log(lambda line: is_message(line, BLOCKED_WAIT, "inbox"), after=mark,
                            timeout=30)
            assert (outbox_rows(state_db(tmp_path, "inbox")) or 0) > 0
        got = collect(broker_url, QUEUE, timeout=120, until=lambda ms: len(names(ms)) >= 200)
        assert names(got) == {f"blocked-{i:03d}.bin" for i in range(200)}
        figure(f"memory alarm: 200/200 delivered after the alarm cleared, "
               f"{duplicates(got)} duplicates")
    finally:
        mw.cleanup()


def test_frozen_broker_does_not_hang_the_watcher(
        tmp_path: Path, inbox: Path, broker_url: str, rabbitmq: RabbitMQ) -> None:
    """A SIGSTOPped broker: the watcher gives up within the confirm timeout, keeps hashing,
    and delivers everything after SIGCONT."""
    confirm_timeout = FAST_BROKER["confirm_timeout_seconds"]
    roster = durable_roster(tmp_path, broker_url, [{"id": "inbox", "directory": str(inbox)}])
    mw = _start(roster)
    try:
        burst = Burst(inbox, 400, batch=10, pause=0.05)  # about 2 s of arrivals
        burst.start()
        wait_emitted(mw, "inbox", 50, timeout=30)  # publishing is under way
        with broker_frozen(rabbitmq, broker_url):
            frozen_at = time.monotonic()
            mark = len(mw.lines)
            mw.wait_for_log(lambda line: is_message(line, "broker unavailable, retrying",
                                                    "inbox"), after=mark,
                            timeout=confirm_timeout + 10)
            noticed = time.monotonic() - frozen_at
            burst.finish()
            # Still watching and hashing while the broker is frozen.
            wait_emitted(mw, "inbox", 400, timeout=60)
        back = time.monotonic()
        got = collect(broker_url, QUEUE, timeout=120, until=lambda ms: len(names(ms)) >= 400)
        drained = time.monotonic() - back

        assert names(got) == set(burst.names)
        assert noticed <= confirm_timeout + 3, f"publisher stuck for {noticed:.1f}s"
        figure(f"broker frozen (SIGSTOP) mid-publish: 'broker unavailable' after {noticed:.1f}s "
               f"(confirm_timeout {confirm_timeout}s); delivered {len(names(got))}/400 distinct, "
               f"{duplicates(got)} duplicates, drained in {drained:.1f}s after SIGCONT")
    finally:
        mw.cleanup()


# ---- crashes ------------------------------------------------------------------------------


def test_child_killed_mid_burst_announces_every_file_after_restart(
        tmp_path: Path, inbox: Path, broker_url: str) -> None:
    """kill -9 of a watcher in the middle of a 2,000-file burst: every file still arrives."""
    roster = durable_roster(tmp_path, broker_url, [{"id": "inbox", "directory": str(inbox)}])
    mw = _start(roster)
    try:
        child = mw.wait_watching("inbox")["pid"]
        burst = Burst(inbox, 2000, batch=50, pause=0.05)
        burst.start()
        wait_emitted(mw, "inbox", 500, timeout=60)
        mark = len(mw.lines)
        os.kill(child, signal.SIGKILL)
        killed_at = (len(emitted(mw, "inbox")), burst.written)
        mw.wait_for_log(lambda line: is_message(
            line, "child exited; restarting after backoff", "inbox"), after=mark)
        assert mw.wait_watching("inbox", after=mark)["pid"] != child
        burst.finish()
        started = time.monotonic()
        got = collect(broker_url, QUEUE, timeout=120, until=lambda ms: len(names(ms)) >= 2000)
        drained = time.monotonic() - started

        assert names(got) == set(burst.names)
        figure(f"child kill -9 after {killed_at[0]} events logged / {killed_at[1]} of 2000 "
               f"files written: delivered {len(names(got))}/2000 distinct, {len(got)} messages, "
               f"{duplicates(got)} duplicates, all in {drained:.1f}s after the burst")
    finally:
        mw.cleanup()


@pytest.mark.parametrize("victim", ["supervisor", "process-group"])
def test_supervisor_killed_mid_burst_announces_every_file_on_next_run(
        tmp_path: Path, inbox: Path, broker_url: str, victim: str) -> None:
    """kill -9 of the supervisor (alone, or with its children) mid-burst, then a new run:
    every file arrives."""
    roster = durable_roster(tmp_path, broker_url, [{"id": "inbox", "directory": str(inbox)}])
    first = _start(roster)
    second: Multiwatch | None = None
    try:
        processes = first.child_pids()
        burst = Burst(inbox, 2000, batch=50, pause=0.05)
        burst.start()
        wait_emitted(first, "inbox", 500, timeout=60)
        if victim == "supervisor":
            os.kill(first.pid, signal.SIGKILL)
        else:
            os.killpg(first.pid, signal.SIGKILL)
        killed_at = (len(emitted(first, "inbox")), burst.written)
        first.process.wait(timeout=10)
        wait_for(lambda: not [pid for pid in processes if _alive(pid)], timeout=15,
                 message="the killed run's watchers are still running")
        first.cleanup()

        second = _start(roster)
        burst.finish()
        started = time.monotonic()
        got = collect(broker_url, QUEUE, timeout=120, until=lambda ms: len(names(ms)) >= 2000)
        drained = time.monotonic() - started

        assert names(got) == set(burst.names)
        figure(f"{victim} kill -9 after {killed_at[0]} events logged / {killed_at[1]} of 2000 "
               f"files written: delivered {len(names(got))}/2000 distinct, {len(got)} messages, "
               f"{duplicates(got)} duplicates, all in {drained:.1f}s after the burst")
    finally:
        first.cleanup()
        if second is not None:
            second.cleanup()


# ---- restart reconcile --------------------------------------------------------------------


def test_restart_announces_exactly_what_changed_while_stopped(
        tmp_path: Path, inbox: Path, broker_url: str) -> None:
    """Stopped, then 3 files added, 2 changed, 1 deleted: the next start announces exactly those."""
    originals = {f"same{i}.txt": f"untouched {i}".encode() for i in range(5)}
    originals |= {"edit0.txt": b"edit me", "edit1.txt": b"edit me too", "doomed.txt": b"bye"}
    for name, data in originals.items():
        (inbox / name).write_bytes(data)
    roster = durable_roster(tmp_path, broker_url, [{"id": "inbox", "directory": str(inbox)}])
    first = _start(roster)
    try:
        got = collect(broker_url, QUEUE, timeout=30,
                      until=lambda ms: len(names(ms)) >= len(originals))
        assert names(got) == set(originals)
        assert first.terminate() == 0
    finally:
        first.cleanup()

    added = {f"new{i}.txt": f"arrived while stopped {i}".encode() for i in range(3)}
    edited = {"edit0.txt": b"edited while stopped", "edit1.txt": b"also edited while stopped"}
    for name, data in (added | edited).items():
        (inbox / name).write_bytes(data)
    (inbox / "doomed.txt").unlink()

    second = _start(roster)
    try:
        startup = startup_complete(second, "inbox", timeout=30)
        got = collect(broker_url, QUEUE, timeout=30, until=lambda ms: len(ms) >= 6)
        (inbox / "barrier.txt").write_bytes(b"everything before me has been announced")
        got += collect(broker_url, QUEUE, timeout=30,
                       until=lambda ms: "barrier.txt" in names(ms))
    finally:
        second.cleanup()

    events = sorted((m.body["event_type"], m.body["file_info"]["name"]) for m in got
                    if m.body["file_info"]["name"] != "barrier.txt")
    assert events == sorted(
        [("file_discovered", name) for name in added]
        + [("file_modified", name) for name in edited]
        + [("file_deleted", "doomed.txt")])
    by_name = {m.body["file_info"]["name"]: m.body["file_info"] for m in got}
    assert by_name["edit0.txt"]["sha256_hash"] == hashlib.sha256(edited["edit0.txt"]).hexdigest()
    assert by_name["doomed.txt"]["sha256_hash"] == hashlib.sha256(b"bye").hexdigest()
    # Only the 3 new and 2 changed files were read; the 5 untouched ones were not.
    assert startup["files_hashed"] == 5
    assert startup["bytes_hashed"] == sum(map(len, (added | edited).values()))


# ---- bounded outbox -----------------------------------------------------------------------


def test_full_outbox_holds_back_work_and_loses_nothing(
        tmp_path: Path, inbox: Path, broker_url: str, rabbitmq: RabbitMQ) -> None:
    """outbox_max_events 50, broker down, 300 files: the outbox stops at 50, and all 300 arrive
    once the broker is back."""
    roster = durable_roster(tmp_path, broker_url, [{"id": "inbox", "directory": str(inbox)}],
                            defaults={"outbox_max_events": 50})
    db = state_db(tmp_path, "inbox")
    mw = _start(roster)
    try:
        child = mw.wait_watching("inbox")["pid"]
        with broker_stopped(rabbitmq, broker_url):
            burst = Burst(inbox, 300, batch=50, pause=0.02)
            burst.start()
            burst.finish()
            wait_for(lambda: outbox_rows(db) == 50, timeout=30,
                     message=f"outbox never filled to its bound; rows: {outbox_rows(db)}")
            # It stays at the bound while the broker is away, and the watcher stays up.
            samples = []
            for _ in range(10):
                samples.append(outbox_rows(db))
                time.sleep(0.1)
            assert max(s or 0 for s in samples) == 50, samples
            assert _alive(child)
        back = time.monotonic()
        got = collect(broker_url, QUEUE, timeout=120, until=lambda ms: len(names(ms)) >= 300)
        drained = time.monotonic() - back

        assert names(got) == set(burst.names)
        figure(f"outbox bound 50, 300 files while the broker was down: delivered "
               f"{len(names(got))}/300 distinct, {duplicates(got)} duplicates, "
               f"drained in {drained:.1f}s")
    finally:
        mw.cleanup()


# ---- no queue declared --------------------------------------------------------------------


def test_unroutable_event_stays_in_outbox_until_a_queue_is_bound(
        tmp_path: Path, inbox: Path, broker_url: str) -> None:
    """broker.queue null and nothing bound: the event is kept, and arrives once a queue is bound."""
    roster = durable_roster(tmp_path, broker_url, [{"id": "inbox", "directory": str(inbox)}],
                            broker={"queue": None})
    db = state_db(tmp_path, "inbox")
    mw = _start(roster)
    try:
        mark = len(mw.lines)
        (inbox / "early.txt").write_bytes(b"published before anyone listens")
        returned = mw.wait_for_log(
            lambda line: "unroutable" in f"{line.get('message')} {line.get('error')}".lower(),
            after=mark, timeout=20)
        assert returned["level"] in {"WARNING", "ERROR"}
        assert (outbox_rows(db) or 0) >= 1, "the returned event left the outbox"

        declare_queue(broker_url, QUEUE)
        got = collect(broker_url, QUEUE, timeout=30, until=lambda ms: "early.txt" in names(ms))

        assert {m.properties["message_id"] for m in got
                if m.body["file_info"]["name"] == "early.txt"} == {
            line["message_id"] for line in emitted(mw, "inbox")}
        wait_for(lambda: outbox_rows(db) == 0, timeout=10)
    finally:
        mw.cleanup()


# ---- observers ----------------------------------------------------------------------------


def _inotify_fds(pid: int) -> int:
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == "anon_inode:inotify":
                count += 1
        except OSError:
            pass
    return count


def test_polling_observer_finds_files_without_inotify(
        tmp_path: Path, inbox: Path, broker_url: str) -> None:
    """observer: polling finds new files (also in new subdirectories) with no inotify at all."""
    roster = durable_roster(tmp_path, broker_url, [{
        "id": "inbox", "directory": str(inbox),
        "observer": "polling", "polling_interval_seconds": 0.3,
    }])
    mw = _start(roster)
    try:
        child = mw.wait_watching("inbox")["pid"]
        startup_complete(mw, "inbox", timeout=30)  # from here on only the observer finds files
        (inbox / "remote.bin").write_bytes(b"written by another NFS client")
        (inbox / "sub").mkdir()
        (inbox / "sub" / "deep.bin").write_bytes(b"in a new directory")

        got = collect(broker_url, QUEUE, timeout=30,
                      until=lambda ms: {"remote.bin", "deep.bin"} <= names(ms))

        assert names(got) == {"remote.bin", "deep.bin"}
        assert _inotify_fds(child) == 0, "the polling watcher holds an inotify instance"
    finally:
        mw.cleanup()


def test_periodic_scan_finds_what_the_observer_missed(
        tmp_path: Path, inbox: Path, broker_url: str) -> None:
    """scan_interval_seconds reconciles on its own: a file no observer reports is announced."""
    roster = durable_roster(tmp_path, broker_url, [{
        "id": "inbox", "directory": str(inbox),
        # A poll that never comes during the test stands in for notifications that got lost.
        "observer": "polling", "polling_interval_seconds": 3600, "scan_interval_seconds": 1,
    }])
    mw = _start(roster)
    try:
        startup_complete(mw, "inbox", timeout=30)
        (inbox / "unnoticed.txt").write_bytes(b"no event for me")

        got = collect(broker_url, QUEUE, timeout=20,
                      until=lambda ms: "unnoticed.txt" in names(ms))

        assert names(got) == {"unnoticed.txt"}
    finally:
        mw.cleanup()
