"""One child process and its lifecycle, on time.monotonic():

    STARTING ──ready──> RUNNING ──exit──> BACKOFF ──delay──> STARTING ...
       │                                     │
       └──"waiting" (optional dir absent)──> WAITING      FATAL: START_RETRIES exits in a row
                                                          before ever reaching RUNNING
    STOPPING ──exit──> STOPPED  (asked to stop: shutdown, reload, memory limit)

The child reports over a one-way pipe: "ready" once it watches, "heartbeat" from its work
loop, "waiting" while an optional directory is absent or its mount is gone (also from
RUNNING, back with "ready": watcher/mount.py), "exiting" with the reason just before
it exits on its own (its publisher stopped working): /status shows that reason.  A watched
directory that is gone is not a crash: it is retried at the capped backoff forever and never
turns FATAL.  Nor is a replica (ha) that lost the lease to another (EXIT_LEASE_LOST): it is
started again at once, as a standby, and not counted in `restarts` (which alerts watch for
crash loops).

The process is made by a `WatcherFactory` (`template_factory()` in production: forked from
the template process, supervisor/template.py) and time is the
`now` every method takes (the supervisor's clock), so every edge can be driven in-process
by a fake process and a fake clock (tests/supervisor/test_lifecycle_edges.py).
"""

from __future__ import annotations

import enum
import logging
import random
import signal
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection, wait
from multiprocessing.context import (
    ForkServerContext,
    ForkServerProcess,
    SpawnContext,
    SpawnProcess,
)
from typing import Protocol

from multiwatch.config import BrokerConfig, SupervisorConfig, mask_url
from multiwatch.status_view import ChildView, Heartbeat, Resources
from multiwatch.supervisor.event_rate import EventRate, event_total
from multiwatch.supervisor.template import start_in_template, template_context
from multiwatch.watcher.spec import (
    EXIT_DIRECTORY_GONE,
    EXIT_LEASE_LOST,
    ChildSpec,
    Report,
    run_child,
)

log = logging.getLogger(__name__)

KILLED_REAP_SECONDS = 5.0  # how long a SIGKILLed child may take to be reaped at shutdown

START_RETRIES = 5  # exits in a row without ever becoming ready → FATAL (until SIGHUP)


class State(enum.StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    WAITING = "WAITING"  # optional instance whose directory is not there (yet)
    BACKOFF = "BACKOFF"
    FATAL = "FATAL"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


class WatcherProcess(Protocol):
    """What a Child needs of its started watcher process (a multiprocessing Process)."""

    @property
    def pid(self) -> int | None: ...

    @property
    def exitcode(self) -> int | None: ...

    @property
    def sentinel(self) -> int: ...  # readable once the process has exited

    def is_alive(self) -> bool: ...

    def join(self, timeout: float | None = None) -> None: ...

    def terminate(self) -> None: ...  # SIGTERM

    def kill(self) -> None: ...  # SIGKILL


# Starts the watcher for a spec; returns it and the reading end of its report pipe, whose
# writing end only the process holds (EOF: it is gone).
WatcherFactory = Callable[[ChildSpec], tuple[WatcherProcess, Connection]]


def spawn_watcher(context: ForkServerContext | SpawnContext,
                  spec: ChildSpec) -> tuple[ForkServerProcess | SpawnProcess, Connection]:
    """A WatcherFactory once bound to a context: a run_child process started in it (in
    the template: within a deadline, supervisor/template.py)."""
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=run_child, args=(spec, writer),
                              name=f"multiwatch-{spec.instance.id}")
    try:
        if isinstance(context, ForkServerContext):
            start_in_template(process)
        else:
            process.start()
    except BaseException:
        reader.close()
        raise
    finally:
        writer.close()  # the child holds the only writer: EOF here means it is gone
    return process, reader


def template_factory() -> WatcherFactory:
    """The production WatcherFactory: each watcher forked from the template process."""
    return partial(spawn_watcher, template_context())


