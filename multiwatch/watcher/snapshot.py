"""What a watcher's heartbeat says (status_view.Heartbeat), read from its parts on the main
thread: the pipeline, the publisher's figures, the outbox gauge, the mounts, the observer.
"""

from __future__ import annotations

from watchdog.observers.api import BaseObserver

from multiwatch.status_view import Heartbeat
from multiwatch.watcher.mount import MountGuard
from multiwatch.watcher.observe import observer_mode
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.pipeline import Pipeline
from multiwatch.watcher.publisher import Publisher
from multiwatch.watcher.stats import ProblemCounter


def activity_summary(pipeline: Pipeline, publisher: Publisher, gauge: OutboxGauge,
              problems: ProblemCounter) -> object:
    """A cheap summary of what a snapshot reports: when it changes, the next heartbeat is
    due after HEARTBEAT_SECONDS instead of IDLE_HEARTBEAT_SECONDS."""
    stats = publisher.stats
    return (sum(pipeline.counts.values()), pipeline.files_hashed, pipeline.files_waiting,
            gauge.depth, gauge.full, problems.count, stats.connected, stats.published,
            stats.failures, stats.unroutable, stats.nacked, stats.problem, publisher.role.role)


def heartbeat_snapshot(pipeline: Pipeline, publisher: Publisher, gauge: OutboxGauge,
              problems: ProblemCounter, mounts: MountGuard,
              observer: BaseObserver | None) -> Heartbeat:
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
        "events_unroutable": publisher.stats.unroutable,
        "events_nacked": publisher.stats.nacked,
        "publish_held": bool(publisher.stats.held),
        "problem": publisher.stats.problem,
        "deletions_held": pipeline.deletions.held,  # found gone by a scan, not announced
        # Checked here too, so the signal ends within a heartbeat of the window emptying.
        "unusual_activity": pipeline.unusual_activity.snapshot(),
        "unmounted": mounts.any_unmounted,
        "observer": observer_mode(observer),  # "polling (inotify limit)": the kernel refused
        "role": publisher.role.role.value,  # active | standby (replicas: watcher/lease.py)
        **activity_snapshot(pipeline),
    }


def activity_snapshot(pipeline: Pipeline) -> Heartbeat:
    """What a person asks first: how many files are tracked, what was announced last, when
    (wall-clock seconds)."""
    return {"files_tracked": len(pipeline.tracked), "last_event": pipeline.last_event}
