"""A watched share unmounted under a real `multiwatch run`: nothing is announced as deleted.

Real ext4 filesystems on loop devices (root only, as in CI), a real RabbitMQ and a consumer
counting what arrives; every mount and loop device is undone in teardown.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_operator import _get, _roster, _status
from tests.support.consumer import Received, collect, declare_queue, wait_for
from tests.support.mounts import Mounts, needs_root
from tests.support.process import Multiwatch, free_port

pytestmark = needs_root

QUEUE = "mount_events"


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    made = Mounts()
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def share(tmp_path: Path, mounts: Mounts) -> tuple[Path, str]:
    """An ext4 filesystem holding a.txt, b.txt and c.txt, mounted at tmp_path/share."""
    device = mounts.attach(mounts.ext4_image(tmp_path / "share.img"))
    root = mounts.mount(device, tmp_path / "share")
    (root / "lost+found").rmdir()  # (mkfs made it; it is no user file)
    for name in ("a.txt", "b.txt", "c.txt"):
        (root / name).write_text(f"{name} on the share\n")
    return root, device


def _names(messages: list[Received], event_type: str) -> list[str]:
    return [m.body["file_info"]["name"] for m in messages if m.body["event_type"] == event_type]


def _instance(port: int) -> dict[str, Any]:
    return dict(_status(port).get("instances", {}).get("share", {}))


def _metric(port: int, name: str) -> float | None:
    _, text = _get(port, "/metrics")
    found = re.search(rf'^{name}{{instance_id="share"}} (\S+)$', text, flags=re.MULTILINE)
    return float(found.group(1)) if found else None


def _start(tmp_path: Path, broker_url: str, root: Path, port: int,
           **options: Any) -> Multiwatch:
    declare_queue(broker_url, QUEUE)  # before anything is published
    roster = _roster(tmp_path, port, [{"id": "share", "directory": str(root), **options}],
                     broker_url)
    return Multiwatch(["-c", str(roster)])


def _wait_unmounted_reported(mw: Multiwatch, port: int, after: int = 0) -> None:
    """WAITING with reason `directory unmounted`, /readyz 503 and the metric at 1."""
    wait_for(lambda: (_instance(port).get("state"), _instance(port).get("reason"))
             == ("WAITING", "directory unmounted"), timeout=30,
             message="the instance never showed WAITING / directory unmounted")
    assert _get(port, "/readyz")[0] == 503
    wait_for(lambda: _metric(port, "multiwatch_instance_unmounted") == 1.0, timeout=15,
             message="multiwatch_instance_unmounted never became 1")


def _wait_running(port: int) -> None:
    wait_for(lambda: _instance(port).get("state") == "RUNNING"
             and _get(port, "/readyz")[0] == 200, timeout=30,
             message="the instance never became RUNNING and ready again")
    wait_for(lambda: _metric(port, "multiwatch_instance_unmounted") == 0.0, timeout=15,
             message="multiwatch_instance_unmounted never went back to 0")


@pytest.mark.parametrize(("observer", "lazy"), [("inotify", False), ("polling", True)])
def test_an_unmount_while_running_announces_no_deletion_and_the_return_reconciles(
        tmp_path: Path, broker_url: str, mounts: Mounts, share: tuple[Path, str],
        observer: str, lazy: bool) -> None:
    """umount (or umount -l under polling) of the watched share: WAITING `directory
    unmounted`, /readyz 503, the metric 1, no file_deleted, files written into the bare
    mount point not announced; mounted again: RUNNING, the file written on the share
    meanwhile is announced, and still no deletion."""
    root, device = share
    port = free_port()
    mw = _start(tmp_path, broker_url, root, port, observer=observer,
                polling_interval_seconds=0.2)
    try:
        got = collect(broker_url, QUEUE, timeout=30,
                      until=lambda ms: len(_names(ms, "file_discovered")) == 3)
        assert sorted(_names(got, "file_discovered")) == ["a.txt", "b.txt", "c.txt"]

        before = len(mw.lines)
        mounts.umount(root, lazy=lazy)
        warning = mw.wait_for_log(lambda line: line.get("message") == "directory unmounted",
                                  after=before)
        assert warning["level"] == "WARNING"
        assert (warning["path"], warning["mount_point"]) == (str(root), str(root))
        _wait_unmounted_reported(mw, port)
        (root / "bare.txt").write_text("written into the bare mount point\n")

        # Meanwhile the share changes elsewhere (another client of the NAS).
        aside = mounts.mount(device, tmp_path / "aside")
        (aside / "new.txt").write_text("written on the share while it was away\n")
        mounts.umount(aside)
        (root / "bare.txt").unlink()  # (the mount hides it anyway)
        (root / "bare-2.txt").write_text("also in the bare mount point\n")

        before = len(mw.lines)
        mounts.mount(device, root)
        mw.wait_for_log(lambda line: line.get("message", "").startswith("directory mounted"),
                        after=before)
        _wait_running(port)
        (root / "barrier.txt").write_text("after the return\n")
        got = collect(broker_url, QUEUE, timeout=30,
                      until=lambda ms: "barrier.txt" in _names(ms, "file_discovered"))
        assert sorted(_names(got, "file_discovered")) == ["barrier.txt", "new.txt"]
        assert _names(got, "file_deleted") == []
        assert not [line for line in mw.lines if "bare" in str(line.get("path", ""))]
        assert _instance(port)["heartbeat"]["events"].get("file_deleted", 0) == 0
    finally:
        mw.cleanup()


def test_unmounted_while_stopped_the_next_start_waits_and_deletes_nothing(
        tmp_path: Path, broker_url: str, mounts: Mounts, share: tuple[Path, str]) -> None:
    """Stop, umount, start: the instance waits (`directory unmounted`) instead of announcing
    three deletions; once the share is back it runs and announces only what is new."""
    root, device = share
    port = free_port()
    mw = _start(tmp_path, broker_url, root, port)
    try:
        collect(broker_url, QUEUE, timeout=30,
                until=lambda ms: len(_names(ms, "file_discovered")) == 3)
        assert mw.terminate() == 0
    finally:
        mw.cleanup()
    mounts.umount(root)
    (root / "bare.txt").write_text("in the bare mount point\n")

    mw = _start(tmp_path, broker_url, root, port)
    try:
        line = mw.wait_for_log(lambda line: str(line.get("message", "")).startswith(
            "directory unmounted; waiting"))
        assert line["level"] == "WARNING" and str(root) in line["reason"]
        _wait_unmounted_reported(mw, port)

        before = len(mw.lines)
        mounts.mount(device, root)
        (root / "d.txt").write_text("new on the share\n")
        mw.wait_for_log(lambda line: line.get("message", "").startswith("directory mounted"),
                        after=before)
        _wait_running(port)
        got = collect(broker_url, QUEUE, timeout=30,
                      until=lambda ms: "d.txt" in _names(ms, "file_discovered"))
        assert _names(got, "file_discovered") == ["d.txt"]
        assert _names(got, "file_deleted") == []
    finally:
        mw.cleanup()


def test_mount_required_waits_for_the_mount_at_start(
        tmp_path: Path, broker_url: str, mounts: Mounts) -> None:
    """mount_required: true on a plain directory (the share failed at boot): nothing of the
    bare directory is announced; mounted, the share's files are."""
    root = tmp_path / "share"
    root.mkdir()
    (root / "bare.txt").write_text("not the share\n")
    port = free_port()
    mw = _start(tmp_path, broker_url, root, port, mount_required=True)
    try:
        _wait_unmounted_reported(mw, port)
        device = mounts.attach(mounts.ext4_image(tmp_path / "share.img"))
        aside = mounts.mount(device, tmp_path / "aside")
        (aside / "on-share.txt").write_text("on the share\n")
        mounts.umount(aside)
        mounts.mount(device, root)
        _wait_running(port)
        got = collect(broker_url, QUEUE, timeout=30,
                      until=lambda ms: "on-share.txt" in _names(ms, "file_discovered"))
        assert "bare.txt" not in _names(got, "file_discovered")
    finally:
        mw.cleanup()


