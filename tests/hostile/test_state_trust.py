"""The state directory is ours alone: private modes whatever the umask, other users' entries,
world-writable directories and symbolic links refused by `check` and `run` (exit 2, one line
naming the path and the fix), older loose modes tightened with a log line."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from multiwatch import state_dir
from multiwatch.watcher.state import StateError, StateStore, connect, state_db_path
from tests.support.hostile import is_log, roster
from tests.support.process import Multiwatch, run_cli

NOBODY = 65534
BIG = 9 * 1024 * 1024  # above the big-file size, so a hash slot file is taken


def _modes(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (permission bits, owner) of root and everything below it."""
    found = {".": (stat.S_IMODE(root.lstat().st_mode), root.lstat().st_uid)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            info = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (
                stat.S_IMODE(info.st_mode), info.st_uid)
    return found


def _await(condition: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout}s: {what}")
        time.sleep(0.05)


def _with_umask(umask: str) -> list[str]:
    """`multiwatch` started from a shell whose umask is `umask`."""
    return ["sh", "-c", f'umask {umask}; exec "$0" "$@"', sys.executable, "-m", "multiwatch"]


def _forge_database(state: Path, instance_id: str) -> Path:
    """A state.db with one outbox row another user wrote, the attack of issue 18 item 5."""
    path = Path(state_db_path(str(state), instance_id))
    path.parent.mkdir(parents=True)
    connect(str(path)).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO outbox (instance_id, event_type, routing_key, message_id,"
                   " correlation_id, body) VALUES (?, ?, ?, ?, ?, ?)",
                   (instance_id, "created", "file.created", "forged", "forged",
                    b'{"path": "/forged"}'))
    for name in os.listdir(path.parent):
        os.chown(path.parent / name, NOBODY, NOBODY)
    return path


def _as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    """Run a command as a real other user (uid/gid 65534, no groups)."""
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run([*setpriv, *command], capture_output=True, text=True, timeout=30)


def test_state_is_private_whatever_the_umask(tmp_path: Path, inbox: Path) -> None:
    """Under umask 000 every directory run creates is 0700 and every file 0600 (database,
    -wal, -shm, spool messages, hash slots): another user cannot read paths or hashes."""
    tmp_path.chmod(0o755)  # so that only the state directory's own modes keep others out
    state = tmp_path / "state"
    mw = Multiwatch(["-c", str(roster(tmp_path, [{"id": "box", "directory": str(inbox)}]))],
                    program=_with_umask("000"))
    try:
        mw.wait_watching("box")
        (inbox / "small.txt").write_text("hello")
        (inbox / "big.bin").write_bytes(os.urandom(BIG))
        messages = state / "spool" / "messages"
        _await(lambda: len(list(messages.iterdir())) >= 2, "two events in the spool")
        _await(lambda: any((state / "hash-slots").iterdir()), "a hash slot file")
        modes = _modes(state)
        assert {"instances/box/state.db-wal", "instances/box/state.db-shm"} <= set(modes)
        assert len(modes) >= 12, modes
        for path, (mode, owner) in modes.items():
            is_dir = (state / path).is_dir()
            assert mode == (0o700 if is_dir else 0o600), (path, oct(mode))
            assert owner == os.geteuid(), path
        refused = _as_nobody("cat", str(state / "instances" / "box" / "state.db"))
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
    finally:
        assert mw.terminate() == 0
        mw.cleanup()


def test_loose_modes_left_by_an_older_version_are_tightened_with_a_log_line(
        tmp_path: Path, inbox: Path) -> None:
    """A state tree an older multiwatch left 0755/0644 (0775/0664 under umask 002) is made
    0700/0600 at start, one warning per path; its tracked state is kept."""
    state = tmp_path / "state"
    db = Path(state_db_path(str(state), "box"))
    db.parent.mkdir(parents=True)
    connect(str(db)).close()
    for folder in (state, state / "instances", db.parent):
        folder.chmod(0o775)
    db.chmod(0o664)
    mw = Multiwatch(["-c", str(roster(tmp_path, [{"id": "box", "directory": str(inbox)}]))])
    try:
        mw.wait_watching("box")
        tightened = {line["path"]: line["mode_before"] for line in mw.lines
                     if is_log(line, "tightened a state path others could read or write")}
        assert tightened == {str(state): "0775", str(state / "instances"): "0775",
                             str(db.parent): "0775", str(db): "0664"}
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
    finally:
        assert mw.terminate() == 0
        mw.cleanup()


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_database_planted_by_another_user_is_refused(
        tmp_path: Path, inbox: Path, command: str) -> None:
    """state.db pre-created by another user with a forged outbox row: check and run exit 2
    with one line naming the file and the chown that fixes it; nothing is published."""
    state = tmp_path / "state"
    forged = _forge_database(state, "box")
    path = roster(tmp_path, [{"id": "box", "directory": str(inbox)}])
    result = run_cli(command, "-c", str(path), timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    error = result.stderr.strip()
    assert error.startswith("multiwatch: error: state file ") and "\n" not in error
    assert str(forged) in error and "belongs to nobody" in error
    assert f"chown -R root {forged}" in error
    assert not (state / "spool").exists()  # run stopped before any watcher published


@pytest.mark.parametrize("problem, expected", [
    ("state owned by nobody", "belongs to nobody"),
    ("instances world-writable", "writable by every user (mode 0777)"),
    ("database writable by another group", "writable by group nogroup (mode 0660)"),
    ("instance directory writable by another group", "writable by group nogroup (mode 0770)"),
    ("instance directory a symlink", "is a symbolic link"),
    ("state_dir a symlink", "is a symbolic link"),
    ("hash slot owned by nobody", "belongs to nobody"),
    ("replica slot database owned by nobody", "state.1.db belongs to nobody"),
    ("replica slot lock owned by nobody", "watcher.1.lock belongs to nobody"),
    ("spool message owned by nobody", "belongs to nobody"),
])
def test_state_that_others_control_is_refused_by_check_and_run(
        tmp_path: Path, inbox: Path, problem: str, expected: str) -> None:
    """Each link of the chain (state_dir, instances/, instances/<id>/ and each file in it,
    replica slots' included, hash slots, spool) owned by another user, writable by all or
    by another group, or a symlink: check and run exit 2, one line."""
    state = tmp_path / "state"
    (state / "instances").mkdir(parents=True, mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if problem == "state owned by nobody":
        os.chown(state, NOBODY, NOBODY)
    elif problem == "instances world-writable":
        (state / "instances").chmod(0o777)
    elif problem == "database writable by another group":
        db = Path(state_db_path(str(state), "box"))
        db.parent.mkdir(mode=0o700)
        connect(str(db)).close()
        os.chown(db, os.geteuid(), NOBODY)
        db.chmod(0o660)
    elif problem == "instance directory writable by another group":
        (state / "instances" / "box").mkdir(mode=0o700)
        os.chown(state / "instances" / "box", os.geteuid(), NOBODY)
        (state / "instances" / "box").chmod(0o770)
    elif problem == "instance directory a symlink":
        (state / "instances" / "box").symlink_to(elsewhere)
    elif problem == "state_dir a symlink":
        state.rename(tmp_path / "real-state")
        state.symlink_to(tmp_path / "real-state")
    elif problem.startswith("replica slot"):
        folder = state / "instances" / "box"
        folder.mkdir(mode=0o700)
        slot = folder / ("state.1.db" if "database" in problem else "watcher.1.lock")
        slot.touch(mode=0o600)
        os.chown(slot, NOBODY, NOBODY)
    elif problem == "hash slot owned by nobody":
        (state / "hash-slots").mkdir(mode=0o700)
        (state / "hash-slots" / "slot-0.lock").touch()
        os.chown(state / "hash-slots" / "slot-0.lock", NOBODY, NOBODY)
    else:
        (state / "spool" / "messages").mkdir(parents=True, mode=0o700)
        (state / "spool" / "messages" / "1_x.file_events.msg").write_text("{}")
        os.chown(state / "spool" / "messages" / "1_x.file_events.msg", NOBODY, NOBODY)
    path = roster(tmp_path, [{"id": "box", "directory": str(inbox)}])
    for command in ("check", "run"):
        result = run_cli(command, "-c", str(path), timeout=30)
        assert result.returncode == 2, (command, result.stdout + result.stderr)
        error = result.stderr.strip()
        assert error.startswith("multiwatch: error: ") and "\n" not in error, error
        assert expected in error, error


def test_the_watcher_refuses_a_database_another_user_owns(tmp_path: Path) -> None:
    """The watcher's own open (StateStore) refuses a state.db it does not own, even when it
    appears after run's check (an instance added by SIGHUP)."""
    forged = _forge_database(tmp_path / "state", "late")
    with pytest.raises(StateError, match="belongs to nobody"):
        StateStore(str(forged))


def test_state_backup_copies_are_private(tmp_path: Path, inbox: Path) -> None:
    """`state backup` writes its copies 0600 into a 0700 directory it creates."""
    state = tmp_path / "state"
    db = Path(state_db_path(str(state), "box"))
    db.parent.mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    (state / "instances").chmod(0o700)
    connect(str(db)).close()
    path = roster(tmp_path, [{"id": "box", "directory": str(inbox)}])
    result = run_cli("state", "backup", "-c", str(path), "--to", str(tmp_path / "copies"))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "copies").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "copies" / "box.state.db").stat().st_mode) == 0o600


def test_entries_removed_while_run_checks_them_are_not_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool message consumed, a supervisor's lock released or a -wal closed (another
    replica on the same state_dir) between the listing and its check: run goes on."""
    state = tmp_path / "state"
    state_dir.prepare(str(state), ["box"], embedded=True)
    real_entries = state_dir._entries
    monkeypatch.setattr(state_dir, "_entries",
                        lambda fd: [*real_entries(fd), "gone-meanwhile.lock"])
    state_dir.prepare(str(state), ["box"], embedded=True)
    state_dir.prepare(str(state), ["box"], embedded=True, policy=state_dir.VERIFY)
