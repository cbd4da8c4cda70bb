"""The page and `multiwatch status` say how many deletions an instance holds."""

from __future__ import annotations

from multiwatch.cli.status import render_status
from multiwatch.supervisor.dashboard import render_page
from tests.support.fleet_view import fleet, heartbeat, instance


def _view(held: int) -> dict[str, object]:
    return fleet({"music": instance(heartbeat=heartbeat(deletions_held=held))})


def test_the_page_flags_held_deletions() -> None:
    """The RUNNING instance's note cell says, in red, how many deletions wait."""
    page = render_page(_view(1000), wall_now=1.7e9)
    assert '<span class="bad">1000 deletions held</span>' in page


def test_the_status_table_flags_held_deletions() -> None:
    """The instance's row of `multiwatch status` ends with the count (one: singular)."""
    [row] = [line for line in render_status(_view(1), now=1.7e9).splitlines()
             if line.startswith("music ")]
    assert row.endswith("1 deletion held")


def test_nothing_said_when_none_are_held() -> None:
    """With no deletions held neither the page nor the table mention them."""
    assert "held" not in render_page(_view(0), wall_now=1.7e9)
    assert "deletions held" not in render_status(_view(0), now=1.7e9)
