"""The embedded default: no RabbitMQ, events spooled under state_dir, `tail` prints them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.support.process import Multiwatch, run_cli, write_roster


def test_run_without_broker_delivers_events_that_tail_prints(tmp_path: Path) -> None:
    """With no broker configured, a dropped file comes out of `multiwatch tail` as JSON."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "defaults": {"settle_seconds": 0.2},
        "instances": [{"id": "inbox", "directory": str(inbox)}],
    })
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_watching("inbox")
        mw.wait_for_log(lambda line: line.get("message") == "connected to broker"
                        and line.get("broker") == "embedded")
        (inbox / "hello.txt").write_bytes(b"hello, spool")

        tail = run_cli("tail", "-c", str(roster), "--count", "1", "--timeout", "30")

        assert tail.returncode == 0, tail.stderr
        [line] = tail.stdout.splitlines()
        event = json.loads(line)
        assert event["event_type"] == "file_discovered"
        assert event["instance_id"] == "inbox"
        assert event["file_info"]["sha256_hash"] == hashlib.sha256(b"hello, spool").hexdigest()
        assert (tmp_path / "state" / "spool").is_dir()
        assert not any(p.name == "spool" for p in inbox.rglob("*")), "spool inside watched dir"
        assert mw.terminate() == 0
    finally:
        mw.cleanup()
