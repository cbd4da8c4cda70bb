"""`multiwatch state export|backup` against a running multiwatch (embedded broker)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from tests.support.process import Multiwatch, run_cli, write_roster


def test_export_and_backup_while_running(tmp_path: Path) -> None:
    """Tracked files are exported as JSON lines and backed up consistently, multiwatch running."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "defaults": {"settle_seconds": 0.1},
        "instances": [{"id": "inbox", "directory": str(inbox)}],
    })
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_watching("inbox")
        (inbox / "a.txt").write_bytes(b"alpha")
        (inbox / "b.txt").write_bytes(b"beta")
        tail = run_cli("tail", "-c", str(roster), "--count", "2", "--timeout", "30")
        assert tail.returncode == 0, tail.stderr

        export = run_cli("state", "export", "-c", str(roster))
        assert export.returncode == 0, export.stderr
        rows = {r["relative_path"]: r for r in map(json.loads, export.stdout.splitlines())}
        assert set(rows) == {"a.txt", "b.txt"}
        assert rows["a.txt"]["sha256_hash"] == hashlib.sha256(b"alpha").hexdigest()
        assert rows["a.txt"]["path"] == str(inbox / "a.txt")
        assert rows["b.txt"]["size"] == 4

        backup = run_cli("state", "backup", "-c", str(roster), "--to", str(tmp_path / "bak"))
        assert backup.returncode == 0, backup.stderr
        copy = sqlite3.connect(tmp_path / "bak" / "inbox.state.db")
        assert copy.execute("SELECT count(*) FROM files").fetchone()[0] == 2
        assert mw.terminate() == 0
    finally:
        mw.cleanup()


def test_export_of_unknown_instance_or_missing_state_is_a_clear_error(tmp_path: Path) -> None:
    """Unknown --instance, or an instance that never ran: exit 2 with a message, no traceback."""
    watched = tmp_path / "w"
    watched.mkdir()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "instances": [{"id": "never-ran", "directory": str(watched)}],
    })
    unknown = run_cli("state", "export", "-c", str(roster), "--instance", "ghost")
    assert unknown.returncode == 2 and "ghost" in unknown.stderr
    missing = run_cli("state", "export", "-c", str(roster))
    assert missing.returncode == 2 and "no state database" in missing.stderr
    assert "Traceback" not in unknown.stderr + missing.stderr
