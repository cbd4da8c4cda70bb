"""A watcher that fails at start tells the supervisor why: status, /readyz and the page say it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.consumer import wait_for
from tests.support.hostile import http_request
from tests.support.process import Multiwatch, free_port, run_cli, write_roster


def test_a_child_failing_at_start_reports_its_reason(tmp_path: Path) -> None:
    """A state.db that is not a database: each start fails; /readyz, status, the page and the
    watcher's log line give the reason in one line, not a bare "exit status 1" nor a
    traceback."""
    state = tmp_path / "state"
    folder = state / "instances" / "docs"
    folder.mkdir(parents=True)
    for path in (state, state / "instances", folder):
        path.chmod(0o700)
    database = folder / "state.db"
    database.write_bytes(os.urandom(8192))  # garbage where sqlite expects its header
    database.chmod(0o600)
    (tmp_path / "in").mkdir()
    port = free_port()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(state),
        "http": {"listen": f"127.0.0.1:{port}"},
        "supervisor": {"stop_timeout_seconds": 5, "restart_backoff_seconds": 0.2},
        "instances": [{"id": "docs", "directory": str(tmp_path / "in")}],
    })
    mw = Multiwatch(["-c", str(roster)])
    try:
        def not_ready() -> str:
            code, body, _ = http_request(port, "/readyz")
            reasons = json.loads(body).get("not_ready", []) if code == 503 else []
            return " | ".join(r["reason"] for r in reasons)

        reason = wait_for(lambda: not_ready() if "state database" in not_ready() else "",
                          timeout=30,
                          message="/readyz never said why the watcher fails")
        assert "not a database" in reason and "exit status 1" in reason, reason
        assert "\n" not in reason and "Traceback" not in reason
        status = run_cli("status", "-c", str(roster), env={"MULTIWATCH_HTTP_LISTEN": ""}).stdout
        assert "not a database" in status, status
        _, page, _ = http_request(port, "/")
        assert "not a database" in page
        # the watcher's own log line: the reason with the file, in one line (no traceback)
        said = [line for line in mw.lines if line.get("logger") == "multiwatch.watcher.main"
                and line.get("level") == "ERROR"]
        assert said and all("exception" not in line for line in said), said[:1]
        assert str(database) in said[0]["message"] and "not a database" in said[0]["message"]
    finally:
        mw.cleanup()
