"""The supervisor reaches its first spawn without importing what only a watcher child needs."""

from __future__ import annotations

import subprocess
import sys

WATCHER_ONLY = ("kombu", "amqp", "watchdog", "xxhash", "multiwatch.watcher.main",
                "multiwatch.watcher.pipeline")
AFTER_SPAWN = ("psutil", "prometheus_client", "http.server", "multiwatch.supervisor.http")


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
