"""One supervisor per instance and state_dir, `reload`/`stop`, process titles: real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests.support.process import Multiwatch, run_cli, write_roster


def _roster(tmp_path: Path, *ids: str, name: str = "roster.yaml") -> Path:
    for ident in ids:
        (tmp_path / ident).mkdir(exist_ok=True)
    return write_roster(tmp_path / name, {
        "state_dir": str(tmp_path / "state"),
        "defaults": {"settle_seconds": 0.1},
        "supervisor": {"stop_timeout_seconds": 3},
        "instances": [{"id": ident, "directory": str(tmp_path / ident)} for ident in ids],
    })



def _run(started: list[Multiwatch], *args: str) -> Multiwatch:
    mw = Multiwatch(list(args))
    started.append(mw)
    return mw


def _title(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline()).strip()


def test_a_second_run_on_the_same_roster_exits_2_naming_the_first(
        tmp_path: Path, started: list[Multiwatch]) -> None:
    """A second `run` of a running roster refuses at once (exit 2), naming the running pid."""
    roster = _roster(tmp_path, "music", "docs")
    first = _run(started, "-c", str(roster))
    first.wait_watching("music")
    first.wait_watching("docs")
    watchers = first.child_pids()
    second = run_cli("run", "-c", str(roster), timeout=30)
    assert second.returncode == 2, second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert "multiwatch stop -c" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.process.poll() is None
    assert first.child_pids() == watchers  # its watchers run on undisturbed


def test_only_runs_of_different_instances_share_a_state_dir(
        tmp_path: Path, started: list[Multiwatch]) -> None:
    """`run --only a` and `run --only b` (the exports' shape) both run, their titles naming
    their instance; a second `--only a` is refused naming the first."""
    roster = _roster(tmp_path, "a", "b")
    run_a = _run(started, "-c", str(roster), "--only", "a")
    run_b = _run(started, "-c", str(roster), "--only", "b")
    run_a.wait_watching("a")
    run_b.wait_watching("b")
    # ps tells them apart
    assert _title(run_a.pid) == f"multiwatch: supervisor {roster} --only a"
    assert _title(run_b.pid) == f"multiwatch: supervisor {roster} --only b"
    again = run_cli("run", "-c", str(roster), "--only", "a", timeout=30)
    assert again.returncode == 2
    assert f"pid {run_a.pid}" in again.stderr and "instance a" in again.stderr


def test_sigkill_of_the_supervisor_frees_its_lock(
        tmp_path: Path, started: list[Multiwatch]) -> None:
    """The kernel releases the lock of a killed supervisor: a new run starts without cleanup."""
    roster = _roster(tmp_path, "inbox")
    first = _run(started, "-c", str(roster))
    first.wait_watching("inbox")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=10)
    second = _run(started, "-c", str(roster))
    second.wait_watching("inbox")
    assert second.process.poll() is None


def test_process_titles_name_the_roster_and_each_instance(
        tmp_path: Path, started: list[Multiwatch]) -> None:
    """`ps` shows `multiwatch: supervisor <roster>`, `multiwatch: template` (the process the
    watchers are forked from) and `multiwatch: watcher <id>`."""
    roster = _roster(tmp_path, "music", "docs")
    mw = _run(started, "-c", str(roster))
    mw.wait_watching("music")
    mw.wait_watching("docs")
    assert _title(mw.pid) == f"multiwatch: supervisor {roster}"
    titles = sorted(_title(pid) for pid in mw.child_pids())
    # (multiprocessing's resource tracker, which runs no instance, keeps its command line)
    assert [t for t in titles if "resource_tracker" not in t] == [
        "multiwatch: template", "multiwatch: watcher docs", "multiwatch: watcher music"]


def test_reload_and_stop_signal_the_running_supervisor(
        tmp_path: Path, started: list[Multiwatch]) -> None:
    """`reload` makes the running supervisor re-read its roster; `stop` ends it and waits;
    with none running both say so and exit 1."""
    roster = _roster(tmp_path, "music")
    mw = _run(started, "-c", str(roster))
    mw.wait_watching("music")
    _roster(tmp_path, "music", "docs")  # the operator adds an instance
    mark = len(mw.lines)
    reload = run_cli("reload", "-c", str(roster))
    assert reload.returncode == 0, reload.stderr
    assert str(mw.pid) in reload.stdout
    mw.wait_watching("docs", after=mark)

    stop = run_cli("stop", "-c", str(roster), "--timeout", "20")
    assert stop.returncode == 0, stop.stderr
    assert f"pid {mw.pid}" in stop.stdout and "stopped" in stop.stdout
    assert mw.process.poll() == 0  # it had exited when `stop` returned

    for command in ("stop", "reload"):
        none = run_cli(command, "-c", str(roster))
        assert none.returncode == 1
        assert "no multiwatch supervisor runs" in none.stderr


def test_reload_of_a_fleet_from_the_environment_says_it_cannot(
        tmp_path: Path, started: list[Multiwatch]) -> None:
    """A supervisor started from the environment (no roster file) ignores SIGHUP: `reload`
    says so and how to apply a change (exit 2), instead of 'sent SIGHUP' and exit 0."""
    (tmp_path / "data").mkdir()
    env = {"DATA_DIR": str(tmp_path / "data"), "INSTANCE_ID": "envw",
           "MULTIWATCH_STATE_DIR": str(tmp_path / "state")}
    mw = Multiwatch([], env=env)
    started.append(mw)
    mw.wait_watching("envw")
    reload = run_cli("reload", env=env)
    assert reload.returncode == 2, reload.stdout + reload.stderr
    assert f"pid {mw.pid}" in reload.stderr and "environment" in reload.stderr
    assert "multiwatch stop" in reload.stderr and "sent SIGHUP" not in reload.stdout
    assert not any("SIGHUP" in line.get("message", "") for line in mw.lines)
    stop = run_cli("stop", env=env)
    assert stop.returncode == 0, stop.stderr


def test_reload_refuses_an_added_instance_another_process_runs(
        tmp_path: Path, started: list[Multiwatch]) -> None:
    """An instance added by SIGHUP that another supervisor runs is refused with an error
    naming it; the rest of the fleet runs on."""
    shared = _roster(tmp_path, "a", "b")
    owner_of_b = _run(started, "-c", str(shared), "--only", "b")
    owner_of_b.wait_watching("b")
    own = _roster(tmp_path, "a", name="own.yaml")
    mw = _run(started, "-c", str(own))
    mw.wait_watching("a")
    _roster(tmp_path, "a", "b", name="own.yaml")
    mark = len(mw.lines)
    mw.process.send_signal(signal.SIGHUP)
    refusal = mw.wait_for_log(lambda line: line.get("instance_id") == "b"
                              and line.get("level") == "ERROR", after=mark)
    assert f"pid {owner_of_b.pid}" in refusal["message"]
    assert mw.process.poll() is None
    assert [_title(pid) for pid in mw.child_pids()
            if _title(pid).startswith("multiwatch: watcher")] == ["multiwatch: watcher a"]


_FAKE_HOLDER = textwrap.dedent("""
    import fcntl, json, os, sys, time
    folder = os.path.join(sys.argv[1], "supervisors")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    pid = os.getpid() if sys.argv[2] == "self" else int(sys.argv[2])
    fd = os.open(os.path.join(folder, f"{pid}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": pid, "roster": sys.argv[3],
                             "instances": ["music"], "only": None}).encode())
    print("locked", flush=True)
    time.sleep(120)
