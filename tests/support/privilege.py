"""Run a command as a user that file permissions apply to, even when the tests run as root.

Root bypasses permission bits through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH; removing
both from the bounding set (util-linux `setpriv`) makes a child process honour them, so
"unreadable directory" behaviour is tested in CI, which runs as root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

_DROP = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def run_python_unprivileged(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -c code args...` with permission checks enforced."""
    return run_unprivileged([sys.executable, "-c", code, *args])


def run_unprivileged(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    prefix = _DROP if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=60)
