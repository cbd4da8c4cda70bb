"""The watcher child's loop: heartbeat cadence (busy and idle) and waking up on SIGTERM."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from multiwatch.config import BrokerConfig, InstanceConfig
from multiwatch.watcher import observe as observe_module
from multiwatch.watcher import publisher as publisher_module
from multiwatch.watcher.inotify_observer import DirectInotifyObserver
from multiwatch.watcher.main import (
    BUSY_WAIT_SECONDS,
    EXIT_PUBLISHER_FAILED,
    _wait_budget,
    child_main,
)
from multiwatch.watcher.observe import start_observer
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.parent_link import (
    FULL_EVERY_BEATS,
    HEARTBEAT_SECONDS,
    IDLE_HEARTBEAT_SECONDS,
    WAKE_UP,
    HeartbeatSender,
    StopRequest,
)
from multiwatch.watcher.publisher import Publisher
from multiwatch.watcher.publisher_health import STALL_GRACE_SECONDS, Progress
from multiwatch.watcher.raw_event import RawEvent
from multiwatch.watcher.spec import ChildSpec
from multiwatch.watcher.watching import observer_alive
from tests.watcher.test_pipeline import announce, make_pipeline


class _Parent:
    """Collects what the child would send up the pipe."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []

    def send(self, kind: str, payload: dict[str, object]) -> bool:
        self.sent.append((kind, payload))
        return True

    def send_pickled(self, report: bytes) -> bool:
        self.sent.append(ForkingPickler.loads(report))
        return True


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _heartbeat(activity: list[int], *,
               hang_timeout: float = 60.0) -> tuple[HeartbeatSender, _Parent, _Clock]:
    parent, clock = _Parent(), _Clock()
    beat = HeartbeatSender(parent, lambda: {"files_hashed": activity[0]}, lambda: activity[0],  # type: ignore[arg-type]
                      hang_timeout=hang_timeout, clock=clock)
    return beat, parent, clock


def _sent_at(beat: HeartbeatSender, parent: _Parent, clock: _Clock,
             times: list[float]) -> list[float]:
    sent = []
    for t in times:
        clock.now = 100.0 + t
        before = len(parent.sent)
        beat.maybe_send()
        if len(parent.sent) > before:
            sent.append(t)
    return sent


def test_an_idle_watcher_heartbeats_every_few_seconds_not_every_second() -> None:
    """Nothing changing: one heartbeat at once, then one every IDLE_HEARTBEAT_SECONDS."""
    beat, parent, clock = _heartbeat([0])
    times = [i * 0.25 for i in range(int(4 * IDLE_HEARTBEAT_SECONDS / 0.25) + 1)]
    sent = _sent_at(beat, parent, clock, times)
    assert sent == [i * IDLE_HEARTBEAT_SECONDS for i in range(5)]


def test_a_busy_watcher_heartbeats_every_second() -> None:
    """While its counts change, the status reaches the supervisor every HEARTBEAT_SECONDS."""
    activity = [0]
    beat, parent, clock = _heartbeat(activity)
    sent = []
    for step in range(41):  # 10 s in quarter seconds, something new every turn
        activity[0] += 1
        sent += _sent_at(beat, parent, clock, [step * 0.25])
    assert sent == [i * HEARTBEAT_SECONDS for i in range(11)]
    assert parent.sent[-1] == ("heartbeat", {"files_hashed": activity[0]})


def test_an_unchanged_status_goes_up_as_an_empty_heartbeat() -> None:
    """Idle, a heartbeat whose status equals the last one sent carries {} (the supervisor
    keeps what it has), a full one every FULL_EVERY_BEATS-th beat and whenever it changed."""
    activity = [0]
    beat, parent, clock = _heartbeat(activity)
    times = [i * IDLE_HEARTBEAT_SECONDS for i in range(FULL_EVERY_BEATS + 1)]
    _sent_at(beat, parent, clock, times)
    assert [payload for _kind, payload in parent.sent] == (
        [{"files_hashed": 0}] + [{}] * (FULL_EVERY_BEATS - 1) + [{"files_hashed": 0}])
    activity[0] = 1
    clock.now += HEARTBEAT_SECONDS
    beat.maybe_send()
    assert parent.sent[-1] == ("heartbeat", {"files_hashed": 1})


