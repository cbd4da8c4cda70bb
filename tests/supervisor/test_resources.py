"""Resource samples: the costly open-files count is refreshed only when asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from multiwatch.supervisor.resources import ResourceMeter


def test_open_files_are_counted_when_asked_and_reused_in_between(tmp_path: Path) -> None:
    """A sample without count_files repeats the last count; one with it sees the change."""
    meter = ResourceMeter()
    first = meter.sample(os.getpid())
    assert first is not None
    with open(tmp_path / "extra", "w"):
        cheap = meter.sample(os.getpid(), count_files=False)
        counted = meter.sample(os.getpid(), count_files=True)
    assert cheap is not None and counted is not None
    assert cheap.open_files == first.open_files
    assert counted.open_files == first.open_files + 1
    assert cheap.rss_bytes > 0 and cheap.threads >= 1


def test_a_new_process_is_always_counted_and_an_exited_one_gives_none(tmp_path: Path) -> None:
    """The first sample of a pid counts its files even without count_files; a pid that has
    exited samples as None."""
    meter = ResourceMeter()
    with open(tmp_path / "held", "w") as held:
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE, stdout=held)
    try:
        usage = meter.sample(child.pid, count_files=False)
        assert usage is not None and usage.open_files >= 1  # its stdout is a regular file
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert meter.sample(child.pid, count_files=False) is None
