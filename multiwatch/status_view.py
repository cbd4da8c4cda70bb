"""The status contract: what a watcher's heartbeat carries and what the fleet view holds.

One typed definition of each shape that crosses a boundary:

- `Heartbeat`: watcher main loop → supervisor, over the child's pipe (watcher/main.py fills
  it; supervisor/lifecycle.py keeps the latest per child);
- `ChildView`, `SupervisorView`, `FleetView`: supervisor loop → HTTP threads (/status,
  /metrics, the page) → `multiwatch status` over HTTP (supervisor/fleet.py builds them).

They are TypedDicts rather than dataclasses because they travel as JSON (/status) and are
read by a `multiwatch status` of another version during an upgrade: readers never trust a
view's shape, and read it through the tolerant helpers at the bottom (`mapping`, `number`,
`dig`), which turn anything unexpected into "no value" instead of an exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NotRequired, TypedDict


class LatencySnapshot(TypedDict):
    """A cumulative histogram of first notification → broker confirm, in seconds."""

    buckets: list[float]  # upper bounds, ascending, without +Inf
    counts: list[int]  # cumulative count at each bound
    sum: float
    count: int  # every observation, +Inf included


class UnusualActivitySnapshot(TypedDict, total=False):
    """Deletions, modifications and renames within the rolling window (only `enabled` and
    `active` when the instance has no unusual_activity threshold)."""

    enabled: bool
    active: bool
    since: float | None  # wall-clock start of the current signal
    window_seconds: float
    events: dict[str, int]  # kind (deleted, modified, moved) → events in the window
    files_tracked: int  # the base the percentage is of
    percent: float
    threshold_percent: float
    min_events: int


class LastEvent(TypedDict):
    """The latest event stored in the outbox."""

    event_type: str
    path: str
    at: float  # wall-clock seconds


class Heartbeat(TypedDict, total=False):
    """A watcher's status, sent with a heartbeat when it changed (and every
    FULL_EVERY_BEATS-th beat); a heartbeat with an empty one means "unchanged"
    (watcher/parent_link.py).  Empty until the first one arrives."""

    events: dict[str, int]  # event type → events announced since the process started
    bytes_hashed: int
    files_hashed: int
    files_waiting: int  # noticed, not yet settled and hashed
    files_tracked: int  # the files the state database knows (announced and current)
    last_event: LastEvent | None
    outbox_depth: int
    outbox_bytes: int
    outbox_full: bool
    errors: int  # warnings and errors logged, at every log_level
    latency: LatencySnapshot
    broker_connected: bool
    published: int
    publish_failures: int
    last_error: str
    events_unroutable: int
    events_nacked: int
    publish_held: bool  # an unroutable or nacked event holds the outbox
    problem: str  # what keeps events from leaving, "" when nothing does
    deletions_held: int  # found gone by a scan, held back (watcher/deletion_guard.py)
    unusual_activity: UnusualActivitySnapshot
    unmounted: bool  # the directory's (or a sub-mount's) filesystem is gone
    observer: str  # inotify | polling | polling (inotify limit) | none (waiting for a mount)
    role: str  # active | standby: replicas (roster ha) of one instance take turns announcing
    standby_warm: bool  # a standby applying the active replica's events has caught up once
    standby_lag_events: int  # a standby's events waiting to be applied, last measured


class Resources(TypedDict):
    """One psutil sample of a process (supervisor/resources.py)."""

    cpu_percent: float  # percent of one core
    rss_bytes: int
    open_files: int
    threads: int
    read_bytes: int | None


class ChildView(TypedDict):
    """One instance as /status shows it (supervisor/lifecycle.py `Child.view`)."""

    state: str  # a lifecycle.State
    pid: int | None
    restarts: int
    uptime_seconds: float | None
    last_exit: str
    reason: str  # not RUNNING: why; RUNNING: what keeps its events from leaving
    directory: str
    heartbeat_age_seconds: float | None
    heartbeat: Heartbeat
    events_per_minute: float | None
    resources: Resources | None
    memory_limit: int  # bytes, 0: none
    read_rate_limit: int  # bytes/s, 0: none
    nice: int | None  # None: inherited
    ionice: str | None
    role: NotRequired[str]  # active | standby (added by supervisor/fleet.py: child_role)


class SupervisorView(TypedDict, total=False):
    pid: int
    roster: str
    uptime_seconds: float
    loop_age_seconds: float  # added when read: how long since the loop last turned
    resources: Resources | None
    broker: str  # where events go, passwords masked
    role: str  # active | standby | mixed: its instances' roles (fleet_role)


class FleetView(TypedDict, total=False):
    """The whole of /status; empty until the supervisor has converged once."""

    supervisor: SupervisorView
    instances: dict[str, ChildView]


# What the HTTP threads are given: a fresh view per call. Readers accept any mapping, since
# they read it through the helpers below.
ViewSource = Callable[[], Mapping[str, object]]


ACTIVE, STANDBY, MIXED = "active", "standby", "mixed"


def child_role(entry: Mapping[str, Any], *, replicated: bool) -> str:
    """An instance's role: a lone watcher (ha off) is always active; a replica is what its
    running watcher last reported, and standby otherwise (it announces nothing)."""
    if not replicated:
        return ACTIVE
    role = mapping(entry.get("heartbeat")).get("role")
    if entry.get("state") == "RUNNING" and role in (ACTIVE, STANDBY):
        return str(role)
    return STANDBY


def role_label(entry: Mapping[str, Any]) -> str:
    """An instance's role as `multiwatch status` and the page show it: a standby that keeps
    its state warm from the active replica's events says whether it has caught up."""
    role = entry.get("role")
    warm = mapping(entry.get("heartbeat")).get("standby_warm")
    if role == STANDBY and isinstance(warm, bool):
        return f"{STANDBY} (warm)" if warm else f"{STANDBY} (catching up)"
    return "" if role is None else str(role)


def fleet_role(entries: Iterable[Mapping[str, Any]]) -> str:
    """A supervisor's role: its instances' one role, or mixed (active with none)."""
    roles = {str(entry.get("role", ACTIVE)) for entry in entries}
    return roles.pop() if len(roles) == 1 else MIXED if roles else ACTIVE


# -- tolerant readers: a view of another version, or a damaged one, never raises ---------------


def mapping(value: object) -> Mapping[str, Any]:
    """`value` if it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def number(value: object, *, bool_as_number: bool = False) -> float | None:
    """A finite number, else None. Booleans are flags, not numbers, unless `bool_as_number`
    (Prometheus exposes a flag as 0/1)."""
    if isinstance(value, bool):
        return float(value) if bool_as_number else None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def dig(entry: object, path: tuple[str, ...]) -> object:
    """The value at `path` (keys into nested mappings), None where a level is missing."""
    for key in path:
        entry = mapping(entry).get(key)
    return entry
