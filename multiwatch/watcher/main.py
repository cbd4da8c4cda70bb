"""Entry point of one watcher child: wiring, heartbeats, SIGTERM, dying with the parent.

Runs in a fresh interpreter (multiprocessing `spawn`), so the observer, the publisher
thread and the broker connection are all built here, never inherited.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from watchdog.observers.api import BaseObserver

from multiwatch.config import InstanceConfig
from multiwatch.logs import setup_logging
from multiwatch.watcher.hash_pool import HashPool
from multiwatch.watcher.hash_slots import HashSlots
from multiwatch.watcher.observe import listen_for_lost_events, start_observer
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.pipeline import Pipeline
from multiwatch.watcher.publisher import Publisher
from multiwatch.watcher.spec import EXIT_DIRECTORY_GONE, ChildSpec
from multiwatch.watcher.state import StateError, StateStore, state_db_path
from multiwatch.watcher.stats import ProblemCounter

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
LOOP_WAIT_SECONDS = 0.5  # upper bound on reacting to SIGTERM; events wake it at once
DIRECTORY_RETRY_SECONDS = 2.0
DEEP_TREE_RECURSION_LIMIT = 20_000
THREAD_STACK_BYTES = 64 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


def child_main(spec: ChildSpec, to_parent: Connection) -> None:
    """Run one watcher until SIGTERM, the parent's death, or the directory's disappearance."""
    setup_logging(spec.log_level, spec.instance.id)
    # watchdog walks trees with os.walk, which recurses once per level: give a 1,000-level
    # tree room (the limit) and the threads that walk it the C stack to match.
    sys.setrecursionlimit(DEEP_TREE_RECURSION_LIMIT)
    threading.stack_size(THREAD_STACK_BYTES)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent leads
    _die_with_parent(spec.parent_pid)
    try:
        code = _run(spec, to_parent, stop)
    except StateError as exc:  # a user-fixable problem: say it, without a traceback
        log.error("cannot use the state database: %s", exc)
        code = 1
    except Exception:
        log.exception("watcher crashed")
        code = 1
    logging.shutdown()
    sys.exit(code)


def _run(spec: ChildSpec, to_parent: Connection, stop: threading.Event) -> int:
    instance = spec.instance
    parent = _ParentLink(to_parent, spec.parent_pid)
    problems = ProblemCounter()
    logging.getLogger().addHandler(problems)
    if not _wait_for_directory(instance, parent, stop):
        return 0 if stop.is_set() or not parent.alive() else EXIT_DIRECTORY_GONE

    db_path = state_db_path(spec.state_dir, instance.id)
    store = StateStore(db_path)
    waiting_events, waiting_bytes = store.outbox_usage()
    gauge = OutboxGauge(events=waiting_events, size=waiting_bytes,
                        max_events=instance.outbox_max_events, max_bytes=instance.outbox_max_bytes)
    if waiting_events:
        log.info("replaying events recorded but not confirmed before the last stop",
                 extra={"outbox_depth": waiting_events})
    publisher = Publisher(broker=spec.broker, state_dir=spec.state_dir,
                          instance_id=instance.id, db_path=db_path, gauge=gauge)
    publisher.start()
    heartbeat = _Heartbeat(parent, lambda: _snapshot(pipeline, publisher, gauge, problems))
    pipeline = Pipeline(instance, store, gauge, progress=heartbeat.maybe_send,
                        hash_pool=_hash_pool(spec))
    # Observer first, then the scan: nothing created during the scan can slip through.
    listen_for_lost_events(pipeline.notifications)
    observer = _observe(instance, pipeline)
    pipeline.request_scan()
    log.info("watching", extra={"path": instance.directory, "pid": os.getpid(),
                                "settle_seconds": instance.settle_seconds,
                                "tracked_files": len(pipeline.known)})
    parent.send("ready", {"pid": os.getpid()})
    exit_code = 0
    next_scan = _next_scan(instance)
    while not stop.is_set():
        pipeline.step(LOOP_WAIT_SECONDS)
        now = time.monotonic()
        heartbeat.maybe_send()
        if now >= next_scan:
            next_scan = _next_scan(instance)
            log.info("periodic reconcile scan", extra={"path": instance.directory})
            pipeline.request_scan()
        if not parent.alive():
            log.warning("supervisor is gone; stopping")
            break
        if pipeline.root_missing or not os.path.isdir(instance.directory):
            log.error("watched directory disappeared", extra={"path": instance.directory})
            exit_code = EXIT_DIRECTORY_GONE
            break
        if not _observer_alive(observer):
            log.error("filesystem observer died; restarting it and rescanning",
                      extra={"path": instance.directory})
            observer.stop()
            observer = _observe(instance, pipeline)
            pipeline.request_scan()

    observer.stop()
    if pipeline.files_waiting:
        log.info("stopping with files still settling; the next start's scan announces them",
                 extra={"files_waiting": pipeline.files_waiting})
    pipeline.close()
    # Leave a margin before the supervisor's SIGKILL to flush what the broker has not confirmed.
    publisher.stop(deadline=time.monotonic() + max(spec.stop_timeout_seconds - 1.5, 0.5))
    publisher.join()
    observer.join(timeout=2)
    store.close()
    log.info("stopped", extra={"events": dict(pipeline.counts), "outbox_depth": gauge.depth})
    return exit_code


def _hash_pool(spec: ChildSpec) -> HashPool:
    """Workers for big files: as many as the cap allows and the cores can use."""
    workers = min(spec.max_parallel_hashes, os.cpu_count() or 1)
    return HashPool(HashSlots.under(spec.state_dir, spec.max_parallel_hashes), workers)


def _observe(instance: InstanceConfig, pipeline: Pipeline) -> BaseObserver:
    return start_observer(instance.directory, recursive=instance.recursive,
                          events=pipeline.notifications, mode=instance.observer,
                          polling_interval=instance.polling_interval_seconds)


def _observer_alive(observer: BaseObserver) -> bool:
    """The observer thread and every emitter thread (an emitter can die alone, e.g. of a
    RecursionError while adding watches, leaving the observer deaf but alive)."""
    return observer.is_alive() and all(e.is_alive() for e in observer.emitters)


def _next_scan(instance: InstanceConfig) -> float:
    interval = instance.scan_interval_seconds
    return time.monotonic() + interval if interval > 0 else float("inf")


def _snapshot(pipeline: Pipeline, publisher: Publisher, gauge: OutboxGauge,
              problems: ProblemCounter) -> dict[str, object]:
    """The status a heartbeat carries to the supervisor (and on to /status and /metrics)."""
    return {
        "events": dict(pipeline.counts),
        "bytes_hashed": pipeline.bytes_hashed,
        "files_hashed": pipeline.files_hashed,
        "files_waiting": pipeline.files_waiting,
        "outbox_depth": gauge.depth,
        "outbox_bytes": gauge.size,
        "outbox_full": gauge.full,
        "errors": problems.count,
        "latency": publisher.latency.snapshot(),
        "broker_connected": publisher.stats.connected,
        "published": publisher.stats.published,
        "publish_failures": publisher.stats.failures,
        "last_error": publisher.stats.last_error,
    }


def _wait_for_directory(instance: InstanceConfig, parent: _ParentLink,
                        stop: threading.Event) -> bool:
    """True once the directory exists; an optional instance waits for it (a late mount)."""
    if os.path.isdir(instance.directory):
        return True
    if not instance.optional:
        log.error("watched directory is missing", extra={"path": instance.directory})
        return False
    log.warning("optional directory is missing; waiting for it", extra={"path": instance.directory})
    parent.send("waiting", {"reason": "directory missing"})
    while not stop.wait(DIRECTORY_RETRY_SECONDS):
        if not parent.alive():
            return False
        parent.send("waiting", {"reason": "directory missing"})
        if os.path.isdir(instance.directory):
            log.info("directory appeared", extra={"path": instance.directory})
            return True
    return False


class _Heartbeat:
    """Sends the status snapshot at most every HEARTBEAT_SECONDS; called from the work loop
    and from inside long work (hashing a huge file), never from a side thread."""

    def __init__(self, parent: _ParentLink, snapshot: Callable[[], dict[str, object]]) -> None:
        self._parent = parent
        self._snapshot = snapshot
        self._next = 0.0

    def maybe_send(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + HEARTBEAT_SECONDS
            self._parent.send("heartbeat", self._snapshot())


class _ParentLink:
    """The pipe to the supervisor; a broken pipe means the parent is gone."""

    def __init__(self, connection: Connection, parent_pid: int) -> None:
        self._connection = connection
        self._parent_pid = parent_pid
        self._broken = False

    def send(self, kind: str, payload: dict[str, object]) -> None:
        if self._broken:
            return
        try:
            self._connection.send((kind, payload))
        except (BrokenPipeError, EOFError, OSError):
            self._broken = True

    def alive(self) -> bool:
        return not self._broken and os.getppid() == self._parent_pid


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGTERM us when the supervisor dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the loop's getppid() check still catches an orphaning
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