def test_a_problem_logged_on_another_thread_ends_the_idle_loops_wait() -> None:
    """The publisher losing the broker (a WARNING on its thread) wakes the sleeping loop, so
    the status shows it within a busy heartbeat, not after the idle one."""
    import logging

    from multiwatch.watcher.stats import ProblemCounter

    notifications: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    problems = ProblemCounter()
    problems.wake = lambda: notifications.put(WAKE_UP)
    logger = logging.getLogger("tests.watcher.problem_wake")
    logger.addHandler(problems)
    try:
        thread = threading.Thread(target=logger.warning, args=("broker connection lost",))
        thread.start()
        thread.join(timeout=10)
        assert notifications.get(timeout=10) is WAKE_UP
    finally:
        logger.removeHandler(problems)
    assert problems.count == 1


def test_the_loop_wakes_when_the_next_heartbeat_is_due() -> None:
    """due(): the idle deadline while nothing changed, the busy one as soon as something did."""
    activity = [0]
    beat, _parent, clock = _heartbeat(activity)
    beat.maybe_send()
    assert beat.due() == clock.now + IDLE_HEARTBEAT_SECONDS
    activity[0] = 1
    assert beat.due() == clock.now + HEARTBEAT_SECONDS


def test_heartbeats_stay_well_inside_a_short_hang_timeout() -> None:
    """A quiet child is never taken for a hung one: both cadences are at most a quarter of
    hang_timeout_seconds."""
    beat, _parent, _clock = _heartbeat([0], hang_timeout=2.0)
    assert (beat.idle_seconds, beat.busy_seconds) == (0.5, 0.5)
    beat, _parent, _clock = _heartbeat([0], hang_timeout=8.0)
    assert (beat.idle_seconds, beat.busy_seconds) == (2.0, HEARTBEAT_SECONDS)


def test_the_loop_sleeps_until_the_next_heartbeat_only_when_idle_and_connected(
        tmp_path: Path) -> None:
    """Idle with the broker connected: the wait lasts until the next heartbeat; with files
    settling, half a second at most; with the broker not (yet) connected, one busy heartbeat
    interval at most, so readiness is reported within a second of the connection."""
    pipeline, _outbox, root = make_pipeline(tmp_path)
    gauge = pipeline.gauge
    beat = HeartbeatSender(_Parent(), dict, lambda: 0, hang_timeout=60.0)  # type: ignore[arg-type]
    publisher = SimpleNamespace(stats=SimpleNamespace(connected=True))
    no_scan = float("inf")

    def budget() -> float:
        return _wait_budget(pipeline, gauge, publisher, beat, no_scan)  # type: ignore[arg-type]

    beat.maybe_send()
    assert IDLE_HEARTBEAT_SECONDS - 1 < budget() <= IDLE_HEARTBEAT_SECONDS
    assert _wait_budget(pipeline, gauge, publisher, beat,  # type: ignore[arg-type]
                        time.monotonic() + 2) <= 2
    publisher.stats.connected = False
    assert budget() <= HEARTBEAT_SECONDS
    publisher.stats.connected = True
    (root / "new.txt").write_text("x")
    pipeline.request_scan()
    pipeline.step(0.0)
    assert pipeline.busy and budget() <= BUSY_WAIT_SECONDS


def test_stopping_puts_a_wake_up_on_the_notification_queue() -> None:
    """What the SIGTERM handler calls: the flag is set and the loop's wait ends at once."""
    stop = StopRequest()
    stop.set()  # before the pipeline exists: only the flag
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    stop.wake_up = events
    stop.set()
    assert stop.is_set()
    assert events.get_nowait() is WAKE_UP


def test_the_sigterm_handler_takes_no_lock_a_wait_may_hold() -> None:
    """The handler finishes at once even while another thread holds every lock the stop
    object owns: a handler that took one (threading.Event.set) could deadlock against the
    wait() it interrupted on the main thread."""
    stop = StopRequest()
    stop.wake_up = queue.SimpleQueue()
    locks = [v for v in vars(stop).values() if hasattr(v, "acquire")]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        held.set()
        release.wait(3)
        for lock in locks:
            lock.release()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(5)
    began = time.monotonic()
    stop.handle_sigterm(signal.SIGTERM, None)
    took = time.monotonic() - began
    release.set()
    holder.join(5)
    assert took < 0.5, f"the handler waited {took:.1f}s for a lock"
    assert stop.requested and stop.wake_up.get_nowait() is WAKE_UP


def test_a_publisher_past_its_own_deadline_counts_as_stuck() -> None:
    """A wait the publisher promised to end in 2 s and still going on past the grace is
    reported with what it was doing; within the grace it is not."""
    clock = _Clock()
    progress = Progress(clock=clock)
    progress.expect(2.0, "publishing")
    clock.now += 2.0 + STALL_GRACE_SECONDS - 0.1
    assert progress.stuck(clock.now) == ""
    clock.now += 1.0
    assert "while publishing" in progress.stuck(clock.now)


