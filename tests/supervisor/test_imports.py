"""The supervisor reaches its first spawn without importing what only a watcher child needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.process import Multiwatch, write_roster

WATCHER_ONLY = ("kombu", "amqp", "watchdog", "xxhash", "multiwatch.watcher.main",
                "multiwatch.watcher.pipeline")
AFTER_SPAWN = ("psutil", "prometheus_client", "http.server", "multiwatch.supervisor.http")
# Imported by the supervisor (command line, roster), never by a watcher child.
SUPERVISOR_ONLY = ("multiwatch.cli", "yaml.reader")


def test_supervisor_does_not_import_the_watcher_machinery() -> None:
    """Importing the supervisor (and the child's spawn target) loads no broker client,
    observer or pipeline: those cost the first child's start time and only the child uses
    them."""
    code = ("import sys, multiwatch.cli, multiwatch.supervisor.fleet, multiwatch.watcher.spec;"
            f"print(','.join(m for m in {WATCHER_ONLY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == ""


def test_supervisor_defers_http_and_psutil_until_after_the_first_spawn() -> None:
    """The HTTP endpoint, metrics and psutil are imported when first used (after the
    children are spawned), not when the supervisor module is."""
    code = ("import sys, multiwatch.cli, multiwatch.supervisor.fleet;"
            f"print(','.join(m for m in {AFTER_SPAWN!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == ""


def _console_script() -> list[str]:
    script = shutil.which("multiwatch", path=str(Path(sys.executable).parent))
    assert script, "the multiwatch console script is not installed (make install)"
    return [script]


@pytest.mark.parametrize("program", ["console script", "python -m multiwatch"])
def test_watcher_child_imports_neither_the_command_line_nor_yaml(
        tmp_path: Path, program: str) -> None:
    """However `multiwatch run` is started, its watcher child comes up without importing the
    command line or PyYAML (the supervisor imports each once): neither re-running the
    console script nor kombu's optional YAML codec delays the child's "watching"."""
    (tmp_path / "w").mkdir()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "instances": [{"id": "t1", "directory": str(tmp_path / "w")}],
    })
    # Every process of the run (supervisor, resource tracker, child) prints one
    # "import time: self | cumulative | name" line per module it imports, on the shared stderr.
    mw = Multiwatch(["-c", str(roster)], env={"PYTHONPROFILEIMPORTTIME": "1"},
                    program=_console_script() if program == "console script" else None)
    try:
        mw.wait_watching("t1")
        assert mw.terminate() == 0
    finally:
        mw.cleanup()
    imported = [line.rsplit("|", 1)[1].strip() for line in mw.raw
                if line.startswith("import time:") and line.count("|") == 2]
    assert imported.count("multiwatch.watcher.main") == 1  # the child's lines are here too
    assert {name: imported.count(name) for name in SUPERVISOR_ONLY} == dict.fromkeys(
        SUPERVISOR_ONLY, 1)
