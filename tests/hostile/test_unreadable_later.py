"""What the watcher could not read or list at first is announced once it can be.

Root ignores permission bits, so the watcher runs with CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH removed (tests/support/privilege.py's setpriv approach).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.hostile import UnprivilegedMultiwatch, is_log, roster
from tests.support.process import LogLine

needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None and os.geteuid() == 0,
                                   reason="needs util-linux setpriv to drop root's DAC override")


def _discovered(path: Path) -> Callable[[LogLine], bool]:
    return lambda line: is_log(line, "file discovered", "inbox") and line.get("path") == str(path)


def _warned(path: Path) -> Callable[[LogLine], bool]:
    return lambda line: line.get("path") == str(path) and line.get("level") == "WARNING"


def _about(lines: list[LogLine], path: Path) -> list[LogLine]:
    return [line for line in lines if line.get("path") == str(path)
            and line.get("level") in ("WARNING", "ERROR")]


@needs_setpriv
def test_unlistable_directory_made_listable_has_its_files_announced(tmp_path: Path) -> None:
    """A subdirectory nobody may list at start (mode 0) is warned about once; chmod 755
    later gets the files inside announced, without a restart or a periodic scan."""
    inbox = tmp_path / "inbox"
    (inbox / "locked" / "deeper").mkdir(parents=True)
    (inbox / "locked" / "inner.mp3").write_bytes(b"hidden at first")
    (inbox / "locked" / "deeper" / "more.mp3").write_bytes(b"deeper")
    (inbox / "locked").chmod(0)
    mw = UnprivilegedMultiwatch(["-c", str(roster(tmp_path, [{"id": "inbox",
                                                              "directory": str(inbox)}]))])
    try:
        mw.wait_watching("inbox")
        mw.wait_for_log(_warned(inbox / "locked"))
        (inbox / "locked").chmod(0o755)
        mw.wait_for_log(_discovered(inbox / "locked" / "inner.mp3"), timeout=20)
        mw.wait_for_log(_discovered(inbox / "locked" / "deeper" / "more.mp3"), timeout=20)
        assert len(_about(list(mw.lines), inbox / "locked")) == 1
    finally:
        (inbox / "locked").chmod(0o755)
        mw.cleanup()


@needs_setpriv
def test_file_unreadable_for_a_while_is_announced_once_readable(tmp_path: Path) -> None:
    """A file created mode 0200 is warned about once, and announced once chmod 644 makes
    it readable (no new write, so no content event: the permission change or a retry)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    mw = UnprivilegedMultiwatch(["-c", str(roster(tmp_path, [{"id": "inbox",
                                                              "directory": str(inbox)}]))])
    secret = inbox / "secret.mp3"
    try:
        mw.wait_watching("inbox")
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o200)
        os.write(fd, b"later")
        os.close(fd)
        mw.wait_for_log(_warned(secret))
        secret.chmod(0o644)
        mw.wait_for_log(_discovered(secret), timeout=20)
        assert len(_about(list(mw.lines), secret)) == 1
    finally:
        mw.cleanup()


@needs_setpriv
def test_directory_unlistable_when_it_arrived_is_watched_once_listable(tmp_path: Path) -> None:
    """A directory moved in with mode 0 cannot be watched then; once chmod 755 has its
    files announced, files written in it and below it later are announced too."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    staged = tmp_path / "staged"
    (staged / "deeper").mkdir(parents=True)
    (staged / "first.mp3").write_bytes(b"moved in")
    staged.chmod(0)
    mw = UnprivilegedMultiwatch(["-c", str(roster(tmp_path, [{"id": "inbox",
                                                              "directory": str(inbox)}]))])
    locked = inbox / "locked"
    try:
        mw.wait_watching("inbox")
        staged.rename(locked)
        mw.wait_for_log(_warned(locked))
        locked.chmod(0o755)
        mw.wait_for_log(_discovered(locked / "first.mp3"), timeout=20)
        (locked / "later.mp3").write_bytes(b"written once listable")
        (locked / "deeper" / "below.mp3").write_bytes(b"and below")
        mw.wait_for_log(_discovered(locked / "later.mp3"), timeout=20)
        mw.wait_for_log(_discovered(locked / "deeper" / "below.mp3"), timeout=20)
    finally:
        for directory in (staged, locked):
            if directory.exists():
                directory.chmod(0o755)
        mw.cleanup()
