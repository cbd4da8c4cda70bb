"""The watcher's side of the supervisor boundary: the report pipe, heartbeats, SIGTERM, and
dying with the parent.  Runs on the watcher's main thread (the SIGTERM handler included).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import queue
import select
import signal
import struct
import termios
import time
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler

from multiwatch.status_view import Heartbeat
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.spec import Report

# Heartbeats carry the status snapshot: every HEARTBEAT_SECONDS while something changes,
# every IDLE_HEARTBEAT_SECONDS while nothing does (both at most a quarter of the
# supervisor's hang_timeout_seconds, so a quiet child is never taken for a hung one).
# Idle, each heartbeat is the loop's only wakeup, and a wakeup has a fixed CPU cost however
# little it does (caches gone cold while asleep): the idle cadence is what an idle fleet
# pays (figures: bench/README.md, fleet-200), against how old an idle status may be.
HEARTBEAT_SECONDS = 1.0
IDLE_HEARTBEAT_SECONDS = 10.0
# A standby replica's status (its broker link, warm or not) changes on its publisher thread
# while its loop sleeps, and its readiness rests on that status: it keeps a shorter idle
# cadence (its publisher wakes every lease_retry_seconds anyway).
STANDBY_IDLE_HEARTBEAT_SECONDS = 5.0
# A heartbeat whose snapshot equals the last one sent carries an empty one ({}: alive,
# nothing changed; the supervisor keeps what it has), except every FULL_EVERY_BEATS-th.
FULL_EVERY_BEATS = 12
# Put on the notification queue by the SIGTERM handler to end the loop's wait.  Its path
# is None ("outside the tree"), which the pipeline ignores like any such notification.
WAKE_UP = RawEvent(EventKind.WAKE, False, None)
_PR_SET_PDEATHSIG = 1
# "Alive, nothing changed", pickled once as Connection.send would (recv() unpickles it).
_EMPTY_HEARTBEAT = bytes(ForkingPickler.dumps((Report.HEARTBEAT, {})))
# A supervisor that stops reading (SIGSTOP, a hung loop) must not block the work loop in a
# pipe write it cannot leave (SIGTERM included): periodic reports (heartbeats, "still
# waiting") are skipped while the pipe fills (ParentLink._room_for_periodic), and a one-off
# report with no room waits this long for the supervisor to read, then the link
# counts as broken (the parent is gone, or as good as gone).
ONE_OFF_WAIT_SECONDS = 5.0
_PERIODIC = frozenset({Report.HEARTBEAT, Report.WAITING})
_HEADER_BYTES = 4  # the length Connection.send_bytes writes before a report

log = logging.getLogger("multiwatch.watcher.main")  # (the logger the loop's lines use)


class StopRequest:
    """Set by the SIGTERM handler, which also wakes the work loop out of its wait.

    The handler only sets a flag and puts on SimpleQueues (whose put is safe inside a
    signal handler): a threading.Event's set() takes the lock a wait() in progress on the
    same thread may hold, and can deadlock."""

    def __init__(self) -> None:
        self.requested = False
        self.wake_up: queue.SimpleQueue[RawEvent] | None = None
        self._own: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()

    def handle_sigterm(self, _signum: int, _frame: object) -> None:
        self.set()

    def set(self) -> None:
        self.requested = True
        self._own.put(WAKE_UP)
        wake_up = self.wake_up
        if wake_up is not None:
            wake_up.put(WAKE_UP)

    def is_set(self) -> bool:
        return self.requested

    def nudge(self) -> None:
        """End a wait() in progress without asking to stop (from any thread)."""
        self._own.put(WAKE_UP)

    def wait(self, timeout: float) -> bool:
        """Sleep until stop is requested or `timeout` passes; True if it was requested."""
        if not self.requested:
            with contextlib.suppress(queue.Empty):
                self._own.get(timeout=timeout)
        return self.requested


class HeartbeatSender:
    """Sends the status snapshot: at most every HEARTBEAT_SECONDS while its activity summary
    changes, else every IDLE_HEARTBEAT_SECONDS.  Called from the work loop and from inside
    long work (hashing a huge file), never from a side thread: a hung loop goes silent.

    Invariant: the supervisor's copy (lifecycle.Child.snapshot) equals the last snapshot
    built here once each heartbeat is read, since an empty one is sent only when nothing
    differs from the last full one (an idle watcher's beat then pickles almost nothing)."""

    def __init__(self, parent: ParentLink, snapshot: Callable[[], Heartbeat],
                 activity: Callable[[], object], *, hang_timeout: float,
                 idle_seconds: float = IDLE_HEARTBEAT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._parent = parent
        self._snapshot = snapshot
        self._activity = activity
        self._clock = clock
        self.idle_seconds = min(idle_seconds, hang_timeout / 4)
        self.busy_seconds = min(HEARTBEAT_SECONDS, self.idle_seconds)
        self._sent_at = -float("inf")
        self._sent_activity: object = None
        self._sent_snapshot: Heartbeat | None = None
        self._empty_beats = 0  # in a row since the last full snapshot

    def due(self) -> float:
        """When the next heartbeat is due, as far as can be told now (time.monotonic)."""
        if self._activity() != self._sent_activity:
            return self._sent_at + self.busy_seconds
        return self._sent_at + self.idle_seconds

    def maybe_send(self) -> None:
        now = self._clock()
        if now < self._sent_at + self.busy_seconds:
            return  # the cheap path taken inside long work
        if now < self._sent_at + self.idle_seconds and self._activity() == self._sent_activity:
            return
        self._sent_at, self._sent_activity = now, self._activity()
        snapshot = self._snapshot()
        if snapshot == self._sent_snapshot and self._empty_beats < FULL_EVERY_BEATS - 1:
            self._empty_beats += 1
            self._parent.send_pickled(_EMPTY_HEARTBEAT)
            return
        if self._parent.send(Report.HEARTBEAT, snapshot):
            self._sent_snapshot, self._empty_beats = snapshot, 0
        else:  # skipped (the supervisor is not reading): the next one goes up full
            self._sent_snapshot = None


class ParentLink:
    """The pipe to the supervisor; a broken pipe means the parent is gone.

    No send blocks for long: the pipe's room is asked of the kernel first (RESERVE_BYTES,
    ONE_OFF_WAIT_SECONDS), since a blocking pipe write is not ended by SIGTERM."""

    def __init__(self, connection: Connection, parent_pid: int) -> None:
        self._connection = connection
        self._parent_pid = parent_pid
        self._broken = False
        self._congested = False  # periodic reports are being skipped

    def send(self, kind: Report, payload: Mapping[str, object]) -> bool:
        """Send one report; False if it was skipped or the link is broken."""
        return self.send_pickled(bytes(ForkingPickler.dumps((kind, payload))),
                                 periodic=kind in _PERIODIC)

    def send_pickled(self, report: bytes, *, periodic: bool = True) -> bool:
        """Send a (Report, payload) pickled beforehand, as Connection.send would write it.

        A periodic report is skipped while the pipe is filling (see _room_for_periodic); a
        one-off waits up to ONE_OFF_WAIT_SECONDS for room, then the link counts as broken."""
        if self._broken:
            return False
        if periodic:
            if not self._room_for_periodic(len(report) + _HEADER_BYTES):
                if not self._congested:
                    self._congested = True
                    log.warning("the supervisor is not reading this watcher's reports; "
                                "skipping heartbeats until it does")
                return False
            if self._congested:
                self._congested = False
                log.info("the supervisor reads this watcher's reports again")
        elif not self._wait_for_room(len(report) + _HEADER_BYTES, ONE_OFF_WAIT_SECONDS):
            self._broken = True
            return False
        try:
            self._connection.send_bytes(report)
        except (BrokenPipeError, EOFError, OSError):
            self._broken = True
            return False
        return True

    def _pipe_fill(self) -> tuple[int, int] | None:
        """(bytes waiting in the pipe, its capacity); None where the kernel cannot say (not
        a pipe, not Linux): sends then behave as plain blocking writes."""
        fd = self._connection.fileno()
        try:
            queued = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
            return queued, fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        except (OSError, AttributeError, ValueError):
            return None

    def _room_for_periodic(self, size: int) -> bool:
        """A pipe's room is counted in pages: a write that does not fit in the last page's
        free space takes a page of its own, so the bytes waiting may hold up to twice their
        pages plus one.  A periodic report goes up while at most a quarter of the capacity
        in bytes waits with it (at most 9 of 16 pages taken: the rest is the reserve the
        one-off reports need), or into an empty pipe whatever its size."""
        fill = self._pipe_fill()
        if fill is None:
            return True
        queued, capacity = fill
        return queued == 0 or queued + size <= capacity // 4

    def _wait_for_room(self, size: int, within: float) -> bool:
        """Wait until a write of `size` bytes cannot block: one free page (POLLOUT) for a
        write of at most PIPE_BUF bytes, an empty pipe for a bigger one."""
        deadline = time.monotonic() + within
        poller = select.poll()
        poller.register(self._connection.fileno(), select.POLLOUT)
        while True:
            fill = self._pipe_fill()
            if fill is None or fill[0] == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if size <= select.PIPE_BUF:
                if poller.poll(max(1, int(min(remaining, 0.1) * 1000))):
                    return True
            else:
                time.sleep(min(remaining, 0.05))

    def alive(self) -> bool:
        return not self._broken and os.getppid() == self._parent_pid


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGTERM us when the supervisor dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the loop's getppid() check still catches an orphaning
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def sigterm_for_main_thread_only() -> Iterator[None]:
    """Threads started inside inherit a blocked SIGTERM, so the kernel can only deliver it
    to the main thread (which it prefers anyway), whose wait it interrupts: a signal taken
    by another thread would only be noticed when the main thread's wait ends on its own."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
