"""Prometheus metrics over the supervisor's fleet view: what `/metrics` serves.

A custom collector reads one fresh `fleet_view()` per scrape and turns it into metric
families labelled by `instance_id`; nothing is kept between scrapes, so an instance removed
from the roster disappears from the next scrape. A value the view lacks (no heartbeat yet,
no resource sample) produces no sample rather than a made-up zero. Counters come from the
child and restart from 0 when it restarts; Prometheus' rate() and increase() handle resets.
The README's metrics table documents every name here (a test keeps them in step).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from multiwatch.status_view import ViewSource, dig, mapping, number
from multiwatch.supervisor.lifecycle import State

STATES = tuple(State)  # every lifecycle state gets a series, 0 or 1
LATENCY_METRIC = "multiwatch_event_latency_seconds"
WINDOW_METRIC = "multiwatch_activity_window_events"
ROLE_METRIC = "multiwatch_instance_role"
ROLES = ("active", "standby")


@dataclass(frozen=True)
class Spec:
    """One plain metric: its exposed name, type, help text and where its value is in the view."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    path: tuple[str, ...]  # keys into an instance entry (or into "supervisor")
    # The watcher only lists event types it has seen: with the events mapping present, a
    # missing type is 0, so the series exists before its first event and rate() sees it.
    zero_if_unlisted: bool = False


def _hb(*keys: str) -> tuple[str, ...]:
    return ("heartbeat", *keys)


def _event(kind: str, text: str) -> Spec:
    return Spec(f"multiwatch_files_{kind}_total", "counter", text,
                _hb("events", f"file_{kind}"), zero_if_unlisted=True)


INSTANCE_METRICS: tuple[Spec, ...] = (
    _event("discovered", "file_discovered events announced (new files)."),
    _event("modified", "file_modified events announced (changed content)."),
    _event("deleted", "file_deleted events announced."),
    _event("moved", "file_moved events announced (renames within the tree)."),
    Spec("multiwatch_events_published_total", "counter",
         "Events the broker confirmed (and that left the outbox).", _hb("published")),
    Spec("multiwatch_publish_failures_total", "counter",
         "Publish attempts that failed (broker down, nack, confirm timeout); the events "
         "stay in the outbox and are retried.", _hb("publish_failures")),
    Spec("multiwatch_events_unroutable_total", "counter",
         "Publishes the broker returned as unroutable (no queue bound for the routing key); "
         "the event is held at the head of the outbox and retried.", _hb("events_unroutable")),
    Spec("multiwatch_events_nacked_total", "counter",
         "Publishes the broker rejected (nack); the event is held and retried.",
         _hb("events_nacked")),
    Spec("multiwatch_publish_held", "gauge",
         "1 while an unroutable or rejected event holds up the outbox, else 0.",
         _hb("publish_held")),
    Spec("multiwatch_deletions_held", "gauge",
         "Deletions a scan found but held instead of announcing (above max_scan_deletions: "
         "an unmounted share?); `multiwatch deletions ID` releases or re-checks them.",
         _hb("deletions_held")),
    Spec("multiwatch_errors_total", "counter",
         "Warnings and errors the watcher met (counted at every log_level, printed or not).",
         _hb("errors")),
    Spec("multiwatch_bytes_hashed_total", "counter",
         "Bytes read to hash files.", _hb("bytes_hashed")),
    Spec("multiwatch_files_hashed_total", "counter",
         "Files read and hashed.", _hb("files_hashed")),
    Spec("multiwatch_outbox_depth", "gauge",
         "Events waiting in the outbox for a broker confirm.", _hb("outbox_depth")),
    Spec("multiwatch_outbox_bytes", "gauge",
         "Size of the message bodies waiting in the outbox.", _hb("outbox_bytes")),
    Spec("multiwatch_outbox_full", "gauge",
         "1 while the outbox is at its bound (settled files wait, nothing is dropped).",
         _hb("outbox_full")),
    Spec("multiwatch_files_waiting", "gauge",
         "Files noticed but not yet settled and hashed.", _hb("files_waiting")),
    Spec("multiwatch_broker_connected", "gauge",
         "1 while the watcher's broker connection is up, 0 while it is down.",
         _hb("broker_connected")),
    Spec("multiwatch_instance_unmounted", "gauge",
         "1 while the filesystem under the instance's directory is gone (unmounted share): "
         "it waits, announcing nothing, and reconciles once it is back.", _hb("unmounted")),
    Spec("multiwatch_unusual_activity", "gauge",
         "1 while deletions, modifications and renames within the window are above the "
         "instance's unusual_activity threshold, else 0 (announcing goes on).",
         _hb("unusual_activity", "active")),
    Spec("multiwatch_restarts_total", "counter",
         "Times the supervisor restarted this instance's watcher.", ("restarts",)),
    Spec("multiwatch_instance_uptime_seconds", "gauge",
         "Seconds since the current watcher process started.", ("uptime_seconds",)),
    Spec("multiwatch_heartbeat_age_seconds", "gauge",
         "Seconds since the watcher's work loop last reported.", ("heartbeat_age_seconds",)),
    Spec("multiwatch_child_cpu_percent", "gauge",
         "CPU use of the watcher process, percent of one core.",
         ("resources", "cpu_percent")),
    Spec("multiwatch_child_rss_bytes", "gauge",
         "Resident memory of the watcher process.", ("resources", "rss_bytes")),
    Spec("multiwatch_child_open_files", "gauge",
         "Files the watcher process has open (counted every 30 s).",
         ("resources", "open_files")),
    Spec("multiwatch_child_threads", "gauge",
         "Threads of the watcher process.", ("resources", "threads")),
    Spec("multiwatch_child_read_bytes_total", "counter",
         "Bytes the watcher process read from storage (Linux I/O accounting).",
         ("resources", "read_bytes")),
)

