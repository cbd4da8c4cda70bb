"""The watcher's side of the supervisor boundary: the report pipe, heartbeats, SIGTERM, and
dying with the parent.  Runs on the watcher's main thread (the SIGTERM handler included).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
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
        self._sent_snapshot, self._empty_beats = snapshot, 0
        self._parent.send(Report.HEARTBEAT, snapshot)


class ParentLink:
    """The pipe to the supervisor; a broken pipe means the parent is gone."""

    def __init__(self, connection: Connection, parent_pid: int) -> None:
        self._connection = connection
        self._parent_pid = parent_pid
        self._broken = False

    def send(self, kind: Report, payload: Mapping[str, object]) -> None:
        if self._broken:
            return
        try:
            self._connection.send((kind, payload))
        except (BrokenPipeError, EOFError, OSError):
            self._broken = True

    def send_pickled(self, report: bytes) -> None:
        """Send a (Report, payload) pickled beforehand (what send() would have written)."""
        if self._broken:
            return
        try:
            self._connection.send_bytes(report)
        except (BrokenPipeError, EOFError, OSError):
            self._broken = True

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
