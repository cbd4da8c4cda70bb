"""`multiwatch check --connect` against a real RabbitMQ and a real read-only mount (the
inotify limits: tests/test_check_inotify.py)."""

from __future__ import annotations

import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import free_port, run_cli, write_roster

CHECK_BUDGET = 30.0  # connect_timeout 2 s per step: far below this even for three bad URLs


def _with_password(url: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _roster(tmp_path: Path, url: str | None, *, state_dir: Path | None = None) -> Path:
    watched = tmp_path / "in"
    watched.mkdir(exist_ok=True)
    roster: dict[str, Any] = {
        "state_dir": str(state_dir or tmp_path / "state"),
        "instances": [{"id": "docs", "directory": str(watched)}],
    }
    if url is not None:
        roster["broker"] = {"url": url, "connect_timeout_seconds": 2}
    return write_roster(tmp_path / "roster.yaml", roster)


def _check(roster: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = run_cli("check", "--connect", "-c", str(roster), timeout=CHECK_BUDGET + 10)
    return done, time.monotonic() - started


def test_a_working_broker_passes_with_a_summary(tmp_path: Path, broker_url: str) -> None:
    """Everything answers: exit 0 and a summary naming the broker, state dir and inotify."""
    done, _ = _check(_roster(tmp_path, broker_url))
    assert done.returncode == 0, done.stderr
    assert "logged in" in done.stdout and "state directory" in done.stdout
    assert "inotify: 1 instances" in done.stdout
    assert "guest:guest" not in done.stdout + done.stderr


def test_each_broken_url_is_one_line_in_words(tmp_path: Path, broker_url: str) -> None:
    """A wrong password, a closed port and an unknown host, in one cluster list beside a good
    URL: exit 2, one line per bad URL saying what is wrong, the password masked, in time."""
    wrong = _with_password(broker_url, "not-the-password")
    closed = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    unknown = "amqp://guest:guest@nonexistent.invalid:5672/"
    done, took = _check(_roster(tmp_path, f"{broker_url};{wrong};{closed};{unknown}"))
    assert done.returncode == 2
    problems = done.stderr.splitlines()
    assert len(problems) == 3, problems
    wrong_line, closed_line, unknown_line = problems
    assert "access refused (wrong user or password)" in wrong_line
    assert "as user 'guest'" in wrong_line and "not-the-password" not in done.stderr
    assert "connection refused" in closed_line
    assert "nonexistent.invalid" in unknown_line and "host not found" in unknown_line
    assert "Error" not in done.stderr  # no Python exception names
    assert took < CHECK_BUDGET


def test_a_missing_vhost_is_a_problem_and_a_missing_queue_is_not(
        tmp_path: Path, broker_url: str) -> None:
    """A vhost that does not exist is one line in words (exit 2); an exchange and queue not
    declared yet pass (run declares them), and are not created by the check."""
    parts = urllib.parse.urlsplit(broker_url)
    missing_vhost = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/mw-no-such-vhost",
                                             "", ""))
    done, _ = _check(_roster(tmp_path, missing_vhost))
    assert done.returncode == 2
    [problem] = done.stderr.splitlines()
    assert "access refused to the virtual host (no permission, or no such vhost)" in problem
    assert "/mw-no-such-vhost as user 'guest'" in problem and "guest:guest" not in problem

    done, _ = _check(_roster(tmp_path, broker_url))  # a fresh vhost: nothing declared yet
    assert done.returncode == 0, done.stderr
    assert ("not there yet, run declares them: exchange 'file_events', queue 'file_events'"
            in done.stdout)
    from kombu import Connection

    with Connection(broker_url) as admin, pytest.raises(Exception, match="NOT_FOUND"):
        admin.channel().exchange_declare("file_events", "topic", passive=True)


def test_a_user_without_configure_permission_fails_check_connect(
        tmp_path: Path, broker_url: str, rabbitmq: Any) -> None:
    """A user who may log in, publish and read but not configure passes a passive declare,
    yet run's declare is refused: check --connect says so (exit 2), not 'everything run
    needs answered'; nothing is created."""
    from kombu import Connection, Exchange, Queue

    from tests.support.hostile import broker_user, url_with_user

    if not rabbitmq.has_rabbitmqctl:
        pytest.skip("needs rabbitmqctl for the test broker")
    with Connection(broker_url) as admin:  # the objects exist, as a site's admin made them
        Queue("file_events", Exchange("file_events", type="topic"),
              routing_key="file.#")(admin.channel()).declare()
    with broker_user(rabbitmq, broker_url, "pw", permissions=("^$", ".*", ".*")) as user:
        done, _ = _check(_roster(tmp_path, url_with_user(broker_url, user, "pw")))
    assert done.returncode == 2, done.stdout
    [problem] = done.stderr.splitlines()
    assert "access refused (the user lacks a permission)" in problem
    assert "exchange 'file_events'" in problem and f"as user '{user}'" in problem


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A real read-only tmpfs mount (root only), unmounted afterwards."""
    mount_point = Path(tempfile.mkdtemp(prefix="mw-ro-", dir=tmp_path))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a read-only tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_an_unwritable_state_dir_fails_check_connect(
        tmp_path: Path, read_only_dir: Path) -> None:
    """A state_dir on a read-only file system is named, with the reason, exit 2."""
    done, _ = _check(_roster(tmp_path, None, state_dir=read_only_dir / "state"))
    assert done.returncode == 2
    assert f"state directory {read_only_dir / 'state'}" in done.stderr
    assert "read-only file system" in done.stderr.lower()


@pytest.fixture
def read_only_state(tmp_path: Path) -> Iterator[Path]:
    """A state_dir a first run created, then bind-mounted read-only (a remount after a disk
    error); unmounted afterwards."""
    state = tmp_path / "state"
    (state / "instances" / "docs").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    (state / "instances").chmod(0o700)
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        yield state
    finally:
        subprocess.run(["umount", str(state)], check=True)


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_read_only_state_dir_is_one_clear_error(
        tmp_path: Path, read_only_state: Path, command: str) -> None:
    """Plain check and run both say the state directory is read-only (exit 2), in one line
    and without a traceback, instead of passing check and crashing at run."""
    roster = _roster(tmp_path, None, state_dir=read_only_state)
    done = run_cli(command, "-c", str(roster), timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"multiwatch: error: cannot use the state directory "
                           f"{read_only_state}: it is on a read-only file system\n")


@pytest.mark.parametrize("command", ["check", "run"])
def test_an_instance_folder_run_cannot_write_is_one_clear_error(
        tmp_path: Path, command: str) -> None:
    """A state_dir that is writable but holds an instance folder this user may not write
    (chmod 500): check fails too, and both name that folder in one line (exit 2), where
    check passed and run said a bare "Permission denied"."""
    from tests.support.privilege import run_unprivileged
    from tests.support.process import multiwatch_command

    state = tmp_path / "state"
    folder = state / "instances" / "docs"
    folder.mkdir(parents=True)
    for path in (state, state / "instances"):
        path.chmod(0o700)
    folder.chmod(0o500)
    roster = _roster(tmp_path, None, state_dir=state)
    done = run_unprivileged(["env", "MULTIWATCH_HTTP_LISTEN=off",
                             *multiwatch_command(command, "-c", str(roster))])
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == (f"multiwatch: error: cannot use the state directory {state}: "
                           f"{folder} is not writable by this user\n")