""")


def _fake_holder(state_dir: Path, pid: str, roster: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", _FAKE_HOLDER, str(state_dir), str(pid),
                               str(roster)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


@pytest.mark.parametrize("named", ["another process", "the holder itself"])
def test_stop_refuses_a_pid_that_is_not_a_supervisor_holding_the_lock(
        tmp_path: Path, named: str) -> None:
    """A lock file naming a process that is not a multiwatch supervisor holding that lock
    (pid reuse, a planted file) is never signalled."""
    roster = _roster(tmp_path, "music")
    state = tmp_path / "state"
    victim = subprocess.Popen(["sleep", "120"])
    holder: subprocess.Popen[str] | None = None
    try:
        if named == "another process":
            holder = _fake_holder(state, str(victim.pid), roster)
            target = victim.pid
        else:  # a pid that does hold the lock, but is no supervisor
            holder = _fake_holder(state, "self", roster)
            target = holder.pid
        for command in (["stop", "--timeout", "2"], ["reload"]):
            result = run_cli(*command, "-c", str(roster))
            assert result.returncode == 1, result.stdout
            assert f"pid {target}" in result.stderr and "not signalling" in result.stderr
        assert victim.poll() is None and holder.poll() is None
    finally:
        for process in (victim, holder):
            if process is not None:
                process.kill()
                process.wait(timeout=10)



def test_stop_only_one_instance_of_the_exports_shape(
        tmp_path: Path, started: list[Multiwatch]) -> None:
    """With one supervisor per instance, `stop --only a` stops a's and leaves b's running."""
    roster = _roster(tmp_path, "a", "b")
    run_a = _run(started, "-c", str(roster), "--only", "a")
    run_b = _run(started, "-c", str(roster), "--only", "b")
    run_a.wait_watching("a")
    run_b.wait_watching("b")
    stop = run_cli("stop", "-c", str(roster), "--only", "a")
    assert stop.returncode == 0, stop.stderr
    assert run_a.process.poll() == 0 and run_b.process.poll() is None


def test_stop_only_refuses_to_stop_other_instances_with_it(
        tmp_path: Path, started: list[Multiwatch]) -> None:
    """`stop --only docs` on a supervisor that also runs music stops nothing (exit 2) and says
    how to stop all of it or just docs; its watchers run on."""
    roster = _roster(tmp_path, "music", "docs")
    mw = _run(started, "-c", str(roster))
    mw.wait_watching("music")
    mw.wait_watching("docs")
    watchers = mw.child_pids()
    stop = run_cli("stop", "-c", str(roster), "--only", "docs")
    assert stop.returncode == 2, stop.stdout
    assert f"pid {mw.pid}" in stop.stderr and "music too" in stop.stderr
    assert "multiwatch reload" in stop.stderr and "Traceback" not in stop.stderr
    assert mw.process.poll() is None and mw.child_pids() == watchers
    both = run_cli("stop", "-c", str(roster), "--only", "docs", "--only", "music")
    assert both.returncode == 0, both.stderr
    assert mw.process.poll() == 0


def test_stop_exits_3_when_the_supervisor_outlives_the_timeout(
        tmp_path: Path, started: list[Multiwatch]) -> None:
    """`stop --timeout 0` sends SIGTERM but cannot see the exit in time: exit 3, saying so;
    the supervisor still stops."""
    roster = _roster(tmp_path, "music")
    mw = _run(started, "-c", str(roster))
    mw.wait_watching("music")
    stop = run_cli("stop", "-c", str(roster), "--timeout", "0")
    assert stop.returncode == 3, stop.stderr
    assert f"pid {mw.pid}, is still running" in stop.stderr
    assert mw.process.wait(timeout=20) == 0


def test_stop_refuses_a_state_dir_others_may_write(tmp_path: Path) -> None:
    """A world-writable state_dir (anyone could plant a lock file) is a one-line error, exit 2."""
    roster = _roster(tmp_path, "music")
    (tmp_path / "state" / "supervisors").mkdir(parents=True)
    (tmp_path / "state").chmod(0o777)
    result = run_cli("stop", "-c", str(roster))
    assert result.returncode == 2
    assert "writable by every user" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the state to another user")
def test_stop_as_root_on_a_service_users_state_says_to_ask_as_that_user(tmp_path: Path) -> None:
    """root stopping a fleet whose state_dir belongs to the service user (systemd User=) is
    told to ask as that user (exit 2), never to chown the state to root (which would stop
    the service's next start)."""
    roster = _roster(tmp_path, "music")
    (tmp_path / "state" / "supervisors").mkdir(parents=True)
    for path in (tmp_path / "state", tmp_path / "state" / "supervisors"):
        path.chmod(0o700)
        os.chown(path, 65534, 65534)
    for command in ("stop", "reload"):
        result = run_cli(command, "-c", str(roster))
        assert result.returncode == 2, result.stdout + result.stderr
        assert "chown" not in result.stderr and "Traceback" not in result.stderr
        assert f"-u {_user_name(65534)} multiwatch {command} -c {roster}" in result.stderr


def _user_name(uid: int) -> str:
    import pwd

    return pwd.getpwuid(uid).pw_name


def test_a_new_watcher_waits_for_the_one_a_killed_supervisor_left(
        tmp_path: Path, started: list[Multiwatch]) -> None:
    """While a watcher of the instance is still stopping (it holds watcher.lock), the new
    run's watcher waits, saying so, and starts watching once the old one is gone."""
    from multiwatch.supervisor.run_lock import open_watcher_lock, try_lock_exclusive

    roster = _roster(tmp_path, "inbox")
    old_watcher = open_watcher_lock(str(tmp_path / "state"), "inbox")
    assert try_lock_exclusive(old_watcher)
    try:
        mw = _run(started, "-c", str(roster))
        mw.wait_for_log(lambda line: "previous watcher" in line.get("message", ""))
        assert not any(line.get("message") == "watching" for line in mw.lines)
    finally:
        os.close(old_watcher)
    mw.wait_watching("inbox")