def test_a_publisher_thread_that_died_is_reported_with_its_reason(tmp_path: Path) -> None:
    """A publisher that cannot open its outbox ends; failure() says so, with the reason,
    instead of the watcher reporting RUNNING while the outbox fills."""
    gauge = OutboxGauge(events=0, size=0, max_events=10, max_bytes=1000)
    (tmp_path / "not-a-db").mkdir()
    publisher = Publisher(broker=BrokerConfig(), state_dir=str(tmp_path), instance_id="x",
                          db_path=str(tmp_path / "not-a-db"), gauge=gauge)
    assert publisher.failure(time.monotonic()) == ""  # not started yet
    publisher.start()
    publisher.join(10)
    reason = publisher.failure(time.monotonic())
    assert reason.startswith("publisher thread ended: cannot open the outbox"), reason


def test_the_pipeline_ignores_the_wake_up(tmp_path: Path) -> None:
    """The wake-up is a notification from outside the tree: no event, no scan, no state."""
    pipeline, outbox, _root = make_pipeline(tmp_path)
    counts: dict[str, Any] = dict(pipeline.counts)
    assert announce(pipeline, outbox, WAKE_UP) == []
    assert dict(pipeline.counts) == counts and not pipeline.busy and not pipeline.root_missing


# -- a real child process (spawn, embedded broker), driven through its pipe and signals ------


