"""The status page and `status` of a real supervisor answer "what is it doing?" at first look."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_operator import _dirs, _get, _roster, _status
from tests.support.consumer import wait_for
from tests.support.process import Multiwatch, free_port, run_cli


def test_a_new_file_shows_on_the_page_and_in_status_at_the_first_look(tmp_path: Path) -> None:
    """After one file is announced, the first load of `/` and one `status` show the directory,
    1 file tracked, the file as last event, a rate (not a total) and the endpoint's pages."""
    port = free_port()
    roster = _roster(tmp_path, port, _dirs(tmp_path, "alpha"))
    mw = Multiwatch(["-c", str(roster)])
    try:
        wait_for(lambda: _get(port, "/readyz")[0] == 200, timeout=30, message="never ready")
        (tmp_path / "alpha" / "report.csv").write_text("a,b\n")

        def tracked() -> bool:
            beat = _status(port).get("instances", {}).get("alpha", {}).get("heartbeat", {})
            return beat.get("files_tracked") == 1

        wait_for(tracked, timeout=30, message="the file was never tracked")
        view = _status(port)
        entry = view["instances"]["alpha"]
        assert entry["heartbeat"]["last_event"]["path"] == str(tmp_path / "alpha" / "report.csv")
        assert isinstance(entry["events_per_minute"], float)
        assert view["supervisor"]["role"] == "active"
        assert view["supervisor"]["broker"] == "embedded spool"
        code, page = _get(port, "/")
        assert code == 200
        for text in (str(tmp_path / "alpha"), "report.csv", "embedded spool",
                     'href="/metrics"', 'href="/status"', 'href="/healthz"'):
            assert text in page, text
        assert "total" not in page
        table = run_cli("status", "-c", str(roster))
        assert table.returncode == 0, table.stderr
        assert "report.csv" in table.stdout and f"http://127.0.0.1:{port}/metrics" in table.stdout
        assert json.loads(run_cli("status", "-c", str(roster), "--json").stdout)["instances"]
    finally:
        mw.cleanup()
