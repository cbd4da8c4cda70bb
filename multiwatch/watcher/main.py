"""Entry point of one watcher child: the wiring of its parts and its main loop (the
supervisor boundary: parent_link.py; what a heartbeat says: snapshot.py).

Runs in a process forked from the template (watcher/template.py), which has imported the
watcher but holds no thread, observer or connection: the observer, the publisher thread and
the broker connection are all built here, never inherited.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from multiprocessing.connection import Connection

import setproctitle
from watchdog.observers.api import BaseObserver

from multiwatch.config import InstanceConfig
from multiwatch.logs import setup_logging
from multiwatch.replica_slots import mark_active
from multiwatch.watcher import standby
from multiwatch.watcher.filters import PathFilter
from multiwatch.watcher.hash_pool import HashPool
from multiwatch.watcher.hash_slots import HashSlots
from multiwatch.watcher.inotify_observer import quiet_refused_watch_warnings
from multiwatch.watcher.lease import BrokerLease, FileLease, Lease
from multiwatch.watcher.mount import META_KEY, UNMOUNTED, Mount, MountGuard
from multiwatch.watcher.observe import (
    directory_watcher,
    inotify_refused,
)
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.parent_link import (
    STANDBY_IDLE_HEARTBEAT_SECONDS,
    WAKE_UP,
    HeartbeatSender,
    ParentLink,
    StopRequest,
    die_with_parent,
    sigterm_for_main_thread_only,
)
from multiwatch.watcher.pipeline import Pipeline
from multiwatch.watcher.priority import apply_priority
from multiwatch.watcher.publisher import CLOSE_WAIT_SECONDS, Publisher
from multiwatch.watcher.read_limit import install_read_limit
from multiwatch.watcher.snapshot import activity_summary, heartbeat_snapshot
from multiwatch.watcher.spec import EXIT_DIRECTORY_GONE, EXIT_LEASE_LOST, ChildSpec, Report
from multiwatch.watcher.standby_feed import StandbyFeed
from multiwatch.watcher.standby_learning import in_flight_window_seconds
from multiwatch.watcher.state import StateError, StateStore, state_db_path
from multiwatch.watcher.stats import ProblemCounter
from multiwatch.watcher.watching import (
    OBSERVER_JOIN_SECONDS,
    follow_mount,
    observe,
    observer_alive,
    start_watching,
    stop_observer,
)

log = logging.getLogger(__name__)

# While settling, scanning or held back by a full outbox the loop turns at least this
# often; idle, it sleeps until its next deadline (events and SIGTERM wake it at once).
BUSY_WAIT_SECONDS = 0.5
DIRECTORY_RETRY_SECONDS = 2.0
PREVIOUS_WATCHER_GRACE_SECONDS = 5.0  # beyond stop_timeout: a watcher left by a killed parent
DEEP_TREE_RECURSION_LIMIT = 20_000
THREAD_STACK_BYTES = 64 * 1024 * 1024
# The publisher thread died or missed its own deadline (the reason went up the pipe first).
EXIT_PUBLISHER_FAILED = 4
LEASE_LOST = "another replica took over the instance; restarting as a standby"


def child_main(spec: ChildSpec, to_parent: Connection) -> None:
    """Run one watcher until SIGTERM, the parent's death, or the directory's disappearance."""
    setup_logging(spec.log_level, spec.instance.id, spec.log_format)
    # ps shows which instance this is, not the spawn command line shared by every child.
    setproctitle.setproctitle(f"multiwatch: watcher {spec.instance.id}")
    # watchdog walks trees with os.walk, which recurses once per level: give a 1,000-level
    # tree room (the limit) and the threads that walk it the C stack to match.
    sys.setrecursionlimit(DEEP_TREE_RECURSION_LIMIT)
    threading.stack_size(THREAD_STACK_BYTES)
    stop = StopRequest()
    signal.signal(signal.SIGTERM, stop.handle_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent leads
    die_with_parent(spec.parent_pid)
    # Before any thread starts (threads inherit both); the limit ends once stop is asked.
    apply_priority(spec.instance.nice, spec.instance.ionice)
    install_read_limit(spec.instance.read_rate_limit, released=stop.is_set)
    try:
        code = _run(spec, to_parent, stop)
    except StateError as exc:  # a user-fixable problem: say it, without a traceback
        log.error("cannot use the state database: %s", exc)
        code = _tell_parent_why(spec, to_parent, f"cannot use the state database: {exc}")
    except sqlite3.DatabaseError as exc:  # "file is not a database", "attempt to write a
        # readonly database": the file and sqlite's words say what to fix; the traceback,
        # for a bug, only at DEBUG
        path = state_db_path(spec.state_dir, spec.instance.id)
        log.error("cannot use the state database %s: %s", path, _one_line(exc))
        log.debug("where the state database failed", exc_info=True)
        code = _tell_parent_why(spec, to_parent,
                                f"cannot use the state database {path}: {_one_line(exc)}")
    except Exception as exc:
        log.exception("watcher crashed")
        code = _tell_parent_why(spec, to_parent, f"watcher crashed: {_one_line(exc)}")
    logging.shutdown()
    sys.exit(code)


def _tell_parent_why(spec: ChildSpec, to_parent: Connection, reason: str) -> int:
    """Send the supervisor the reason before exiting with status 1, so status, health and
    the page show it instead of a bare "exit status 1"."""
    ParentLink(to_parent, spec.parent_pid).send(Report.EXITING, {"reason": reason})
    return 1


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: an OSError's words and path, else its text."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    else:
        text = str(exc) or type(exc).__name__
    lines = text.strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def _reconciled(publisher: Publisher, gauge: OutboxGauge) -> None:
    """The startup scan is complete: the publisher may send settled markers (replicas),
    and is woken to send one now if its outbox is drained."""
    publisher.reconciled.set()
    gauge.new_events.set()


def _run(spec: ChildSpec, to_parent: Connection, stop: StopRequest) -> int:
    instance = spec.instance
    parent = ParentLink(to_parent, spec.parent_pid)
    problems = ProblemCounter()
    logging.getLogger().addHandler(problems)
    if not _wait_for_directory(instance, parent, stop):
        return 0 if stop.requested or not parent.alive() else EXIT_DIRECTORY_GONE
    started = _start_publishing(spec, parent, stop, problems)
    if isinstance(started, int):
        return started
    store, gauge, publisher = started
    mounts = MountGuard(instance.directory, required=instance.mount_required,
                        remembered=Mount.from_json(store.meta(META_KEY)),
                        follow_submounts=instance.recursive and not instance.one_filesystem,
                        wanted=PathFilter(instance.include, instance.exclude).wants_directory)
    heartbeat = HeartbeatSender(
        parent,
        lambda: heartbeat_snapshot(pipeline, publisher, gauge, problems, mounts, observer),
        lambda: (activity_summary(pipeline, publisher, gauge, problems), mounts.any_unmounted),
        hang_timeout=spec.hang_timeout_seconds)
    pipeline = Pipeline(instance, store, gauge, progress=heartbeat.maybe_send,
                        hash_pool=_hash_pool(spec))
    pipeline.mount_lost = mounts.lost
    pipeline.startup.on_complete = lambda: _reconciled(publisher, gauge)
    pipeline.deletions.roster = spec.roster
    stop.wake_up = pipeline.notifications
    problems.wake = lambda: pipeline.notifications.put(WAKE_UP)  # (a problem shows at once)
    quiet_refused_watch_warnings()
    observer: BaseObserver | None = None
    why_waiting = mounts.why_waiting(tracked_files=len(pipeline.tracked))
    if why_waiting is None:
        observer = start_watching(instance, pipeline, mounts, store)
        log.info("watching", extra={"path": instance.directory, "pid": os.getpid(),
                                    "settle_seconds": instance.settle_seconds,
                                    "tracked_files": len(pipeline.tracked)})
        parent.send(Report.READY, {"pid": os.getpid()})
    else:  # a bare mount point: reconciling against it would delete every tracked file
        mounts.unmounted = True
        log.warning(f"{UNMOUNTED}; waiting for its mount before scanning",
                    extra={"path": instance.directory, "reason": why_waiting,
                           "tracked_files": len(pipeline.tracked)})
        parent.send(Report.WAITING, {"reason": UNMOUNTED})
    exit_code = 0
    next_scan = _next_scan(instance)
    while not stop.requested:
        if mounts.unmounted:  # nothing is scanned or announced; the publisher goes on
            stop.wait(min(DIRECTORY_RETRY_SECONDS, heartbeat.idle_seconds))
        else:
            pipeline.step(_wait_budget(pipeline, gauge, publisher, heartbeat, next_scan))
        now = time.monotonic()
        heartbeat.maybe_send()
        if now >= next_scan and not mounts.unmounted:
            next_scan = _next_scan(instance)
            log.info("periodic reconcile scan", extra={"path": instance.directory})
            pipeline.request_scan()
        if not parent.alive():
            log.warning("supervisor is gone; stopping")
            break
        observer = follow_mount(instance, pipeline, mounts, store, parent, observer)
        if observer is None:
            pass  # unmounted: waiting for the mount
        elif pipeline.root_missing or not os.path.isdir(instance.directory):
            log.error("watched directory disappeared", extra={"path": instance.directory})
            exit_code = EXIT_DIRECTORY_GONE
            break
        if publisher.role.demoted:  # another replica holds the lease: restart as a standby
            parent.send(Report.EXITING, {"reason": LEASE_LOST})
            exit_code = EXIT_LEASE_LOST
            break
        publisher_problem = publisher.failure(now)
        if publisher_problem:
            # The supervisor's hang detector sees only this loop: say why, and exit so it
            # restarts the watcher (the outbox keeps every event).
            log.error("the publisher stopped working; exiting so the watcher is restarted",
                      extra={"reason": publisher_problem, "outbox_depth": gauge.depth})
            parent.send(Report.EXITING, {"reason": publisher_problem})
            exit_code = EXIT_PUBLISHER_FAILED
            break
        if observer is not None and not observer_alive(observer):
            log.error("filesystem observer died; restarting it and rescanning",
                      extra={"path": instance.directory})
            stop_observer(observer, OBSERVER_JOIN_SECONDS)
            observer = observe(instance, pipeline)
            pipeline.request_scan(watch=directory_watcher(observer))
        if observer is not None and (refused := inotify_refused(observer)) is not None:
            # Gives its watches back to the kernel, for the other watchers.
            stop_observer(observer, OBSERVER_JOIN_SECONDS)
            observer = observe(instance, pipeline, refused=refused)  # polls; says why, once
            pipeline.request_scan()  # what changed while directories went unwatched

    # Everything below ends before the supervisor's SIGKILL (stop_timeout_seconds away).
    stopping_at = time.monotonic()
    if observer is not None:  # (joined; a polling walk in progress on a hung mount never ends)
        stop_observer(observer, min(OBSERVER_JOIN_SECONDS, spec.stop_timeout_seconds / 4))
    if pipeline.files_waiting:
        log.info("stopping with files still settling; the next start's scan announces them",
                 extra={"files_waiting": pipeline.files_waiting})
    pipeline.close()
    # Leave a margin before the supervisor's SIGKILL to flush what the broker has not confirmed.
    flush_until = stopping_at + max(spec.stop_timeout_seconds - 1.5, 0.5)
    publisher.stop(deadline=flush_until)
    publisher.join(timeout=max(flush_until + 0.25 - time.monotonic(), 0.0))
    if publisher.is_alive():  # stuck in a bounded wait longer than the time left: leave it
        log.error("the publisher did not stop in time; exiting without it (the outbox keeps "
                  "its events)", extra={"doing": publisher.progress.doing})
    store.close()
    log.info("stopped", extra={"events": dict(pipeline.counts), "outbox_depth": gauge.depth})
    return exit_code


def _start_publishing(spec: ChildSpec, parent: ParentLink, stop: StopRequest,
                      problems: ProblemCounter) -> tuple[StateStore, OutboxGauge, Publisher] | int:
    """The state database and the publisher thread that drains its outbox, or the exit
    status when the watcher ends before.  A replica (ha) starts its publisher first and
    stands by (nothing watched, nothing opened) until that thread holds the lease; then it
    takes a state database (run_lock.replica_slot) and gives it to the publisher."""
    instance = spec.instance
    if not instance.ha.enabled:
        if not _hold_instance(spec, parent, stop):
            return 0 if stop.requested or not parent.alive() else 1
        db_path = state_db_path(spec.state_dir, instance.id)
        store = StateStore(db_path)
        gauge = OutboxGauge(events=0, size=0, max_events=instance.outbox_max_events,
                            max_bytes=instance.outbox_max_bytes)
        _count_outbox(store, gauge)
        publisher = Publisher(broker=spec.broker, state_dir=spec.state_dir,
                              instance_id=instance.id, db_path=db_path, gauge=gauge)
        with sigterm_for_main_thread_only():
            publisher.start()
        return store, gauge, publisher
    gauge = OutboxGauge(events=0, size=0, max_events=instance.outbox_max_events,
                        max_bytes=instance.outbox_max_bytes)
    lease: Lease = (FileLease(spec.state_dir, instance.id) if spec.broker.embedded
                    else BrokerLease(instance.id))
    publisher = Publisher(broker=spec.broker, state_dir=spec.state_dir, instance_id=instance.id,
                          db_path=None, gauge=gauge, lease=lease,
                          lease_retry_seconds=instance.ha.lease_retry_seconds)
    warm = standby.warm_slot(spec.state_dir, instance.id, embedded=spec.broker.embedded)
    if warm is not None:
        publisher.feed = StandbyFeed(
            instance_id=instance.id, exchange=spec.broker.exchange, db_path=warm.path,
            expect=publisher.progress.expect, reply_seconds=spec.broker.connect_timeout_seconds,
            window_seconds=in_flight_window_seconds(spec.broker, instance.ha.lease_retry_seconds))
    publisher.role.on_change = stop.nudge
    problems.wake = stop.nudge  # (the standby's loop waits on `stop`)
    with sigterm_for_main_thread_only():
        publisher.start()
    snapshot = lambda: standby.standby_snapshot(publisher, problems.count)  # noqa: E731
    code = standby.stand_by(parent, stop, publisher,
                            HeartbeatSender(parent, snapshot, snapshot,
                                            hang_timeout=spec.hang_timeout_seconds,
                                            idle_seconds=STANDBY_IDLE_HEARTBEAT_SECONDS),
                            EXIT_PUBLISHER_FAILED)
    if code is None:
        replica_db = standby.takeover_db(spec.state_dir, instance.id, warm,
                                         lambda: _hold_instance(spec, parent, stop))
        if replica_db is not None:
            mark_active(spec.state_dir, instance.id, replica_db)  # for `multiwatch state`
            store = StateStore(replica_db)
            _count_outbox(store, gauge)
            publisher.attach(replica_db)
            return store, gauge, publisher
        code = 0 if stop.requested or not parent.alive() else 1
    publisher.stop(deadline=time.monotonic())  # holds nothing to flush
    publisher.join(timeout=CLOSE_WAIT_SECONDS + 0.5)
    return code


def _count_outbox(store: StateStore, gauge: OutboxGauge) -> None:
    waiting_events, waiting_bytes = store.outbox_usage()
    gauge.added(waiting_events, waiting_bytes)
    if waiting_events:
        log.info("replaying events recorded but not confirmed before the last stop",
                 extra={"outbox_depth": waiting_events})


def _hash_pool(spec: ChildSpec) -> HashPool:
    """Workers for big files: as many as the cap allows and the cores can use.  A watcher
    with a read_rate_limit takes no machine-wide slot: its rate bounds its reads, and a
    throttled hash would hold a slot the other watchers need for as long as it lasts."""
    workers = min(spec.max_parallel_hashes, os.cpu_count() or 1)
    if spec.instance.read_rate_limit:
        return HashPool(None, workers)
    return HashPool(HashSlots.under(spec.state_dir, spec.max_parallel_hashes), workers)


def _wait_budget(pipeline: Pipeline, gauge: OutboxGauge, publisher: Publisher,
                 heartbeat: HeartbeatSender, next_scan: float) -> float:
    """How long the next turn may wait for notifications: until the next heartbeat or
    periodic scan when idle (the directory and parent checks ride on those wakeups),
    BUSY_WAIT_SECONDS at most while work is in progress or held back, and a busy
    heartbeat interval at most while the broker is not connected (so the connection, and
    with it readiness, reaches the supervisor within a second of happening)."""
    budget = min(heartbeat.due(), next_scan) - time.monotonic()
    if pipeline.busy or gauge.full:
        budget = min(budget, BUSY_WAIT_SECONDS)
    elif not publisher.stats.connected:
        budget = min(budget, heartbeat.busy_seconds)
    return max(budget, 0.0)


def _next_scan(instance: InstanceConfig) -> float:
    interval = instance.scan_interval_seconds
    return time.monotonic() + interval if interval > 0 else float("inf")


def _hold_instance(spec: ChildSpec, parent: ParentLink, stop: StopRequest) -> bool:
    """Hold the instance's watcher.lock until we exit (never closed); a watcher its killed
    supervisor left still stopping holds it: wait for it, up to its stop timeout."""
    from multiwatch.supervisor.run_lock import open_watcher_lock, try_lock_exclusive

    fd = open_watcher_lock(spec.state_dir, spec.instance.id)
    if try_lock_exclusive(fd):
        return True
    log.warning("waiting for the previous watcher of this instance to exit")
    parent.send(Report.WAITING, {"reason": "the previous watcher is still stopping"})
    deadline = time.monotonic() + spec.stop_timeout_seconds + PREVIOUS_WATCHER_GRACE_SECONDS
    next_report = time.monotonic() + 1.0
    while not stop.wait(0.1) and parent.alive():
        if try_lock_exclusive(fd):
            return True
        if time.monotonic() >= next_report:  # (a message is a heartbeat: not taken as hung)
            next_report += 1.0
            parent.send(Report.WAITING, {"reason": "the previous watcher is still stopping"})
        if time.monotonic() >= deadline:
            log.error("the previous watcher of this instance is still running; not starting "
                      "beside it (it shares the state database)")
            break
    os.close(fd)
    return False


def _wait_for_directory(instance: InstanceConfig, parent: ParentLink, stop: StopRequest) -> bool:
    """True once the directory exists; an optional instance waits for it (a late mount)."""
    if os.path.isdir(instance.directory):
        return True
    if not instance.optional:
        log.error("watched directory is missing", extra={"path": instance.directory})
        return False
    log.warning("optional directory is missing; waiting for it", extra={"path": instance.directory})
    parent.send(Report.WAITING, {"reason": "directory missing"})
    while not stop.wait(DIRECTORY_RETRY_SECONDS):
        if not parent.alive():
            return False
        parent.send(Report.WAITING, {"reason": "directory missing"})
        if os.path.isdir(instance.directory):
            log.info("directory appeared", extra={"path": instance.directory})
            return True
    return False