SUPERVISOR_METRICS: tuple[Spec, ...] = (
    Spec("multiwatch_supervisor_cpu_percent", "gauge",
         "CPU use of the supervisor process, percent of one core.",
         ("resources", "cpu_percent")),
    Spec("multiwatch_supervisor_rss_bytes", "gauge",
         "Resident memory of the supervisor process.", ("resources", "rss_bytes")),
    Spec("multiwatch_supervisor_open_files", "gauge",
         "Files the supervisor process has open (counted every 30 s).",
         ("resources", "open_files")),
    Spec("multiwatch_supervisor_threads", "gauge",
         "Threads of the supervisor process.", ("resources", "threads")),
    Spec("multiwatch_supervisor_uptime_seconds", "gauge",
         "Seconds since the supervisor started.", ("uptime_seconds",)),
    Spec("multiwatch_supervisor_loop_age_seconds", "gauge",
         "Seconds since the supervisor loop last turned (/healthz fails at 10).",
         ("loop_age_seconds",)),
)

SPECIAL_METRICS: dict[str, str] = {
    "multiwatch_instance_up": "1 while the instance's watcher is RUNNING, else 0.",
    "multiwatch_instance_state": "1 for the instance's current state (label state), "
                                 "0 for the others.",
    ROLE_METRIC: "1 for the instance's role (label role: active announces, standby waits for "
                 "the lease; roster ha), 0 for the other.",
    LATENCY_METRIC: "Seconds from the first notification of a file change to the broker's "
                    "confirm of its event.",
    WINDOW_METRIC: "Events of each kind (label kind: deleted, modified, moved) announced "
                   "within the unusual_activity window.",
}


def metric_names() -> list[str]:
    """Every metric family name this module exposes (as Prometheus shows it, with _total)."""
    specs = (*INSTANCE_METRICS, *SUPERVISOR_METRICS)
    return sorted([s.name for s in specs] + list(SPECIAL_METRICS))


class FleetCollector(Collector):
    """Reads `fleet_view()` at every scrape; register it on a private CollectorRegistry."""

    def __init__(self, fleet_view: ViewSource) -> None:
        self._fleet_view = fleet_view

    def collect(self) -> Iterator[Metric]:
        yield from fleet_metrics(self._fleet_view())


def metrics_registry(fleet_view: ViewSource) -> CollectorRegistry:
    """A private registry holding only the fleet collector (no process/platform defaults)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet_view))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of `registry`."""
    return generate_latest(registry)


