"""Resource samples: the costly open-files count is refreshed only when asked for, and a
sample that cannot be taken (EMFILE) never stops the supervisor loop."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from multiwatch.config import HttpConfig, Roster
from multiwatch.supervisor.fleet import Supervisor
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


_STARVED = textwrap.dedent("""
    import os, resource
    from multiwatch.supervisor.resources import ResourceMeter
    meter = ResourceMeter()
    assert meter.sample(os.getpid()) is not None
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 4, 4096))
    hoard = []
    try:
        while True:
            hoard.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    starved = (meter.sample(os.getpid(), count_files=True),
               ResourceMeter().sample(os.getppid()))  # known pid, and a first sample
    for fd in hoard:
        os.close(fd)
    again = meter.sample(os.getpid(), count_files=True)
    print(starved, again is not None)
""")


def test_sampling_without_file_descriptors_skips_instead_of_raising() -> None:
    """When psutil cannot open /proc files (EMFILE), a sample is None, not an exception,
    and sampling works again once descriptors are free."""
    result = subprocess.run([sys.executable, "-c", _STARVED], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(None,", "None)", "True"]


class _StarvedMeter(ResourceMeter):
    """A resource meter whose every psutil call fails like /proc opens do without
    descriptors."""

    def retain(self, pids: set[int]) -> None:
        pass

    def sample(self, pid: int, *, count_files: bool = True) -> None:  # type: ignore[override]
        raise OSError(errno.EMFILE, "Too many open files")


def _supervisor(tmp_path: Path, meter: ResourceMeter | None = None) -> Supervisor:
    return Supervisor(Roster(state_dir=str(tmp_path), http=HttpConfig(listen=None)),
                      meter=meter)


def test_a_turn_survives_resource_sampling_raising_emfile(tmp_path: Path) -> None:
    """Sampling raising EMFILE (through the seam the supervisor calls) neither ends the turn
    nor keeps the fleet view from being refreshed."""
    supervisor = _supervisor(tmp_path, meter=_StarvedMeter())
    wake_read, wake_write = os.pipe()
    try:
        supervisor._turn(wake_read)
        view = supervisor.fleet_view()
    finally:
        os.close(wake_read)
        os.close(wake_write)
    assert view["supervisor"]["loop_age_seconds"] < 1.0
    assert view["supervisor"]["resources"] is None


def test_the_loop_outlives_a_failing_turn_and_still_stops(tmp_path: Path) -> None:
    """A turn raising (whatever the cause) is logged and the loop turns on; a stop request
    afterwards still ends run() with status 0."""
    supervisor = _supervisor(tmp_path)
    turns = [0]

    def turn(wake_fd: int) -> None:
        turns[0] += 1
        if turns[0] <= 2:
            raise OSError(errno.EMFILE, "Too many open files")
        supervisor.handle_stop("test")

    supervisor._turn = turn  # type: ignore[method-assign]
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        assert supervisor.run() == 0
    finally:
        signal.set_wakeup_fd(-1)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert turns[0] == 3