class _Child:
    """child_main in a spawned process; its reports are timestamped as they arrive."""

    def __init__(self, tmp_path: Path, target: Callable[..., None] = child_main,
                 **options: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.directory = tmp_path / "watched"
        self.directory.mkdir()
        spec = ChildSpec(instance=InstanceConfig(id="child", directory=str(self.directory),
                                                 **options),
                         broker=BrokerConfig(), state_dir=str(tmp_path / "state"),
                         log_level="WARNING", stop_timeout_seconds=8, parent_pid=os.getpid())
        self.reader, writer = context.Pipe(duplex=False)
        self.process = context.Process(target=target, args=(spec, writer), daemon=True)
        self.process.start()
        writer.close()

    def next_report(self, kind: str, timeout: float) -> tuple[float, dict[str, Any]]:
        """The next report of `kind` and when it arrived (time.monotonic)."""
        deadline = time.monotonic() + timeout
        while self.reader.poll(max(0.0, deadline - time.monotonic())):
            got, payload = self.reader.recv()
            if got == kind:
                return time.monotonic(), payload
        raise AssertionError(f"no {kind!r} from the child within {timeout}s")

    def stop(self) -> None:
        if self.process.is_alive():
            os.kill(self.process.pid or 0, signal.SIGKILL)
        self.process.join()


def test_an_idle_child_stops_at_once_on_sigterm_though_its_loop_sleeps_seconds(
        tmp_path: Path) -> None:
    """Idle, the child heartbeats only every IDLE_HEARTBEAT_SECONDS (its loop sleeps that
    long), yet SIGTERM in the middle of such a sleep ends it within a fraction of it."""
    child = _Child(tmp_path)
    try:
        child.next_report("ready", timeout=30)
        # Start-up changes (the broker link coming up) are reported within a second; then
        # the heartbeats space out.
        gaps: list[float] = []
        previous, _ = child.next_report("heartbeat", timeout=10)
        while not gaps or gaps[-1] < 0.8 * IDLE_HEARTBEAT_SECONDS:
            assert len(gaps) < 5, f"no idle cadence; heartbeat gaps {gaps}"
            arrived, _ = child.next_report("heartbeat", timeout=IDLE_HEARTBEAT_SECONDS + 10)
            gaps.append(arrived - previous)
            previous = arrived
        time.sleep(0.5)  # now well inside the next idle sleep
        sent = time.monotonic()
        os.kill(child.process.pid or 0, signal.SIGTERM)
        child.process.join(timeout=IDLE_HEARTBEAT_SECONDS + 10)
        took = time.monotonic() - sent
        assert child.process.exitcode == 0
        assert took < IDLE_HEARTBEAT_SECONDS / 2, f"stopped {took:.2f}s after SIGTERM"
    finally:
        child.stop()


def test_a_busy_child_heartbeats_every_second_with_fresh_counts(tmp_path: Path) -> None:
    """While files keep landing, heartbeats come about every HEARTBEAT_SECONDS and carry the
    growing count of announced files."""
    child = _Child(tmp_path, settle_seconds=0.1)
    try:
        child.next_report("ready", timeout=30)
        child.next_report("heartbeat", timeout=10)
        arrivals: list[tuple[float, int]] = []
        for i in range(40):  # one file every 0.1 s for 4 s
            (child.directory / f"f{i:03d}.txt").write_text(str(i))
            time.sleep(0.1)
            while child.reader.poll():
                kind, payload = child.reader.recv()
                if kind == "heartbeat":
                    arrivals.append((time.monotonic(),
                                     payload["events"].get("file_discovered", 0)))
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
        counts = [count for _, count in arrivals]
        assert len(arrivals) >= 3 and max(gaps) < 2 * HEARTBEAT_SECONDS, gaps
        assert counts == sorted(counts) and counts[-1] > counts[0] > 0, counts
    finally:
        child.stop()


def test_an_observer_whose_inotify_reader_died_counts_as_dead(tmp_path: Path) -> None:
    """The loop restarts the observer (and rescans) when its inotify reader thread is gone,
    as when the observer or an emitter dies: otherwise the watcher would be deaf."""
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observer = start_observer(str(tmp_path), recursive=True, events=events, mode="inotify")
    try:
        assert isinstance(observer, DirectInotifyObserver)
        assert observer_alive(observer)
        observer.reader.stop()
        observer.reader.join(timeout=5)
        assert not observer_alive(observer)
    finally:
        observer.stop()
        observer.join(timeout=5)


def _child_whose_outbox_cannot_open(spec: ChildSpec, to_parent: Any) -> None:
    """child_main with a publisher that cannot open the outbox (a broken state database)."""
    def broken(path: str) -> None:
        raise sqlite3.OperationalError(f"unable to open database file: {path}")

    publisher_module.DurableOutbox = broken  # type: ignore[assignment,misc]
    child_main(spec, to_parent)


def test_a_child_whose_publisher_dies_exits_with_the_reason(tmp_path: Path) -> None:
    """The publisher thread dies at start: the child tells the supervisor why and exits
    non-zero within seconds (so it is restarted), instead of running on deaf to its outbox."""
    child = _Child(tmp_path, target=_child_whose_outbox_cannot_open)
    try:
        _, payload = child.next_report("exiting", timeout=30)
        child.process.join(timeout=15)
        assert child.process.exitcode == EXIT_PUBLISHER_FAILED
        assert "cannot open the outbox" in str(payload["reason"]), payload
    finally:
        child.stop()


class _HangingWalk:
    """A polling walk that, once `hang-now` exists in the tree, blocks in its next listing
    (as on a hung network mount) after saying so with a file beside the state."""

    def __init__(self, confined: Any, hung_marker: str) -> None:
        self._confined = confined
        self._hung_marker = hung_marker
        self.stat = confined.stat

    def listdir(self, path: str) -> Any:
        if os.path.exists(os.path.join(path, "hang-now")):
            open(self._hung_marker, "w").close()
            threading.Event().wait()  # never returns: the stat of a hung NFS server
        return self._confined.listdir(path)


def _child_whose_polling_walk_hangs(spec: ChildSpec, to_parent: Any) -> None:
    """child_main with a polling observer whose walk can be made to hang (see _HangingWalk)."""
    real = observe_module.ConfinedSnapshotIO
    marker = os.path.join(spec.state_dir, "walk-hung")

    def hanging(*args: Any, **kwargs: Any) -> _HangingWalk:
        return _HangingWalk(real(*args, **kwargs), marker)

    observe_module.ConfinedSnapshotIO = hanging  # type: ignore[assignment,misc]
    child_main(spec, to_parent)


def test_sigterm_stops_a_child_whose_polling_walk_hangs(tmp_path: Path) -> None:
    """SIGTERM while the polling observer is stuck in a walk (a hung network mount): the
    child still exits by itself, status 0 (watchdog's stop() would wait for that walk
    forever, and the supervisor would have to SIGKILL it)."""
    child = _Child(tmp_path, target=_child_whose_polling_walk_hangs, observer="polling",
                   polling_interval_seconds=0.2)
    try:
        child.next_report("ready", timeout=30)
        (child.directory / "hang-now").write_text("x")
        hung = tmp_path / "state" / "walk-hung"
        deadline = time.monotonic() + 30
        while not hung.exists():
            assert time.monotonic() < deadline, "the walk never reached the marker"
            time.sleep(0.05)
        os.kill(child.process.pid or 0, signal.SIGTERM)
        child.process.join(timeout=8 + 10)  # the spec's stop_timeout_seconds, and room
        assert child.process.exitcode == 0, child.process.exitcode
    finally:
        child.stop()