def fleet_metrics(view: Mapping[str, Any]) -> list[Metric]:
    """The metric families for one fleet view."""
    instances = mapping(view.get("instances"))
    supervisor = mapping(view.get("supervisor"))
    families: list[Metric] = []
    for spec in INSTANCE_METRICS:
        family = _family(spec, ["instance_id"])
        for ident, entry in sorted(instances.items()):
            value = _number(dig(entry, spec.path))
            if value is None and spec.zero_if_unlisted:
                value = 0.0 if isinstance(dig(entry, spec.path[:-1]), Mapping) else None
            if value is not None:
                family.add_metric([str(ident)], value)
        families.append(family)
    for spec in SUPERVISOR_METRICS:
        family = _family(spec, [])
        value = _number(dig(supervisor, spec.path))
        if value is not None:
            family.add_metric([], value)
        families.append(family)
    families.extend(_state_families(instances))
    families.append(_role_family(instances))
    families.append(_latency_family(instances))
    families.append(_window_family(instances))
    return families


def _family(spec: Spec, labels: list[str]) -> CounterMetricFamily | GaugeMetricFamily:
    if spec.kind == "counter":  # the family drops "_total"; the sample keeps it
        return CounterMetricFamily(spec.name, spec.help, labels=labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=labels)


def _state_families(instances: Mapping[str, Any]) -> list[Metric]:
    up = GaugeMetricFamily("multiwatch_instance_up", SPECIAL_METRICS["multiwatch_instance_up"],
                           labels=["instance_id"])
    state = GaugeMetricFamily("multiwatch_instance_state",
                              SPECIAL_METRICS["multiwatch_instance_state"],
                              labels=["instance_id", "state"])
    for ident, entry in sorted(instances.items()):
        current = str(mapping(entry).get("state", ""))
        up.add_metric([str(ident)], 1.0 if current == "RUNNING" else 0.0)
        known = STATES if current in STATES or not current else (*STATES, current)
        for name in known:
            state.add_metric([str(ident), name], 1.0 if name == current else 0.0)
    return [up, state]


def _role_family(instances: Mapping[str, Any]) -> GaugeMetricFamily:
    """Like multiwatch_instance_state: a series per role, 1 for the current one."""
    role = GaugeMetricFamily(ROLE_METRIC, SPECIAL_METRICS[ROLE_METRIC],
                             labels=["instance_id", "role"])
    for ident, entry in sorted(instances.items()):
        current = mapping(entry).get("role")
        if current in ROLES:
            for name in ROLES:
                role.add_metric([str(ident), name], 1.0 if name == current else 0.0)
    return role


def _latency_family(instances: Mapping[str, Any]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(LATENCY_METRIC, SPECIAL_METRICS[LATENCY_METRIC],
                                   labels=["instance_id"])
    for ident, entry in sorted(instances.items()):
        histogram = _histogram(dig(entry, ("heartbeat", "latency")))
        if histogram is not None:
            buckets, total = histogram
            family.add_metric([str(ident)], buckets, total)
    return family


def _window_family(instances: Mapping[str, Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(WINDOW_METRIC, SPECIAL_METRICS[WINDOW_METRIC],
                               labels=["instance_id", "kind"])
    for ident, entry in sorted(instances.items()):
        counts = mapping(dig(entry, ("heartbeat", "unusual_activity", "events")))
        for kind, count in sorted(counts.items()):
            if (value := _number(count)) is not None:
                family.add_metric([str(ident), str(kind)], value)
    return family


def _histogram(raw: Any) -> tuple[list[tuple[str, float]], float] | None:
    """(le, cumulative count) pairs ending in +Inf, and the sum; None if `raw` is malformed."""
    latency = mapping(raw)
    bounds, counts = latency.get("buckets"), latency.get("counts")
    total, count = _number(latency.get("sum")), _number(latency.get("count"))
    if not isinstance(bounds, list) or not isinstance(counts, list) or len(bounds) != len(counts):
        return None
    numeric = all(isinstance(b, (int, float)) and not math.isnan(b) for b in bounds)
    if total is None or count is None or not numeric or None in map(_number, counts):
        return None
    uppers = [float(b) for b in bounds]
    cumulative = [float(c) for c in counts]
    if uppers != sorted(uppers) or cumulative != sorted(cumulative):
        return None
    if cumulative and cumulative[-1] > count:
        return None
    pairs = [(floatToGoString(b), c) for b, c in zip(uppers, cumulative, strict=True)]
    if not uppers or not math.isinf(uppers[-1]):
        pairs.append(("+Inf", count))
    return pairs, total


def _number(value: object) -> float | None:
    """A finite number, a flag as 0/1; None for anything else (no sample)."""
    return number(value, bool_as_number=True)
