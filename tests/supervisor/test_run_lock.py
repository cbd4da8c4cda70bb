"""The run locks: one holder per instance, named to the next taker, private, checked by prepare."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from multiwatch import state_dir
from multiwatch.supervisor.run_lock import (
    InstanceLocks,
    RunLockHeld,
    SupervisorFile,
    kernel_lock_holders,
    running_supervisors,
)


def test_a_held_instance_is_refused_naming_the_holder(tmp_path: Path) -> None:
    """A second taker of an instance's lock gets an error naming the holder's pid and roster."""
    first = InstanceLocks(str(tmp_path / "state"), "/etc/multiwatch/roster.yaml")
    second = InstanceLocks(str(tmp_path / "state"), "/elsewhere.yaml")
    first.acquire("music")
    with pytest.raises(RunLockHeld) as refused:
        second.acquire("music")
    message = str(refused.value)
    assert f"pid {os.getpid()}" in message
    assert "multiwatch stop -c /etc/multiwatch/roster.yaml" in message
    second.acquire("docs")  # other instances of the same state_dir are free
    first.release("music")
    second.acquire("music")  # released: the next taker gets it
    assert second.held == ["docs", "music"]
    second.release_all()


def test_a_fleet_from_the_environment_is_named_with_how_to_stop_it(tmp_path: Path) -> None:
    """A holder started from the environment (no roster file) is named by pid, with
    `multiwatch stop` to end it."""
    first = InstanceLocks(str(tmp_path / "state"), None)
    first.acquire("envw")
    with pytest.raises(RunLockHeld) as refused:
        InstanceLocks(str(tmp_path / "state"), None).acquire("envw")
    assert f"pid {os.getpid()}" in str(refused.value)
    assert "(multiwatch stop, in its environment)" in str(refused.value)
    first.release_all()


def test_acquire_all_is_all_or_nothing(tmp_path: Path) -> None:
    """If one instance is held elsewhere, a supervisor keeps none of the others' locks."""
    other = InstanceLocks(str(tmp_path), None)
    other.acquire("b")
    mine = InstanceLocks(str(tmp_path), None)
    with pytest.raises(RunLockHeld):
        mine.acquire_all(["a", "b"])
    assert mine.held == []
    other.acquire("a")  # "a" was let go again
    other.release_all()


def test_lock_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """run.lock and supervisors/<pid>.lock are 0600 in 0700 directories even under umask 0."""
    old = os.umask(0)
    try:
        locks = InstanceLocks(str(tmp_path / "state"), None)
        locks.acquire("music")
        supervisor = SupervisorFile(str(tmp_path / "state"))
        supervisor.acquire({"roster": None, "only": None, "instances": ["music"]})
    finally:
        os.umask(old)
    try:
        modes = {path.relative_to(tmp_path / "state").as_posix(): stat.S_IMODE(path.stat().st_mode)
                 for path in (tmp_path / "state").rglob("*")}
        assert modes["instances/music/run.lock"] == 0o600
        assert modes[f"supervisors/{os.getpid()}.lock"] == 0o600
        assert modes["supervisors"] == 0o700 and modes["instances/music"] == 0o700
    finally:
        locks.release_all()
        supervisor.release()


def test_a_running_supervisor_is_found_and_a_gone_one_is_not(tmp_path: Path) -> None:
    """reload/stop see a supervisor while it holds its file, and the kernel names it; not
    after it let go."""
    supervisor = SupervisorFile(str(tmp_path))
    supervisor.acquire({"roster": "/r.yaml", "only": ["a"], "instances": ["a"]})
    [found] = list(running_supervisors(str(tmp_path)))
    assert (found.pid, found.roster, found.only, found.instances) == (
        os.getpid(), "/r.yaml", ["a"], ["a"])
    assert kernel_lock_holders(found.inode) == {os.getpid()}
    supervisor.release()
    assert list(running_supervisors(str(tmp_path))) == []
    assert not (tmp_path / "supervisors" / f"{os.getpid()}.lock").exists()


@pytest.mark.parametrize("planted", ["instances/music/run.lock", "supervisors/1.lock"])
def test_prepare_refuses_a_symlinked_lock_file(tmp_path: Path, planted: str) -> None:
    """A lock file replaced by a symbolic link is refused by check and run, naming it."""
    state = tmp_path / "state"
    state_dir.prepare(str(state), ["music"], embedded=False)
    (state / "supervisors").mkdir(mode=0o700, exist_ok=True)
    (tmp_path / "target").write_text("")
    (state / planted).symlink_to(tmp_path / "target")
    for policy in (state_dir.VERIFY, state_dir.CREATE):
        with pytest.raises(state_dir.UnsafeStateError, match="symbolic link") as refused:
            state_dir.prepare(str(state), ["music"], embedded=False, policy=policy)
        assert str(state / planted) in str(refused.value)


def test_prepare_tightens_a_loose_lock_file(tmp_path: Path) -> None:
    """A run.lock others may read (an older version's umask) is made 0600 by run."""
    state = tmp_path / "state"
    state_dir.prepare(str(state), ["music"], embedded=False)
    lock = state / "instances" / "music" / "run.lock"
    lock.write_text("")
    lock.chmod(0o644)
    state_dir.prepare(str(state), ["music"], embedded=False)
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


_SHARED_HOLDER = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR)\n"
    "fcntl.flock(fd, fcntl.LOCK_SH)\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_a_supervisor_without_ha_beside_replicas_is_told_their_pids(tmp_path: Path) -> None:
    """Refused beside two replicas (which hold the lock shared, with no record), a run
    without ha names both replicas' pids, not 'another process' nor a killed holder's."""
    import subprocess
    import sys

    locks = InstanceLocks(str(tmp_path / "state"), None)
    locks.acquire("music", replica=True)
    locks.release("music")  # (the lock file exists now)
    lock = tmp_path / "state" / "instances" / "music" / "run.lock"
    # what a supervisor without ha killed by kill -9 leaves behind it
    lock.write_text('{"pid": 4194304, "roster": "/killed.yaml"}')
    replicas = [subprocess.Popen([sys.executable, "-c", _SHARED_HOLDER, str(lock)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for _ in range(2)]
    try:
        for replica in replicas:
            assert replica.stdout is not None and replica.stdout.readline() == "locked\n"
        with pytest.raises(RunLockHeld) as refused:
            InstanceLocks(str(tmp_path / "state"), "/r.yaml").acquire("music")
        message = str(refused.value)
        pids = sorted(replica.pid for replica in replicas)
        assert f"pids {pids[0]}, {pids[1]}" in message, message
        assert "another process" not in message and "(stop it)" not in message
        assert "4194304" not in message and "killed.yaml" not in message
    finally:
        for replica in replicas:
            replica.communicate("", timeout=10)
