"""/metrics content: every number an operator graphs, the README table, the Grafana dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from multiwatch.supervisor.metrics import metric_names, metrics_registry, render_metrics
from tests.support.fleet_view import fleet, heartbeat, instance

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "multiwatch-dashboard.json"


def scrape(view: dict[str, Any]) -> list[Sample]:
    """Every sample /metrics would expose for `view`, parsed back by prometheus-client."""
    text = render_metrics(metrics_registry(lambda: view)).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    matches = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples"
    return matches[0]


def exposed_names(samples: list[Sample]) -> set[str]:
    """Sample names, with histogram series folded into their base name."""
    return {re.sub(r"_(bucket|sum|count)$", "", s.name)
            if s.name.startswith("multiwatch_event_latency_seconds") else s.name
            for s in samples}


def test_event_counters_equal_the_heartbeat_counts() -> None:
    """files_*_total per instance are the event counts its heartbeat reported."""
    events = {"file_discovered": 11, "file_modified": 5, "file_deleted": 3, "file_moved": 2}
    samples = scrape(fleet({"music": instance(heartbeat=heartbeat(events=events)),
                            "books": instance()}))
    for event, count in events.items():
        name = f"multiwatch_{event.replace('file_', 'files_')}_total"
        assert value(samples, name, instance_id="music") == count
    assert value(samples, "multiwatch_files_discovered_total", instance_id="books") == 7


def test_event_types_not_seen_yet_count_zero() -> None:
    """A type the watcher has not announced yet is 0, so its series exists for rate()."""
    samples = scrape(fleet({"a": instance(heartbeat=heartbeat(events={"file_discovered": 1}))}))
    assert value(samples, "multiwatch_files_moved_total", instance_id="a") == 0
    assert value(samples, "multiwatch_files_discovered_total", instance_id="a") == 1


def test_heartbeat_and_resource_numbers_reach_their_metrics() -> None:
    """Outbox, broker link, failures, hashing and psutil figures appear under their names."""
    beat = heartbeat(outbox_depth=250, outbox_bytes=99_000, outbox_full=True,
                     broker_connected=False, publish_failures=4, errors=6, published=70,
                     bytes_hashed=1 << 30, files_hashed=12, files_waiting=8)
    samples = scrape(fleet({"a": instance(restarts=3, heartbeat=beat)}))
    expected = {
        "multiwatch_outbox_depth": 250, "multiwatch_outbox_bytes": 99_000,
        "multiwatch_outbox_full": 1, "multiwatch_broker_connected": 0,
        "multiwatch_publish_failures_total": 4, "multiwatch_errors_total": 6,
        "multiwatch_events_published_total": 70, "multiwatch_bytes_hashed_total": 1 << 30,
        "multiwatch_files_hashed_total": 12, "multiwatch_files_waiting": 8,
        "multiwatch_restarts_total": 3, "multiwatch_child_cpu_percent": 1.5,
        "multiwatch_child_rss_bytes": 40 * 1048576, "multiwatch_child_open_files": 5,
        "multiwatch_child_threads": 4, "multiwatch_child_read_bytes_total": 8192,
        "multiwatch_instance_uptime_seconds": 125, "multiwatch_heartbeat_age_seconds": 0.4,
    }
    for name, number in expected.items():
        assert value(samples, name, instance_id="a") == number, name
    assert value(samples, "multiwatch_supervisor_cpu_percent") == 0.5
    assert value(samples, "multiwatch_supervisor_loop_age_seconds") == 0.2


def test_latency_is_a_histogram_from_the_heartbeat_buckets() -> None:
    """The latency buckets become cumulative le buckets ending in +Inf, with sum and count."""
    latency = {"buckets": [0.1, 1.0, 5.0], "counts": [1, 4, 6], "sum": 9.5, "count": 7}
    samples = scrape(fleet({"a": instance(heartbeat=heartbeat(latency=latency))}))
    buckets = {s.labels["le"]: s.value for s in samples
               if s.name == "multiwatch_event_latency_seconds_bucket"}
    assert buckets == {"0.1": 1, "1.0": 4, "5.0": 6, "+Inf": 7}
    assert value(samples, "multiwatch_event_latency_seconds_sum", instance_id="a") == 9.5
    assert value(samples, "multiwatch_event_latency_seconds_count", instance_id="a") == 7


def test_state_is_one_hot_and_up_means_running() -> None:
    """instance_state is 1 for the current state only; instance_up is 1 only when RUNNING."""
    samples = scrape(fleet({"run": instance(), "crash": instance("BACKOFF")}))
    assert value(samples, "multiwatch_instance_up", instance_id="run") == 1
    assert value(samples, "multiwatch_instance_up", instance_id="crash") == 0
    states = {s.labels["state"]: s.value for s in samples
              if s.name == "multiwatch_instance_state" and s.labels["instance_id"] == "crash"}
    assert states["BACKOFF"] == 1 and sum(states.values()) == 1
    assert set(states) >= {"STARTING", "RUNNING", "WAITING", "BACKOFF", "FATAL", "STOPPED"}


def test_missing_figures_give_no_samples_rather_than_zeros() -> None:
    """Before its first heartbeat an instance shows state and restarts, but no invented counts."""
    samples = scrape(fleet({"new": instance("STARTING", heartbeat={}, resources=None,
                                            uptime_seconds=None)}))
    names = {s.name for s in samples if s.labels.get("instance_id") == "new"}
    # (the role is known from the roster: a replica is standby until it reports otherwise)
    assert names == {"multiwatch_instance_up", "multiwatch_instance_state",
                     "multiwatch_instance_role", "multiwatch_restarts_total",
                     "multiwatch_heartbeat_age_seconds"}


@pytest.mark.parametrize("broken", [
    {"instances": {"a": "not a mapping"}},
    {"instances": {"a": instance(heartbeat=heartbeat(
        outbox_depth="lots", events=None, latency={"buckets": [1], "counts": [1, 2]}))}},
    {"supervisor": None, "instances": None},
    {},
])
def test_odd_views_never_break_the_scrape(broken: dict[str, Any]) -> None:
    """Malformed or partial views still render parseable metrics (bad values are skipped)."""
    samples = scrape(broken)
    assert all(s.name.startswith("multiwatch_") for s in samples)


def test_metrics_stay_off_the_global_registry() -> None:
    """The collector lives on a private registry, so the library's globals are untouched."""
    metrics_registry(lambda: fleet({"a": instance()}))
    assert not [name for name in REGISTRY._names_to_collectors if name.startswith("multiwatch")]


