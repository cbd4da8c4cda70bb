"""The supervisor: a reconcile loop over one Child per roster instance.

Each turn waits at most a second (for a child report or a signal) and handles queued
signals and child reports; at most once a second (at once when a child exits or a backoff
is over) it also reaps exited children, checks heartbeats, starts children whose backoff
is over, samples resources, and publishes a fresh fleet view for the HTTP thread.
Signal handlers only queue the signal.  An error inside a turn (say, EMFILE while file
descriptors run short) is logged and the loop turns on: SIGTERM must always work.
How children are started (`spawn`), the clock and the resource meter are passed in, so the
loop's edges can be tested in-process with fakes (tests/supervisor/test_fleet_edges.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from multiwatch.config import ConfigError, InstanceConfig, Roster
from multiwatch.status_view import FleetView, child_role, fleet_role
from multiwatch.supervisor.endpoint import OperatorEndpoint
from multiwatch.supervisor.lifecycle import (
    Child,
    State,
    WatcherFactory,
    broker_description,
    stop_children,
    template_factory,
)
from multiwatch.supervisor.report_wait import ReportWait
from multiwatch.supervisor.run_lock import (
    SUPERVISOR_TITLE,
    InstanceLocks,
    SupervisorFile,
    process_manager,
    roster_path,
)
from multiwatch.supervisor.usage import FleetUsage
from multiwatch.watcher.spec import ChildSpec

if TYPE_CHECKING:  # imported when first used, after the children are spawned
    from multiwatch.supervisor.resources import ResourceMeter

log = logging.getLogger(__name__)

LOOP_WAIT_SECONDS = 1.0
EXITING_WAIT_SECONDS = 0.05  # a child's pipe closed: it is exiting; reap it promptly
HOUSEKEEPING_SECONDS = 1.0
SAMPLE_EVERY_SECONDS = 5.0  # psutil sampling for the fleet view (cpu_percent spans this)
OPEN_FILES_EVERY_SECONDS = 30.0  # the costly part of a sample; also at every resource report
TURN_ERROR_PAUSE_SECONDS = 0.2  # after an unexpected error in a turn: do not spin on it
LOG_ERROR_EVERY_SECONDS = 60.0  # the same failure is logged at most this often


class Supervisor:
    """Runs the fleet described by a roster until SIGTERM or SIGINT."""

    def __init__(self, roster: Roster, *, reload: Callable[[], Roster] | None = None,
                 only: list[str] | None = None,
                 spawn: WatcherFactory | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 meter: ResourceMeter | None = None) -> None:
        """`spawn` starts a child's process (default: forked from the template process),
        `clock` is monotonic seconds, `meter` measures resources (default: a psutil
        ResourceMeter, imported after the first spawn)."""
        self.roster = roster
        self._only = only
        # One supervisor per instance (run.lock), and a file reload/stop find us by.
        self._locks = InstanceLocks(roster.state_dir, roster_path(roster.source))
        self._supervisor_file = SupervisorFile(roster.state_dir)
        self._reload = reload
        self._spawn = spawn or template_factory()
        self._clock = clock
        self._children: dict[str, Child] = {}
        self._signals: deque[int] = deque()
        self._stopping = False
        self._usage = FleetUsage(meter)  # the last psutil sample of each process
        self._next_report = 0.0
        self._next_sample = 0.0
        self._next_files_count = 0.0
        self._next_housekeeping = 0.0
        self._started_at = clock()
        self._last_turn = self._started_at
        self._report_wait: ReportWait | None = None  # made with the wake-up fd
        # Set by each housekeeping (_plan_wakeups); until the first, housekeeping is due.
        self._soonest_start = 0.0
        self._exiting_left = True
        self._view: FleetView = {}
        self._view_lock = threading.Lock()
        self._endpoint = OperatorEndpoint(roster.state_dir, self.fleet_view)
        self._error_logged_at: dict[str, float] = {}

    # -- signals: handlers only enqueue; the loop acts ---------------------------------------

    def _install_signal_handlers(self) -> int:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda signum, _frame: self._signals.append(signum))
        return wake_read

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.handle_stop(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self.handle_hup()

    def handle_stop(self, reason: str) -> None:
        if not self._stopping:
            log.info("stopping", extra={"reason": reason})
            self._stopping = True

    def handle_hup(self) -> None:
        if self._reload is None:
            log.warning("SIGHUP ignored: this fleet was not started from a roster file")
            return
        try:
            new_roster = self._reload()
        except ConfigError as exc:
            log.error("roster reload rejected; the running fleet is unchanged",
                      extra={"error": str(exc)})
            return
        http_changed = new_roster.http != self.roster.http
        self._converge(new_roster)
        if http_changed:
            self._endpoint.serve(new_roster.http)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until asked to stop; returns the process exit status.  Raises
        RunLockHeld (a ConfigError) before starting anything if another process runs one
        of the instances."""
        only = "".join(f" --only {ident}" for ident in self._only or ())  # (ps tells the
        title = _set_title(f"{SUPERVISOR_TITLE} {self.roster.source}{only}")  # exports apart)
        try:
            self._supervisor_file.acquire(self._record())
            self._locks.acquire_all([i.id for i in self.roster.instances],
                                    replicas={i.id for i in self.roster.instances
                                              if i.ha.enabled})
            return self._supervise()
        finally:
            self._locks.release_all()  # (after the children have stopped)
            self._supervisor_file.release()
            _set_title(title)

    def _record(self) -> dict[str, Any]:
        return {"roster": roster_path(self.roster.source), "only": self._only,
                "instances": self._locks.held, **process_manager()}

    def _supervise(self) -> int:
        wake_fd = self._install_signal_handlers()
        log.info("supervisor started", extra={"pid": os.getpid(), "roster": self.roster.source,
                                             "instances": len(self.roster.instances)})
        self._converge(self.roster)
        self._publish_view(self._clock())
        self._endpoint.serve(self.roster.http)
        while not self._stopping:
            try:
                self._turn(wake_fd)
            except Exception:  # noqa: BLE001 - logged: a failing turn must not end supervision
                self._log_error("turn", "supervisor loop error; carrying on", exc_info=True)
                time.sleep(TURN_ERROR_PAUSE_SECONDS)
        self._shutdown()
        self._endpoint.close()
        log.info("supervisor stopped")
        return 0

    def _log_error(self, kind: str, message: str, **kwargs: Any) -> None:
        """Log a failure at most once a minute per kind: a repeating one must not flood."""
        now = self._clock()
        if now - self._error_logged_at.get(kind, -LOG_ERROR_EVERY_SECONDS) \
                >= LOG_ERROR_EVERY_SECONDS:
            self._error_logged_at[kind] = now
            log.error(message, **kwargs)

    def _turn(self, wake_fd: int) -> None:
        by_reader = {c.reader: c for c in self._children.values() if c.reader is not None}
        if self._report_wait is None:
            self._report_wait = ReportWait(wake_fd)
        ready, woken = self._report_wait.wait(list(by_reader), self._wait_budget())
        if woken:
            _drain(wake_fd)
        self._handle_signals()
        now = self._clock()
        reported = [by_reader[reader] for reader in ready if reader in by_reader]
        for child in reported:
            child.receive(now)  # a heartbeat, or EOF of an exited child
        # Heartbeats wake the loop many times a second with a large fleet; the rest of the
        # turn (reaping, hang checks, starts, the view) runs at most HOUSEKEEPING_SECONDS
        # apart, or at once when a child has exited (its pipe closed), is due to start, or
        # a signal came (a reload changes the children).  Between two housekeepings only
        # a report (its EOF) changes whether a child is exiting: the other children are
        # not looked at, so a heartbeat's turn costs the same with 2 children or 200.
        if not woken and now < self._next_housekeeping and not self._housekeeping_due(
                now, reported):
            return
        self._next_housekeeping = now + HOUSEKEEPING_SECONDS
        for child in self._children.values():
            child.reap(now)
            child.check_hung(now)
            if child.state is State.BACKOFF and now >= child.next_start_at and not self._stopping:
                child.start(now)
        report_due = now >= self._next_report
        if now >= self._next_sample or report_due:
            self._next_sample = now + SAMPLE_EVERY_SECONDS
            count_files = report_due or now >= self._next_files_count
            if count_files:
                self._next_files_count = now + OPEN_FILES_EVERY_SECONDS
            self._sample_resources(count_files=count_files)
        if report_due:
            self._next_report = now + self.roster.supervisor.report_interval_seconds
            self._usage.report(self._children.values())
        self._plan_wakeups()
        self._publish_view(now)

    def _plan_wakeups(self) -> None:
        """After housekeeping: the soonest backoff end, and whether a child is still
        exiting (its pipe closed, its process not reaped yet)."""
        children = self._children.values()
        self._soonest_start = min((c.next_start_at for c in children
                                   if c.state is State.BACKOFF), default=float("inf"))
        self._exiting_left = any(_exiting(c) for c in children)

    def _housekeeping_due(self, now: float, reported: list[Child]) -> bool:
        """A child to reap (its pipe is closed) or to start (its backoff is over)."""
        return (self._exiting_left or now >= self._soonest_start
                or any(_exiting(c) for c in reported))

    # -- the fleet view (read by the HTTP thread) -----------------------------------------------

    def fleet_view(self) -> FleetView:
        """A JSON-ready picture of the fleet; safe to call from any thread."""
        with self._view_lock:
            view = self._view.copy()
        if "supervisor" in view:
            supervisor = view["supervisor"].copy()
            supervisor["loop_age_seconds"] = round(self._clock() - self._last_turn, 2)
            view["supervisor"] = supervisor
        return view

    def _publish_view(self, now: float) -> None:
        instances = {child.instance_id: child.view(now, self._usage.of(child.pid))
                     for child in self._children.values()}
        for child in self._children.values():
            entry = instances[child.instance_id]
            entry["role"] = child_role(entry, replicated=child.spec.instance.ha.enabled)
        view: FleetView = {
            "supervisor": {"pid": os.getpid(), "roster": self.roster.source,
                           "uptime_seconds": round(now - self._started_at, 1),
                           "resources": self._usage.of(os.getpid()),
                           "broker": broker_description(self.roster.broker),
                           "role": fleet_role(instances.values())},
            "instances": instances,
        }
        with self._view_lock:
            self._view = view
            self._last_turn = now

    def _wait_budget(self) -> float:
        now = self._clock()
        budget = min(LOOP_WAIT_SECONDS, max(0.0, self._next_housekeeping - now),
                     max(0.0, self._soonest_start - now))
        if self._exiting_left:
            budget = min(budget, EXITING_WAIT_SECONDS)
        return budget

    # -- converge target (roster) and actual (children) ------------------------------------------

    def _converge(self, roster: Roster) -> None:
        """Start added instances, stop removed ones, restart changed ones; leave the rest."""
        old_specs = {cid: child.spec for cid, child in self._children.items()}
        self.roster = roster
        now = self._clock()
        for instance in roster.instances:
            spec = child_spec(roster, instance)
            current = self._children.get(instance.id)
            unchanged = current is not None and old_specs.get(instance.id) == spec
            if unchanged and current is not None and current.state is not State.FATAL:
                continue
            if current is not None and not self._lock_mode(current, instance):
                continue  # ha could not be turned off: it runs on as a replica
            if current is not None:
                log.info("instance changed; restarting it", extra={"instance_id": instance.id})
                stop_children([current], roster.supervisor.stop_timeout_seconds, self._clock)
            else:
                try:
                    # (taken already for the first roster)
                    self._locks.acquire(instance.id, replica=instance.ha.enabled)
                except ConfigError as exc:
                    log.error("instance not started: %s", exc,
                              extra={"instance_id": instance.id})
                    continue
            child = Child(spec, roster.supervisor, spawn=self._spawn)
            self._children[instance.id] = child
            child.start(now)
        for child in list(self._children.values()):
            if child.instance_id not in self._wanted_ids():
                log.info("instance removed; stopping it", extra={"instance_id": child.instance_id})
                stop_children([child], roster.supervisor.stop_timeout_seconds, self._clock)
                del self._children[child.instance_id]
                self._locks.release(child.instance_id)
        self._supervisor_file.update(self._record())

    def _lock_mode(self, current: Child, instance: InstanceConfig) -> bool:
        """Hold run.lock as the changed instance's ha wants (shared with replicas, else
        exclusive) before its watcher restarts; False if refused (other replicas on this
        state_dir): the running watcher goes on unchanged, or, if the lock was lost in
        that instant, is stopped."""
        if current.spec.instance.ha.enabled == instance.ha.enabled:
            return True
        try:
            self._locks.change_mode(instance.id, replica=instance.ha.enabled)
            return True
        except ConfigError as exc:
            if instance.id in self._locks.held:
                log.error("roster reload: %s; instance %s goes on as a replica (reload again "
                          "once they have stopped)", exc, instance.id,
                          extra={"instance_id": instance.id})
                return False
            log.error("roster reload: %s; instance %s stopped", exc, instance.id,
                      extra={"instance_id": instance.id})
            stop_children([current], self.roster.supervisor.stop_timeout_seconds, self._clock)
            del self._children[instance.id]
            return False

    def _wanted_ids(self) -> set[str]:
        return {instance.id for instance in self.roster.instances}

    # -- shutdown with a deadline --------------------------------------------------------------

    def _shutdown(self) -> None:
        stop_children(list(self._children.values()),
                      self.roster.supervisor.stop_timeout_seconds, self._clock)

    # -- resources -------------------------------------------------------------------------------

    def _sample_resources(self, *, count_files: bool) -> None:
        """Measure everyone, then restart a RUNNING child above its memory_limit."""
        try:
            self._usage.sample(self._children.values(), count_files=count_files)
        except Exception:  # noqa: BLE001 - logged: psutil failing: supervise unmeasured
            self._log_error("resources", "resource sampling failed; figures are stale",
                            exc_info=True)
            return
        now = self._clock()  # (after the sampling, which takes a while with many children)
        for child in self._children.values():
            limit = child.spec.instance.memory_limit
            usage = self._usage.of(child.pid)
            rss = usage["rss_bytes"] if usage is not None else 0
            if limit and rss > limit and child.state is State.RUNNING:
                child.restart(f"memory limit exceeded: RSS {rss} bytes > memory_limit "
                              f"{limit} bytes", now)


def child_spec(roster: Roster, instance: InstanceConfig) -> ChildSpec:
    """What a watcher of `instance` is started with, under `roster`."""
    return ChildSpec(
        instance=instance,
        broker=roster.broker,
        state_dir=roster.state_dir,
        log_level=roster.log_level,
        log_format=roster.log_format,
        roster=roster.source,
        stop_timeout_seconds=roster.supervisor.stop_timeout_seconds,
        parent_pid=os.getpid(),
        max_parallel_hashes=roster.supervisor.max_parallel_hashes,
        hang_timeout_seconds=roster.supervisor.hang_timeout_seconds,
    )


def _exiting(child: Child) -> bool:
    """Its pipe is closed (it closes only when the process exits) but it is not reaped yet."""
    return child.reader is None and child.process is not None


def _set_title(title: str) -> str:
    """Show `title` in ps and top; returns the previous one (a test runs us in-process)."""
    import setproctitle

    previous = setproctitle.getproctitle()
    setproctitle.setproctitle(title)
    return previous


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
