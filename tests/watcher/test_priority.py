"""nice and ionice: set on the watcher at its start, a refusal said in one line, never fatal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Sets the priority like a watcher does, then prints what the kernel says it is.
_APPLY = """
import logging, os, sys
import psutil
from multiwatch.watcher.priority import apply_priority
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
nice = None if sys.argv[1] == "-" else int(sys.argv[1])
apply_priority(nice, None if sys.argv[2] == "-" else sys.argv[2])
io = psutil.Process().ionice()
print(os.getpriority(os.PRIO_PROCESS, 0), int(io.ioclass), io.value)
"""


def _apply(nice: str, ionice: str, *, drop: str = "") -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", f"--bounding-set={drop}", "--"] if drop else []
    return subprocess.run([*prefix, sys.executable, "-c", _APPLY, nice, ionice],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("nice", "ionice", "expected"), [
    ("7", "idle", "7 3 0"),
    ("19", "best-effort:6", "19 2 6"),
    ("-", "best-effort", "0 2 4"),
])
def test_the_priority_is_set(nice: str, ionice: str, expected: str) -> None:
    """nice and the I/O class (best-effort without a level: 4, like ionice(1)) take effect."""
    done = _apply(nice, ionice)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected.split()
    assert done.stderr == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop capabilities (CI is root)")
def test_a_refused_priority_is_one_line_each_and_not_fatal() -> None:
    """Without CAP_SYS_NICE / CAP_SYS_ADMIN a negative nice and the realtime class are
    refused: one WARNING line each says so and what the watcher runs at, and it goes on."""
    done = _apply("-5", "realtime:0", drop="-sys_nice,-sys_admin")
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.splitlines()
    assert warnings == [
        "WARNING cannot set nice -5: Permission denied; running at nice 0",
        "WARNING cannot set ionice realtime:0: Permission denied; running at the inherited "
        "I/O priority",
    ]
    assert done.stdout.split()[0] == "0"