def test_a_sub_mount_unmounted_while_running_announces_no_deletion_and_comes_back(
        tmp_path: Path, broker_url: str, mounts: Mounts) -> None:
    """one_filesystem: false follows an ext4 sub-mount: its files are announced; unmounted,
    a periodic scan announces none of them deleted, nor what is written into its bare mount
    point, while the rest of the tree goes on; mounted again, what changed on it meanwhile
    is announced."""
    root = tmp_path / "tree"
    (root / "local").mkdir(parents=True)
    device = mounts.attach(mounts.ext4_image(tmp_path / "inner.img"))
    inner = mounts.mount(device, root / "inner")
    (inner / "lost+found").rmdir()
    (inner / "on-inner.txt").write_text("on the sub-mount\n")
    (root / "local" / "here.txt").write_text("local\n")
    port = free_port()
    mw = _start(tmp_path, broker_url, root, port, scan_interval_seconds=1)
    try:
        got = collect(broker_url, QUEUE, timeout=30,
                      until=lambda ms: len(_names(ms, "file_discovered")) == 2)
        assert sorted(_names(got, "file_discovered")) == ["here.txt", "on-inner.txt"]

        before = len(mw.lines)
        mounts.umount(inner)
        line = mw.wait_for_log(lambda line: line.get("message") == "directory unmounted",
                               after=before)
        assert line["path"] == str(inner)
        wait_for(lambda: _metric(port, "multiwatch_instance_unmounted") == 1.0, timeout=15,
                 message="multiwatch_instance_unmounted never became 1")
        (inner / "bare.txt").write_text("in the bare mount point\n")
        after_scan = len(mw.lines)
        mw.wait_for_log(lambda line: line.get("message") == "periodic reconcile scan",
                        after=after_scan)
        (root / "local" / "still.txt").write_text("the rest goes on\n")
        got = collect(broker_url, QUEUE, timeout=30,
                      until=lambda ms: "still.txt" in _names(ms, "file_discovered"))
        assert _names(got, "file_discovered") == ["still.txt"]
        assert _instance(port)["state"] == "RUNNING"

        aside = mounts.mount(device, tmp_path / "aside")
        (aside / "new.txt").write_text("written on it while it was away\n")
        mounts.umount(aside)
        (inner / "bare.txt").unlink()
        before = len(mw.lines)
        mounts.mount(device, inner)
        mw.wait_for_log(lambda line: line.get("message", "").startswith("directory mounted")
                        and line.get("path") == str(inner), after=before)
        (inner / "barrier.txt").write_text("after the return\n")
        got += collect(broker_url, QUEUE, timeout=30,
                       until=lambda ms: "barrier.txt" in _names(ms, "file_discovered"))
        assert sorted(_names(got, "file_discovered")) == ["barrier.txt", "new.txt", "still.txt"]
        assert _names(got, "file_deleted") == []
        wait_for(lambda: _metric(port, "multiwatch_instance_unmounted") == 0.0, timeout=15,
                 message="multiwatch_instance_unmounted never went back to 0")
    finally:
        mw.cleanup()


