"""Permissions: what the watcher may not read is reported once and counted, never fatal.

Root ignores permission bits, so the watcher runs with CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH removed (tests/support/privilege.py's setpriv approach).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from multiwatch.watcher.raw_event import EventKind, RawEvent
from tests.support.consumer import wait_for
from tests.support.hostile import (
    HostileMultiwatch,
    UnprivilegedMultiwatch,
    http_request,
    instance_view,
    is_log,
    observed_pipeline,
    roster,
)
from tests.support.process import LogLine, free_port
from tests.watcher.test_pipeline import drain

needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None and os.geteuid() == 0,
                                   reason="needs util-linux setpriv to drop root's DAC override")


def _errors_total(port: int, instance_id: str) -> float | None:
    code, text, _ = http_request(port, "/metrics")
    if code != 200:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "multiwatch_errors_total"
                    and sample.labels.get("instance_id") == instance_id):
                return sample.value
    return None


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """inbox/ with readable files and one unreadable file."""
    inbox = tmp_path / "inbox"
    (inbox / "open").mkdir(parents=True)
    (inbox / "ok.mp3").write_bytes(b"readable")
    (inbox / "open" / "fine.mp3").write_bytes(b"fine")
    (inbox / "secret.mp3").write_bytes(b"unreadable")
    (inbox / "secret.mp3").chmod(0)
    return inbox


@pytest.fixture
def locked_tree(inbox: Path) -> Iterator[Path]:
    """The inbox plus a subdirectory nobody but root may list."""
    (inbox / "locked").mkdir()
    (inbox / "locked" / "inner.mp3").write_bytes(b"hidden")
    (inbox / "locked").chmod(0)
    try:
        yield inbox
    finally:
        (inbox / "locked").chmod(0o755)


def _discovered(path: str) -> Callable[[LogLine], bool]:
    return lambda line: is_log(line, "file discovered", "inbox") and line.get("path") == path


def _warnings(mw: HostileMultiwatch, instance_id: str) -> list[LogLine]:
    return [line for line in list(mw.lines) if line.get("instance_id") == instance_id
            and line.get("level") in ("WARNING", "ERROR", "CRITICAL")]


def _start(tmp_path: Path, inbox: Path, port: int, **defaults: object) -> HostileMultiwatch:
    path = roster(tmp_path, [{"id": "inbox", "directory": str(inbox)}], http_port=port,
                  defaults=defaults)
    return UnprivilegedMultiwatch(["-c", str(path)])


@needs_setpriv
def test_unreadable_file_is_logged_once_counted_and_not_fatal(
        tmp_path: Path, inbox: Path) -> None:
    """An unreadable file is logged once however often it changes, counted in
    multiwatch_errors_total, and everything readable is still announced by the same watcher."""
    port = free_port()
    mw = _start(tmp_path, inbox, port)
    try:
        watching = mw.wait_watching("inbox")
        for name in ("ok.mp3", "open/fine.mp3"):
            mw.wait_for_log(_discovered(str(inbox / name)))
        secret = str(inbox / "secret.mp3")
        mw.wait_for_log(lambda x: x.get("path") == secret and x.get("level") == "WARNING")
        for i in range(5):  # every change is an event for the unreadable file
            os.utime(inbox / "secret.mp3", ns=(10**18 + i, 10**18 + i))
            marker = inbox / "open" / f"after{i}.mp3"
            marker.write_bytes(b"after %d" % i)
            mw.wait_for_log(_discovered(str(marker)))
        about_secret = [w for w in _warnings(mw, "inbox") if w.get("path") == secret]
        assert len(about_secret) == 1, about_secret
        assert "ermission denied" in about_secret[0]["message"]
        wait_for(lambda: (_errors_total(port, "inbox") or 0) >= 1, timeout=15,
                 message="unreadable file not counted in multiwatch_errors_total")
        view = instance_view(port, "inbox")
        assert view["state"] == "RUNNING" and view["pid"] == watching["pid"]
        assert view["restarts"] == 0
    finally:
        mw.cleanup()


@needs_setpriv
def test_unlistable_subdirectory_is_logged_once_and_the_rest_stays_watched(
        tmp_path: Path, locked_tree: Path) -> None:
    """A subdirectory the watcher may not list is logged once (not at every rescan), counted,
    and the rest of the tree stays watched by inotify and announced."""
    port = free_port()
    inbox = locked_tree
    mw = _start(tmp_path, inbox, port, scan_interval_seconds=0.5)
    try:
        watching = mw.wait_watching("inbox")
        mw.wait_for_log(lambda x: is_log(x, "file discovered", "inbox")
                        and x["path"].endswith("/fine.mp3"))
        scans = 0
        while scans < 3:  # three periodic reconcile scans meet the locked directory again
            line = mw.wait_for_log(lambda x: is_log(x, "periodic reconcile scan", "inbox"),
                                   after=len(mw.lines))
            scans += 1
            assert line
        (inbox / "open" / "new.mp3").write_bytes(b"new")
        mw.wait_for_log(lambda x: is_log(x, "file discovered", "inbox")
                        and x["path"].endswith("/open/new.mp3"))
        about_locked = [w for w in _warnings(mw, "inbox")
                        if str(w.get("path", "")).startswith(str(inbox / "locked"))]
        assert len(about_locked) == 1, [w["message"] for w in about_locked]
        assert not [w for w in _warnings(mw, "inbox") if "polling" in w["message"]]
        assert "inner.mp3" not in "\n".join(mw.raw)
        view = instance_view(port, "inbox")
        assert view["state"] == "RUNNING" and view["pid"] == watching["pid"]
        assert (_errors_total(port, "inbox") or 0) >= 1
    finally:
        mw.cleanup()


# ---- least privilege ----------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_http_endpoint_listens_on_loopback_only_by_default(tmp_path: Path) -> None:
    """With no http.listen and no MULTIWATCH_HTTP_LISTEN, the supervisor's only listening
    socket is 127.0.0.1:9120, and the watchers listen on nothing."""
    if not _port_free(9120):
        pytest.skip("the default port 9120 is taken on this machine right now")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = roster(tmp_path, [{"id": "inbox", "directory": str(inbox)}])
    mw = HostileMultiwatch(["-c", str(path)], unset=["MULTIWATCH_HTTP_LISTEN"])
    try:
        watching = mw.wait_watching("inbox")
        mw.wait_for_log(lambda x: is_log(x, "HTTP endpoint listening"))
        supervisor = psutil.Process(mw.pid)
        listening = [c.laddr for c in supervisor.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        child = psutil.Process(watching["pid"])
        child_listening = [c.laddr for c in child.net_connections(kind="all")
                           if c.status == psutil.CONN_LISTEN]
    finally:
        mw.cleanup()
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", 9120)]
    assert child_listening == []


def test_http_endpoint_has_no_write_operations(tmp_path: Path) -> None:
    """POST, PUT, PATCH and DELETE on every path answer 405 (Allow: GET) and change nothing."""
    port = free_port()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    mw = HostileMultiwatch(["-c", str(roster(tmp_path, [{"id": "inbox", "directory": str(inbox)}],
                                             http_port=port))])
    try:
        watching = mw.wait_watching("inbox")
        wait_for(lambda: instance_view(port, "inbox").get("state") == "RUNNING", timeout=30)
        for path in ("/", "/status", "/metrics", "/healthz", "/readyz", "/stop", "/reload"):
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                code, _, headers = http_request(port, path, method)
                assert code == 405, (method, path, code)
                assert headers.get("Allow") == "GET"
        view = instance_view(port, "inbox")
        assert view["state"] == "RUNNING" and view["pid"] == watching["pid"]
        assert mw.process.poll() is None
    finally:
        mw.cleanup()


_WRITES = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
           "os.utime", "os.truncate", "os.link", "os.symlink", "shutil.rmtree",
           "os.chflags", "os.setxattr", "os.removexattr")


class _AuditRecorder:
    """Records, while `active`, every open and every modifying call on paths under `root`
    (PEP 578 audit events: they cover builtins.open, os.open and the os.* calls alike)."""

    def __init__(self) -> None:
        self.root = ""
        self.active = False
        self.opens: list[tuple[str, int]] = []
        self.writes: list[tuple[str, str]] = []

    def __call__(self, event: str, args: tuple[object, ...]) -> None:
        if not self.active or not args:
            return
        path = args[0]
        if isinstance(path, (str, bytes)):
            text = os.fsdecode(path)
            if not text.startswith(self.root):
                return
            if event == "open":
                flags = args[2] if len(args) > 2 and isinstance(args[2], int) else -1
                self.opens.append((text, flags))
            elif event in _WRITES:
                self.writes.append((event, text))


_RECORDER = _AuditRecorder()
_HOOKED: list[bool] = []


def test_watched_files_are_only_ever_opened_read_only(tmp_path: Path) -> None:
    """Through discovery, modification, rename, deletion and a rescan, the watcher opens files
    in the watched tree only O_RDONLY|O_NOFOLLOW (never create, truncate, append or write) and
    never renames, removes, chmods or touches anything there.  The one exception to
    O_NOFOLLOW is the watched directory itself, opened to be listed: a root configured as a
    symlink is followed by design."""
    if not _HOOKED:  # audit hooks cannot be removed: one, inert unless active, per process
        sys.addaudithook(_RECORDER)
        _HOOKED.append(True)
    with observed_pipeline(tmp_path) as (announced, root):
        _RECORDER.root, _RECORDER.opens, _RECORDER.writes = str(root), [], []

        def step(wait: float = 0.01) -> None:
            _RECORDER.active = True
            try:
                announced.pipeline.step(wait)
            finally:
                _RECORDER.active = False
            announced.bodies.extend(drain(announced.outbox))

        announced.step = step  # type: ignore[method-assign]
        (root / "old.mp3").write_bytes(b"present at start")
        announced.pipeline.request_scan()
        (root / "new.mp3").write_bytes(b"new")
        announced.until(lambda bodies: len(bodies) >= 2)
        (root / "new.mp3").write_bytes(b"changed")
        announced.until(lambda bodies: len(bodies) >= 3)
        os.rename(root / "new.mp3", root / "renamed.mp3")
        announced.until(lambda bodies: len(bodies) >= 4)
        (root / "old.mp3").unlink()
        announced.until(lambda bodies: len(bodies) >= 5)
        announced.pipeline.notifications.put(RawEvent(EventKind.OVERFLOW, True, ""))
        announced.settled()
    assert [b["event_type"] for b in announced.bodies] == [
        "file_discovered", "file_discovered", "file_modified", "file_moved", "file_deleted"]
    assert _RECORDER.opens, "the audit hook saw no open at all"
    for path, flags in _RECORDER.opens:
        assert flags & os.O_ACCMODE == os.O_RDONLY, (path, flags)
        assert not flags & (os.O_CREAT | os.O_TRUNC | os.O_APPEND), (path, flags)
        assert flags & os.O_NOFOLLOW or (path == str(root) and flags & os.O_DIRECTORY), (
            path, flags)
    assert _RECORDER.writes == []


def test_a_read_only_mount_is_watched_normally(tmp_path: Path) -> None:
    """A watched tree mounted read-only (a bind mount with ro) is scanned and announced like
    any other: nothing in the watcher needs to write there."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    source = tmp_path / "source"
    source.mkdir()
    (source / "album").mkdir()
    (source / "album" / "track.flac").write_bytes(b"lossless")
    root = tmp_path / "w"
    root.mkdir()
    bind = subprocess.run(["mount", "--bind", str(source), str(root)], capture_output=True,
                          text=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bind.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True)
        with pytest.raises(OSError):
            (root / "probe").write_bytes(b"x")
        with observed_pipeline(tmp_path) as (announced, watched):
            announced.pipeline.request_scan()
            announced.until(lambda bodies: len(bodies) >= 1)
            announced.settled()
            (source / "album" / "second.flac").write_bytes(b"more")  # written beside the mount
            announced.pipeline.request_scan()
            announced.until(lambda bodies: len(bodies) >= 2)
    finally:
        subprocess.run(["umount", str(root)], check=False)
    assert watched == root
    assert sorted(announced.paths()) == ["album/second.flac", "album/track.flac"]