def test_every_metric_is_documented_in_the_readme() -> None:
    """The README metrics table lists exactly the metrics /metrics exposes."""
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(multiwatch_[a-z_]+)`", readme, flags=re.MULTILINE))
    assert documented == set(metric_names())
    assert exposed_names(scrape(fleet({"a": instance()}))) == set(metric_names())


# ---------------------------------------------------------------- Grafana


def _queries(node: Any, key: str = "") -> list[str]:
    """Every PromQL string in the dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        return [q for k, v in node.items() for q in _queries(v, k)]
    if isinstance(node, list):
        return [q for item in node for q in _queries(item, key)]
    return [node] if isinstance(node, str) and key in ("expr", "query", "definition") else []


def test_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    """Every multiwatch_* metric the dashboard queries is in /metrics output."""
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for query in _queries(dashboard)
               for name in re.findall(r"multiwatch_[a-z_]+", query)}
    samples = {s.name for s in scrape(fleet({"a": instance()}))}
    assert len(queried) >= 10
    assert queried - samples == set()


def test_grafana_dashboard_is_importable() -> None:
    """The dashboard is Grafana JSON: panels with ids, positions, queries; an instance_id filter."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["targets"]
        assert all(t["expr"] and t["refId"] for t in panel["targets"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["instance_id"]["multi"] and variables["datasource"]["query"] == "prometheus"
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in ("files", "latency", "outbox", "broker", "restarts", "cpu", "rss"):
        assert topic in titles, topic
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    assert '$instance_id' in exprs


def test_a_held_unroutable_event_shows_in_its_metrics() -> None:
    """An instance whose head event is unroutable exposes publish_held 1 and the counts."""
    beat = heartbeat(events_unroutable=5, events_nacked=1, publish_held=True,
                     problem="publishing held: event x is unroutable")
    samples = scrape(fleet({"a": instance(heartbeat=beat)}))
    assert value(samples, "multiwatch_publish_held", instance_id="a") == 1.0
    assert value(samples, "multiwatch_events_unroutable_total", instance_id="a") == 5.0
    assert value(samples, "multiwatch_events_nacked_total", instance_id="a") == 1.0
