"""`multiwatch check` on a roster with ha: where replicas may run, how soon one takes over,
and a warning for heartbeats off (no takeover of a frozen replica)."""

from __future__ import annotations

from pathlib import Path

import pytest

from multiwatch.cli import main
from tests.support.process import write_roster


def _check(tmp_path: Path, capsys: pytest.CaptureFixture[str], **top: object) -> str:
    (tmp_path / "in").mkdir(exist_ok=True)
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"), **top,
        "instances": [{"id": "music", "directory": str(tmp_path / "in")}]})
    assert main(["check", "-c", str(roster)]) == 0
    return capsys.readouterr().err


def test_embedded_spool_replicas_are_told_to_share_this_host_and_state_dir(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ha without a broker: the note says the lease is an flock, so one host, one state_dir."""
    err = _check(tmp_path, capsys, ha={"enabled": True})
    assert "replicas must run on this host with this same state_dir" in err
    assert str(tmp_path / "state") in err and "need a broker" in err


def test_broker_replicas_are_told_how_soon_a_standby_takes_over(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """2 x heartbeat + lease_retry_seconds for a frozen or cut-off replica."""
    err = _check(tmp_path, capsys, ha={"enabled": True, "lease_retry_seconds": 1},
                 broker={"url": "amqp://u:p@localhost/", "heartbeat_seconds": 4})
    assert "a standby takes over within 9 s" in err and "within 1 s when it is killed" in err


def test_heartbeats_off_with_replicas_is_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """heartbeat_seconds 0: a frozen active replica is never replaced; check warns."""
    err = _check(tmp_path, capsys, ha={"enabled": True},
                 broker={"url": "amqp://u:p@localhost/", "heartbeat_seconds": 0})
    assert "multiwatch: warning: ha (instance music) with broker.heartbeat_seconds 0" in err


def test_no_word_about_replicas_without_ha(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A roster without ha gets no replica notes."""
    assert "ha (" not in _check(tmp_path, capsys)