@pytest.mark.parametrize("one_filesystem", [True, False])
def test_one_filesystem_decides_whether_a_sub_mount_is_announced(
        tmp_path: Path, broker_url: str, mounts: Mounts, one_filesystem: bool) -> None:
    """A tmpfs mounted inside the tree: its files (present at start and written later) are
    announced with one_filesystem: false, never with true (find -xdev)."""
    root = tmp_path / "tree"
    (root / "local").mkdir(parents=True)
    inner = mounts.tmpfs(root / "inner")
    (inner / "at-start.txt").write_text("present at start\n")
    port = free_port()
    mw = _start(tmp_path, broker_url, root, port, one_filesystem=one_filesystem)
    try:
        mw.wait_watching("share")
        (inner / "later.txt").write_text("written while watched\n")
        (root / "local" / "barrier.txt").write_text("after the sub-mount's files\n")
        got = collect(broker_url, QUEUE, timeout=30,
                      until=lambda ms: "barrier.txt" in _names(ms, "file_discovered") and (
                          one_filesystem or len(_names(ms, "file_discovered")) == 3))
        expected = ["barrier.txt"] if one_filesystem else ["at-start.txt", "barrier.txt",
                                                           "later.txt"]
        assert sorted(_names(got, "file_discovered")) == expected
    finally:
        mw.cleanup()


def test_a_watcher_waiting_for_its_mount_stops_at_once_on_sigterm(
        tmp_path: Path, broker_url: str) -> None:
    """SIGTERM to a supervisor whose watcher waits for its mount: exit 0 well within the
    stop timeout, the watcher saying it stopped."""
    root = tmp_path / "share"
    root.mkdir()
    port = free_port()
    mw = _start(tmp_path, broker_url, root, port, mount_required=True)
    try:
        _wait_unmounted_reported(mw, port)
        assert mw.terminate(timeout=10) == 0
        assert any(line.get("message") == "stopped" and line.get("instance_id") == "share"
                   for line in mw.lines)
    finally:
        mw.cleanup()
