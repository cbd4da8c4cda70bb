"""The status page and the supervisor's view behind it: what a person looks for first."""

from __future__ import annotations

import multiprocessing
import re
from pathlib import Path
from typing import Any

from multiwatch.config import BrokerConfig, InstanceConfig, SupervisorConfig
from multiwatch.supervisor.dashboard import render_page
from multiwatch.supervisor.lifecycle import Child, State
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.snapshot import activity_snapshot
from multiwatch.watcher.spec import ChildSpec
from tests.supervisor.fakes import ReportPipe
from tests.support.fleet_view import fleet, get, heartbeat, instance, serve
from tests.watcher.test_pipeline import make_pipeline, settle_all


class _Alive:
    """A watcher process that is running."""

    pid = 4242

    def is_alive(self) -> bool:
        return True


def _running_child(started_at: float) -> Child:
    spec = ChildSpec(instance=InstanceConfig(id="music", directory="/data/music"),
                     broker=BrokerConfig(), state_dir="/tmp/state", log_level="INFO",
                     stop_timeout_seconds=8, parent_pid=1)
    child = Child(spec, SupervisorConfig(), multiprocessing.get_context("spawn"))
    child.state, child.started_at = State.RUNNING, started_at
    child.process = _Alive()  # type: ignore[assignment]
    return child


def _hear(child: Child, now: float, **events: int) -> None:
    child.reader = ReportPipe([("heartbeat", heartbeat(events=events))])  # type: ignore[assignment]
    child.receive(now)


def test_events_per_minute_is_known_from_the_first_heartbeat() -> None:
    """A watcher that announced 30 files in its first 30 s shows 60/min at once, not "30 total"."""
    child = _running_child(started_at=1000.0)
    _hear(child, 1030.0, file_discovered=30)
    entry = child.view(1030.0)
    assert entry["events_per_minute"] == 60.0
    page = render_page(fleet({"music": entry}))
    assert re.search(r">60\.0<", page) and "total" not in page


def test_events_per_minute_falls_to_zero_when_a_watcher_goes_quiet() -> None:
    """No event for over a minute: the rate shows 0, not the last busy minute."""
    child = _running_child(started_at=1000.0)
    _hear(child, 1030.0, file_discovered=30)
    _hear(child, 1100.0, file_discovered=30)
    assert child.view(1150.0)["events_per_minute"] == 0.0


def test_events_per_minute_spans_the_last_minute_of_heartbeats() -> None:
    """The rate covers the last minute of heartbeats, whatever the number of page loads."""
    child = _running_child(started_at=0.0)
    _hear(child, 100.0, file_discovered=1000)
    _hear(child, 170.0, file_discovered=1000)
    _hear(child, 200.0, file_discovered=1000)
    _hear(child, 230.0, file_discovered=1060)
    assert child.view(230.0)["events_per_minute"] == 60.0  # 60 events since 170 s, a minute ago


def test_the_heartbeat_tells_files_tracked_and_the_last_event(tmp_path: Path) -> None:
    """The watcher's snapshot says how many files it tracks and what it announced last, when."""
    pipeline, _, root = make_pipeline(tmp_path)
    assert activity_snapshot(pipeline) == {"files_tracked": 0, "last_event": None}
    (root / "a.txt").write_bytes(b"a")
    (root / "b.txt").write_bytes(b"b")
    for name in ("a.txt", "b.txt"):
        pipeline.notifications.put(RawEvent(EventKind.CREATED, False, name))
        settle_all(pipeline)
    snapshot = activity_snapshot(pipeline)
    assert snapshot["files_tracked"] == 2
    last = snapshot["last_event"]
    assert last is not None
    assert last["event_type"] == "file_discovered" and last["path"] == str(root / "b.txt")
    assert isinstance(last["at"], float) and last["at"] > 1.7e9  # wall clock, for people


def _full_view() -> dict[str, Any]:
    beat = heartbeat(files_tracked=1234, last_event={
        "event_type": "file_modified", "path": "/data/music/a <b>.flac", "at": 1_700_000_000.0})
    view = fleet({"music": instance(heartbeat=beat, events_per_minute=12.0)})
    view["supervisor"]["broker"] = "amqp://watcher:****@rabbit:5672/%2F"
    view["supervisor"]["role"] = "active"
    return view


def test_the_page_shows_what_a_person_looks_for() -> None:
    """The page names the directory, files tracked, last event and when, events per type,
    the masked broker, the role, and links to /metrics, /status and /healthz."""
    with serve(_full_view()) as (server, _):
        status, _, body = get(f"{server.url}/")
    page = body.decode()
    assert status == 200
    for text in ("/data/music", "1234", "modified", "a &lt;b&gt;.flac", "2023-11-14 22:13:20",
                 "discovered 7", "modified 2", "deleted 1", "12.0",
                 "amqp://watcher:****@rabbit:5672/%2F", "active"):
        assert text in page, text
    for link in ("/metrics", "/status", "/healthz"):
        assert f'href="{link}"' in page, link
    assert "<b>" not in page
