"""The page and `multiwatch status` flag an instance whose activity is unusual."""

from __future__ import annotations

from multiwatch.cli.status import render_status
from multiwatch.supervisor.dashboard import render_page
from tests.support.fleet_view import fleet, heartbeat, instance

FLAG = "unusual activity: 200 moved within 5m00s, 100% of 200 tracked files"


def _view(active: bool) -> dict[str, object]:
    unusual = {"enabled": True, "active": active, "since": 1.7e9, "window_seconds": 300.0,
               "events": {"deleted": 0, "modified": 0, "moved": 200}, "files_tracked": 200,
               "percent": 100.0, "threshold_percent": 20.0, "min_events": 100}
    return fleet({"music": instance(heartbeat=heartbeat(unusual_activity=unusual))})


def test_the_page_flags_unusual_activity_with_its_figures() -> None:
    """The instance's note cell says, in red, what passed the threshold."""
    page = render_page(_view(True), wall_now=1.7e9)
    assert f'<span class="bad">{FLAG}</span>' in page


def test_the_status_table_flags_unusual_activity() -> None:
    """The instance's row of `multiwatch status` ends with the flag and figures."""
    [row] = [line for line in render_status(_view(True), now=1.7e9).splitlines()
             if line.startswith("music ")]
    assert row.endswith(FLAG)


def test_no_flag_while_activity_is_usual() -> None:
    """Below the threshold neither the page nor the table mention unusual activity."""
    assert "unusual" not in render_page(_view(False), wall_now=1.7e9)
    assert "unusual" not in render_status(_view(False), now=1.7e9)
