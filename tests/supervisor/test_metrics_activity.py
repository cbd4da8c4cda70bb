"""/metrics for unusual activity: the 0/1 flag and the window's events by kind."""

from __future__ import annotations

from tests.supervisor.test_metrics import scrape, value
from tests.support.fleet_view import fleet, heartbeat, instance


def _unusual(active: bool, **events: int) -> dict[str, object]:
    return {"enabled": True, "active": active, "since": 1.7e9 if active else None,
            "window_seconds": 300.0, "events": events, "files_tracked": 200,
            "percent": 100.0 if active else 0.0, "threshold_percent": 20.0, "min_events": 100}


def test_the_flag_is_one_only_while_an_instance_is_above_its_threshold() -> None:
    """multiwatch_unusual_activity is 1 for the instance renaming its tree, 0 for the other."""
    samples = scrape(fleet({
        "music": instance(heartbeat=heartbeat(unusual_activity=_unusual(True, moved=200))),
        "books": instance(heartbeat=heartbeat(unusual_activity=_unusual(False, moved=3))),
    }))
    assert value(samples, "multiwatch_unusual_activity", instance_id="music") == 1
    assert value(samples, "multiwatch_unusual_activity", instance_id="books") == 0


def test_window_events_carry_one_series_per_kind() -> None:
    """multiwatch_activity_window_events has a kind label for deleted, modified and moved."""
    beat = heartbeat(unusual_activity=_unusual(True, deleted=12, modified=9000, moved=8800))
    samples = scrape(fleet({"music": instance(heartbeat=beat)}))
    by_kind = {kind: value(samples, "multiwatch_activity_window_events", instance_id="music",
                           kind=kind) for kind in ("deleted", "modified", "moved")}
    assert by_kind == {"deleted": 12, "modified": 9000, "moved": 8800}


def test_an_instance_with_the_signal_off_reads_zero_without_counts() -> None:
    """unusual_activity: off gives the flag 0 and no window series (nothing is counted)."""
    beat = heartbeat(unusual_activity={"enabled": False, "active": False})
    samples = scrape(fleet({"music": instance(heartbeat=beat)}))
    assert value(samples, "multiwatch_unusual_activity", instance_id="music") == 0
    assert not [s for s in samples if s.name == "multiwatch_activity_window_events"]