class Child:
    """Supervises one watcher process for one instance."""

    def __init__(self, spec: ChildSpec, settings: SupervisorConfig,
                 context: ForkServerContext | SpawnContext | None = None, *,
                 spawn: WatcherFactory | None = None) -> None:
        """`spawn` starts the process (default: `spawn_watcher` in `context`, or forked
        from the template: `template_factory()`)."""
        self.spec = spec
        self.settings = settings
        if spawn is None:
            spawn = partial(spawn_watcher, context) if context else template_factory()
        self._spawn = spawn
        self.state = State.STOPPED
        self.process: WatcherProcess | None = None
        self.reader: Connection | None = None
        self.restarts = 0
        self.started_at = 0.0
        self.last_heartbeat = 0.0
        self.snapshot: Heartbeat = {}
        self._rate: EventRate | None = None  # from the first heartbeat of each start
        self.last_exit = ""
        self.reason = ""  # why it is not RUNNING, for /status
        self._exiting_because = ""  # the reason the child gave before exiting on its own
        self.next_start_at = 0.0
        self._backoff = settings.restart_backoff_seconds
        self._failures_before_ready = 0
        self._term_sent_at: float | None = None
        self._restart_requested = ""

    @property
    def instance_id(self) -> str:
        return self.spec.instance.id

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, now: float) -> None:
        """Start the watcher process (production: forked from the template)."""
        try:
            process, reader = self._spawn(self.spec)
        except (OSError, EOFError) as exc:  # no process to spare, no template (or it died)
            self._start_failed(now, exc)
            return
        self.process, self.reader = process, reader
        self.state = State.STARTING
        self.started_at = self.last_heartbeat = now
        self.snapshot = {}
        self._rate = None
        self._term_sent_at = None
        self._exiting_because = ""
        log.info("child started", extra={"instance_id": self.instance_id, "pid": process.pid,
                                         "restarts": self.restarts})

    def _start_failed(self, now: float, exc: OSError | EOFError) -> None:
        """A start that made no process counts as an exit before ready: retried after the
        backoff, FATAL after START_RETRIES in a row."""
        self.restarts += 1
        self.last_exit = self.reason = f"cannot start the watcher: {str(exc) or type(exc).__name__}"
        self._failures_before_ready += 1
        if self._failures_before_ready >= START_RETRIES:
            self.state = State.FATAL
            log.error("cannot start the watcher; giving up until the roster is reloaded "
                      "(SIGHUP)", extra={"instance_id": self.instance_id, "error": str(exc)})
            return
        delay = self._backoff * random.uniform(0.8, 1.2)
        self._backoff = min(self._backoff * 2, self.settings.restart_backoff_max_seconds)
        self.next_start_at = now + delay
        self.state = State.BACKOFF
        log.error("cannot start the watcher; trying again after backoff", extra={
            "instance_id": self.instance_id, "error": str(exc),
            "restart_in_seconds": round(delay, 2)})

    def receive(self, now: float) -> None:
        """Read every pending report from the child."""
        if self.reader is None:
            return
        try:
            while self.reader.poll():
                kind, payload = self.reader.recv()
                self.last_heartbeat = now
                if kind == Report.READY and self.state in (State.STARTING, State.WAITING):
                    self.state = State.RUNNING
                    self.reason = ""
                    self._failures_before_ready = 0
                elif kind == Report.WAITING and self.state in (State.STARTING, State.RUNNING):
                    # (from RUNNING: its directory's mount went away, watcher/mount.py)
                    self.state = State.WAITING
                    self.reason = str(payload.get("reason", "waiting"))
                elif kind == Report.HEARTBEAT:
                    if payload:  # ({}: alive, nothing changed since the last one; parent_link.py)
                        self.snapshot = payload
                    total = event_total(self.snapshot)
                    if total is not None:
                        if self._rate is None:  # its counters started from 0 at its start
                            self._rate = EventRate(self.started_at)
                        self._rate.observe(total, now)
                elif kind == Report.EXITING:
                    self._exiting_because = str(payload.get("reason", ""))
        except (EOFError, OSError):
            self.reader.close()
            self.reader = None

    def reap(self, now: float) -> bool:
        """If the process has exited, record why and schedule what comes next."""
        process = self.process
        if process is None or process.is_alive():
            return False
        process.join(timeout=1)  # not alive: already reaped, returns at once
        code = process.exitcode
        self.last_exit = _describe_exit(code)
        uptime = now - self.started_at
        self.receive(now)  # what it said last, e.g. why it is exiting
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        self.process = None
        if self.state is State.STOPPING and not self._restart_requested:
            self.state = State.STOPPED
            log.info("child stopped", extra={"instance_id": self.instance_id,
                                             "exit": self.last_exit})
            return True
        if code == EXIT_LEASE_LOST and self.state is not State.STARTING:
            # A replica that was active found another holding the lease: expected, not a
            # crash.  Started again at once (it stands by); no restart counted, no backoff.
            self.reason = self._exiting_because or self.last_exit
            self.next_start_at = now
            self.state = State.BACKOFF
            log.info("replica lost the lease to another; starting it again as a standby",
                     extra={"instance_id": self.instance_id, "exit": self.last_exit})
            return True
        self.restarts += 1
        if self._restart_requested:  # asked for (memory limit): no penalty, start again now
            self.reason, self._restart_requested = self._restart_requested, ""
            self.next_start_at = now
            self.state = State.BACKOFF
            return True
        directory_gone = code == EXIT_DIRECTORY_GONE
        self.reason = "directory missing" if directory_gone else self.last_exit
        if self._exiting_because:
            self.reason = f"{self._exiting_because} ({self.last_exit})"
        if self.state is State.STARTING and not directory_gone:
            self._failures_before_ready += 1
        if self._failures_before_ready >= START_RETRIES:
            self.state = State.FATAL
            log.error("child keeps failing before it is ready; giving up until the roster is "
                      "reloaded (SIGHUP)", extra={"instance_id": self.instance_id,
                                                  "exit": self.last_exit,
                                                  "attempts": self._failures_before_ready})
            return True
        if uptime >= self.settings.backoff_reset_seconds:
            self._backoff = self.settings.restart_backoff_seconds
        delay = self._backoff * random.uniform(0.8, 1.2)
        self._backoff = min(self._backoff * 2, self.settings.restart_backoff_max_seconds)
        self.next_start_at = now + delay
        self.state = State.BACKOFF
        log.warning("child exited; restarting after backoff", extra={
            "instance_id": self.instance_id, "exit": self.last_exit, "reason": self.reason,
            "uptime_seconds": round(uptime, 1), "restart_in_seconds": round(delay, 2)})
        return True

    def check_hung(self, now: float) -> None:
        """SIGTERM a child whose work loop stopped heartbeating; SIGKILL if that is ignored."""
        if self.process is None:
            return
        if self._term_sent_at is not None:
            if now - self._term_sent_at >= self.settings.stop_timeout_seconds:
                self._signal(signal.SIGKILL)
            return
        silent = now - self.last_heartbeat
        if silent >= self.settings.hang_timeout_seconds:
            log.error("child stopped heartbeating; terminating it", extra={
                "instance_id": self.instance_id, "silent_seconds": round(silent, 1)})
            self._signal(signal.SIGTERM)
            self._term_sent_at = now

    def restart(self, reason: str, now: float) -> None:
        """Stop gracefully and start again at once (not counted as a failure)."""
        if self.process is None or self._restart_requested:
            return
        log.warning("restarting child: %s", reason, extra={"instance_id": self.instance_id})
        self._restart_requested = reason
        self.state = State.STOPPING
        self._signal(signal.SIGTERM)
        self._term_sent_at = now

    def terminate(self) -> None:
        """Ask the child to stop for good (it flushes its outbox first)."""
        self._restart_requested = ""
        self.state = State.STOPPING if self.process is not None else State.STOPPED
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def view(self, now: float, resources: Resources | None = None) -> ChildView:
        """This child as /status shows it, with the supervisor's last sample of its
        `resources`."""
        alive = self.process is not None
        instance = self.spec.instance
        return {
            "state": str(self.state),
            "pid": self.pid,
            "restarts": self.restarts,
            "uptime_seconds": round(now - self.started_at, 1) if alive else None,
            "last_exit": self.last_exit,
            # Not RUNNING: why; RUNNING: what keeps its events from leaving, if anything.
            "reason": self.reason or str(self.snapshot.get("problem") or ""),
            "directory": instance.directory,
            "heartbeat_age_seconds": round(now - self.last_heartbeat, 1) if alive else None,
            "heartbeat": self.snapshot,
            "events_per_minute": self._rate.per_minute(now) if self._rate and alive else None,
            "resources": resources,
            # The resource limits as the roster sets them: bytes (0: none), None: inherit.
            "memory_limit": instance.memory_limit,
            "read_rate_limit": instance.read_rate_limit,
            "nice": instance.nice,
            "ionice": instance.ionice,
        }

    def _signal(self, signum: signal.Signals) -> None:
        """SIGTERM or SIGKILL the process if it still runs (one already gone is left be)."""
        process = self.process
        if process is not None and process.pid is not None and process.is_alive():
            if signum is signal.SIGKILL:
                process.kill()
            else:
                process.terminate()


