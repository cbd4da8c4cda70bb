"""Replicas' roles as the supervisor shows them (status_view child_role/fleet_role, the
metric, the page, `status`) and the locks replicas share (run_lock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from multiwatch.cli.status import render_status
from multiwatch.status_view import child_role, fleet_role
from multiwatch.supervisor.dashboard import render_page
from multiwatch.supervisor.run_lock import InstanceLocks, RunLockHeld, replica_slot
from tests.supervisor.test_metrics import scrape, value
from tests.support.fleet_view import fleet, heartbeat, instance


def test_a_lone_watcher_is_active_and_a_replica_is_what_it_reports() -> None:
    """ha off: active; a replica: its running watcher's role, else standby (it announces
    nothing before its first heartbeat or while restarting)."""
    active = instance(heartbeat=heartbeat(role="active"))
    assert child_role(instance(heartbeat={}), replicated=False) == "active"
    assert child_role(active, replicated=True) == "active"
    assert child_role(instance(heartbeat={}), replicated=True) == "standby"
    assert child_role(instance("BACKOFF", heartbeat=heartbeat(role="active")),
                      replicated=True) == "standby"


def test_the_supervisor_role_is_its_instances_one_role_or_mixed() -> None:
    """All active: active; all standby: standby; both: mixed."""
    assert fleet_role([{"role": "standby"}, {"role": "standby"}]) == "standby"
    assert fleet_role([{"role": "active"}, {"role": "standby"}]) == "mixed"
    assert fleet_role([]) == "active"


def test_the_role_shows_in_metrics_the_page_and_status() -> None:
    """multiwatch_instance_role is 1 for the current role; the page and `status` print it."""
    view = fleet({"music": instance(role="standby")})
    view["supervisor"]["role"] = "standby"
    samples = scrape(view)
    assert value(samples, "multiwatch_instance_role", instance_id="music", role="standby") == 1
    assert value(samples, "multiwatch_instance_role", instance_id="music", role="active") == 0
    assert "<td>standby</td>" in render_page(view)
    table = render_status(view, now=0.0).splitlines()
    assert "role standby" in table[0]
    assert table[1].index("ROLE") == table[2].index("standby")  # (aligned)


def test_replicas_share_the_run_lock_and_a_lone_supervisor_is_refused(tmp_path: Path) -> None:
    """Two replicas of an instance hold its run.lock together; a supervisor without ha is
    refused beside them and they beside it, each told how to proceed."""
    first, second = InstanceLocks(str(tmp_path), None), InstanceLocks(str(tmp_path), None)
    lone = InstanceLocks(str(tmp_path), None)
    first.acquire("music", replica=True)
    second.acquire("music", replica=True)
    with pytest.raises(RunLockHeld, match="enable ha"):
        lone.acquire("music")
    first.release_all()
    second.release_all()
    lone.acquire("music")
    with pytest.raises(RunLockHeld, match="without ha"):
        first.acquire("music", replica=True)
    lone.release_all()


def test_an_active_replica_takes_the_first_state_database_nobody_holds(tmp_path: Path) -> None:
    """Slot 0 (the instance's own state.db) while free; the next one while it is held."""
    import os

    held = replica_slot(str(tmp_path), "music")
    assert held is not None and held[0] == 0
    following = replica_slot(str(tmp_path), "music")
    assert following is not None and following[0] == 1
    for _slot, fd in (held, following):
        os.close(fd)
    again = replica_slot(str(tmp_path), "music")
    assert again is not None and again[0] == 0
    os.close(again[1])
