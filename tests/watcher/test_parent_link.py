"""The report pipe to the supervisor when the supervisor stops reading it (SIGSTOP, a hung
loop): no send blocks the watcher's loop, and the reports resume, full, once it reads."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler

import pytest

from multiwatch.watcher import parent_link
from multiwatch.watcher.parent_link import HeartbeatSender, ParentLink
from multiwatch.watcher.spec import Report

DEADLINE_SECONDS = 20.0


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    reader, writer = Pipe(duplex=False)
    yield reader, writer
    reader.close()
    writer.close()


def _returns(action: Callable[[], object]) -> bool:
    """Run `action` on a thread; True if it returned before the deadline (a daemon thread
    left blocked in a pipe write ends with the test process)."""
    done = threading.Event()

    def run() -> None:
        action()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(DEADLINE_SECONDS)


def _read_all(reader: Connection) -> list[tuple[Report, dict[str, object]]]:
    reports = []
    while reader.poll(0):
        reports.append(ForkingPickler.loads(reader.recv_bytes()))
    return reports


def test_heartbeats_to_a_supervisor_that_stopped_reading_never_block_the_loop(
        pipe: tuple[Connection, Connection]) -> None:
    """200 busy heartbeats of 2 KiB into a pipe nobody reads all return (a blocking write
    would stop the loop, SIGTERM included, at the pipe's 64 KiB); a one-off report still
    fits; once the supervisor reads again the next heartbeat carries the whole status."""
    reader, writer = pipe
    link = ParentLink(writer, os.getppid())
    now, count = [100.0], [0]
    beat = HeartbeatSender(link, lambda: {"count": count[0], "pad": "x" * 2048},  # type: ignore[typeddict-unknown-key]
                           lambda: count[0], hang_timeout=60.0, clock=lambda: now[0])

    def busy_beats() -> None:
        for _ in range(200):
            count[0] += 1
            now[0] += 1.0
            beat.maybe_send()

    assert _returns(busy_beats), "a heartbeat blocked in a write to the unread pipe"
    assert link.send(Report.READY, {"pid": os.getpid()}), "no room left for a one-off report"
    sent = _read_all(reader)
    assert 0 < len(sent) < 200 and sent[-1] == (Report.READY, {"pid": os.getpid()})

    now[0] += 1.0
    count[0] += 1
    beat.maybe_send()
    assert _read_all(reader) == [(Report.HEARTBEAT, {"count": count[0], "pad": "x" * 2048})]
    assert link.alive()


def test_a_one_off_report_with_no_room_gives_up_and_the_link_counts_as_broken(
        pipe: tuple[Connection, Connection], monkeypatch: pytest.MonkeyPatch) -> None:
    """With the pipe full, a report that must go up (exiting) waits a bounded time, then the
    watcher treats its supervisor as gone instead of hanging in the write."""
    _reader, writer = pipe
    monkeypatch.setattr(parent_link, "ONE_OFF_WAIT_SECONDS", 0.3)
    flags = fcntl.fcntl(writer.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(writer.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:
            os.write(writer.fileno(), b"\0" * 4096)
    except BlockingIOError:
        pass
    finally:
        fcntl.fcntl(writer.fileno(), fcntl.F_SETFL, flags)
    link = ParentLink(writer, os.getppid())
    result: list[bool] = []
    assert _returns(lambda: result.append(link.send(Report.EXITING, {"reason": "x"})))
    assert result == [False] and not link.alive()