def stop_children(children: list[Child], stop_timeout: float,
                  clock: Callable[[], float]) -> None:
    """SIGTERM, wait up to stop_timeout, SIGKILL whoever is left, reap everyone."""
    for child in children:
        child.terminate()
    deadline = clock() + stop_timeout
    while clock() < deadline and any(c.process is not None for c in children):
        sentinels = [c.process.sentinel for c in children if c.process is not None]
        wait(sentinels, timeout=max(0.0, deadline - clock()))
        for child in children:
            child.receive(clock())
            child.reap(clock())
    for child in children:
        if child.process is not None:
            log.warning("child did not stop in time; killing it",
                        extra={"instance_id": child.instance_id, "pid": child.pid})
            child.kill()
            # Bounded: a process stuck in the kernel (a hung NFS read, state D) outlives
            # SIGKILL until the kernel lets go; the supervisor must still exit.
            child.process.join(KILLED_REAP_SECONDS)
            if not child.reap(clock()):
                log.error("child survived SIGKILL (stuck in the kernel?); leaving it",
                          extra={"instance_id": child.instance_id, "pid": child.pid})


def broker_description(broker: BrokerConfig) -> str:
    """Where events go, as /status shows it: each URL with its password masked."""
    if broker.url is None:
        return "embedded spool"
    return "; ".join(mask_url(url) for url in broker.urls)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code == EXIT_DIRECTORY_GONE:
        return "watched directory missing"
    if code == EXIT_LEASE_LOST:
        return "lost the lease to another replica"
    return f"exit status {code}"
