"""`multiwatch status` for replicas (ha): a standby's row and details say what it does, and a
replica demoted by another holding the lease shows as no crash."""

from __future__ import annotations

import pytest

from multiwatch.cli import main
from tests.support.fleet_view import fleet, instance, serve


def _standby(**beat: object) -> dict[str, object]:
    """A standby's heartbeat, as watcher/standby.standby_snapshot sends it."""
    heartbeat: dict[str, object] = {"role": "standby", "broker_connected": True,
                                    "publish_failures": 0, "last_error": "", "problem": "",
                                    "errors": 0, "observer": "none"}
    heartbeat.update(beat)
    return instance(role="standby", heartbeat=heartbeat)


def _status(capsys: pytest.CaptureFixture[str], view: dict[str, object]) -> list[str]:
    with serve(view) as (server, _):
        assert main(["status", "--url", server.url]) == 0
    return capsys.readouterr().out.splitlines()


def test_a_standby_is_described_not_shown_as_waiting_for_its_first_heartbeat(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A standby counts no events: its details say it stands by and how warm it is, never
    "no heartbeat yet"."""
    view = fleet({"music": _standby(standby_warm=False, standby_lag_events=120,
                                    files_tracked=40),
                  "docs": _standby(standby_warm=True, files_tracked=9),
                  "cold": _standby()})
    out = "\n".join(_status(capsys, view))
    assert "no heartbeat yet" not in out
    assert "standby (catching up)" in out and "standby (warm)" in out
    assert ("music: standby, announcing nothing while another replica holds the lease; "
            "catching up with the active replica's events, 120 events behind") in out
    assert "docs: standby, announcing nothing while another replica holds the lease; its " \
        "state is warm" in out
    assert "cold: standby, announcing nothing while another replica holds the lease; no " \
        "state of its own kept warm" in out


def test_a_demoted_replica_shows_its_last_exit_with_no_restart_counted(
        capsys: pytest.CaptureFixture[str]) -> None:
    """After a demotion the row says why the watcher exited, and RESTARTS stays 0."""
    entry = _standby(standby_warm=True)
    entry["last_exit"] = "lost the lease to another replica"
    _summary, header, row, *_ = _status(capsys, fleet({"music": entry}))
    assert row.split()[:4] == ["music", "RUNNING", "4242", "0"]
    assert row.endswith("lost the lease to another replica")
    assert header.split()[3] == "RESTARTS"
