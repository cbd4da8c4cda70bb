"""Mount awareness: what filesystem a watched root lives on, and what the state remembers."""

from __future__ import annotations

import multiprocessing
import os
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.observers.api import BaseObserver

from multiwatch.config import BrokerConfig, InstanceConfig, SupervisorConfig
from multiwatch.supervisor.lifecycle import Child, State
from multiwatch.supervisor.metrics import fleet_metrics
from multiwatch.supervisor.run_lock import open_watcher_lock, try_lock_exclusive
from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.filters import PathFilter
from multiwatch.watcher.mount import (
    META_KEY,
    SUBMOUNT_CHECK_SECONDS,
    UNMOUNTED,
    Mount,
    MountEntry,
    MountGuard,
    MountTable,
    containing_mount,
    parse_mountinfo,
)
from multiwatch.watcher.observe import directory_watcher, start_observer
from multiwatch.watcher.raw_event import UNMOUNTED as UNMOUNTED_WAKE
from multiwatch.watcher.raw_event import RawEvent
from multiwatch.watcher.scan import scan_batches
from multiwatch.watcher.spec import ChildSpec
from multiwatch.watcher.state import StateStore, state_db_path
from tests.supervisor.fakes import ReportPipe
from tests.support.mounts import Mounts, needs_root
from tests.support.privilege import run_unprivileged
from tests.watcher.test_pipeline import drain, make_pipeline, settle_all


def test_meta_value_survives_reopening_the_state(tmp_path: Path) -> None:
    """A value kept in the state database (the mount seen at start) is there after a restart."""
    path = str(tmp_path / "state.db")
    store = StateStore(path)
    assert store.meta("mount") is None
    store.set_meta("mount", '{"mount_point": "/srv/share"}')
    store.set_meta("mount", '{"mount_point": "/srv/other"}')
    store.close()
    again = StateStore(path)
    assert again.meta("mount") == '{"mount_point": "/srv/other"}'
    again.close()


# ---------------------------------------------------------------- mountinfo


def test_mountinfo_lines_give_mount_point_type_and_source_with_escapes() -> None:
    """A share mounted on a path with a space is found under its real name."""
    lines = [
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
        "88 27 0:53 / /srv/my\\040share rw,relatime shared:7 master:1 - nfs4 nas:/export\\040x rw",
        "garbage",
    ]
    assert parse_mountinfo(lines) == [
        MountEntry(mount_point="/", fs_type="ext4", source="/dev/vda"),
        MountEntry(mount_point="/srv/my share", fs_type="nfs4", source="nas:/export x"),
    ]


def test_the_deepest_mount_above_a_path_is_the_one_it_belongs_to() -> None:
    """/srv/share/music is on the share mounted at /srv/share, not on / nor on /srv/shared."""
    mounts = [MountEntry("/", "ext4", "/dev/vda"), MountEntry("/srv/share", "nfs4", "nas:/a"),
              MountEntry("/srv/shared", "tmpfs", "tmpfs"),
              MountEntry("/srv/share", "cifs", "//nas/b")]  # stacked: the last one is seen
    assert containing_mount("/srv/share/music", mounts) == mounts[3]
    assert containing_mount("/srv/share", mounts) == mounts[3]
    assert containing_mount("/srv/other", mounts) == mounts[0]


def test_a_remembered_mount_survives_its_json_and_bad_json_is_forgotten() -> None:
    """What the state database keeps reads back the same; a damaged value counts as none."""
    mount = Mount(device=2049, mount_point="/srv/share", fs_type="nfs4", source="nas:/a")
    assert Mount.from_json(mount.to_json()) == mount
    assert Mount.from_json("{not json") is None
    assert Mount.from_json('{"device": 1}') is None


# ---------------------------------------------------------------- real mounts


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    made = Mounts()
    try:
        yield made
    finally:
        made.cleanup()


@needs_root
def test_guard_notices_an_unmount_and_a_bare_mount_point_is_not_usable(
        tmp_path: Path, mounts: Mounts) -> None:
    """After umount the root is lost; a new start that remembers the mount waits, and the
    mount's return makes the root usable again."""
    root = mounts.tmpfs(tmp_path / "share")
    (root / "a.txt").write_text("a")
    guard = MountGuard(str(root), required=False, remembered=None)
    seen = guard.adopt()
    assert seen is not None and seen.mount_point == str(root) and seen.fs_type == "tmpfs"
    assert not guard.lost() and guard.why_waiting(tracked_files=1) is None

    mounts.umount(root)
    assert guard.lost()
    later = MountGuard(str(root), required=False, remembered=Mount.from_json(seen.to_json()))
    why = later.why_waiting(tracked_files=1)
    assert why is not None and str(root) in why
    (root / "written-while-unmounted.txt").write_text("x")  # not empty: still waits
    assert later.why_waiting(tracked_files=1) is not None

    mounts.tmpfs(root)
    assert later.why_waiting(tracked_files=1) is None


@needs_root
def test_a_lazy_unmount_is_noticed_too(tmp_path: Path, mounts: Mounts) -> None:
    """umount -l detaches the mount at once: the root counts as lost."""
    root = mounts.tmpfs(tmp_path / "share")
    guard = MountGuard(str(root), required=False, remembered=None)
    guard.adopt()
    mounts.umount(root, lazy=True)
    assert guard.lost()


@needs_root
def test_mount_required_waits_for_a_mount_point(tmp_path: Path, mounts: Mounts) -> None:
    """With mount_required, a plain directory is not watched; once mounted it is."""
    root = tmp_path / "share"
    root.mkdir()
    guard = MountGuard(str(root), required=True, remembered=None)
    why = guard.why_waiting()
    assert why is not None and "mount_required" in why
    mounts.tmpfs(root)
    assert guard.why_waiting() is None
    guard.adopt()
    mounts.umount(root)
    assert guard.lost()


@needs_root
def test_an_empty_directory_on_another_device_than_the_tracked_files_waits(
        tmp_path: Path, mounts: Mounts) -> None:
    """The share came back empty on a new device while files are tracked: wait; a local
    tree (same device) emptied by its owner is not waited for."""
    root = mounts.tmpfs(tmp_path / "share")
    guard = MountGuard(str(root), required=False, remembered=None)
    remembered = guard.adopt()
    assert remembered is not None
    mounts.umount(root)
    mounts.tmpfs(tmp_path / "other")  # takes the device number the share left free
    mounts.tmpfs(root)  # a new, empty tmpfs on another device number
    assert os.stat(root).st_dev != remembered.device
    again = MountGuard(str(root), required=False, remembered=remembered)
    assert again.why_waiting(tracked_files=5) is not None
    assert again.why_waiting(tracked_files=0) is None
    (root / "x").write_text("x")
    assert again.why_waiting(tracked_files=5) is None
    local = MountGuard(str(tmp_path), required=False, remembered=None)
    local.adopt()
    assert local.why_waiting(tracked_files=5) is None  # tmp_path: empty of files, same device


@needs_root
@pytest.mark.parametrize("one_filesystem", [False, True])
def test_a_sub_mount_is_scanned_unless_one_filesystem(
        tmp_path: Path, mounts: Mounts, one_filesystem: bool) -> None:
    """one_filesystem: true leaves out (and does not watch) a mount inside the tree."""
    root = tmp_path / "tree"
    (root / "local").mkdir(parents=True)
    (root / "local" / "here.txt").write_text("here")
    inner = mounts.tmpfs(root / "inner")
    (inner / "deep").mkdir()
    (inner / "deep" / "there.txt").write_text("there")
    watched: list[str] = []
    found: set[str] = set()
    for batch in scan_batches(ConfinedRoot(str(root)), "", PathFilter(("*",), ()),
                              recursive=True, watch=watched.append,
                              one_filesystem=one_filesystem):
        found.update(batch)
    if one_filesystem:
        assert found == {"local/here.txt"}
        assert watched == [str(root / "local")]
    else:
        assert found == {"local/here.txt", "inner/deep/there.txt"}
        assert sorted(watched) == [str(root / "inner"), str(root / "inner" / "deep"),
                                   str(root / "local")]


# ---------------------------------------------------------------- the supervisor's view


def test_a_running_watcher_whose_mount_went_away_is_waiting_until_ready_again() -> None:
    """RUNNING → "waiting" (directory unmounted) → WAITING with that reason, and not up in
    /metrics; "ready" → RUNNING again."""
    spec = ChildSpec(instance=InstanceConfig(id="share", directory="/srv/share"),
                     broker=BrokerConfig(), state_dir="/tmp/state", log_level="INFO",
                     stop_timeout_seconds=8, parent_pid=1)
    child = Child(spec, SupervisorConfig(), multiprocessing.get_context("spawn"))
    child.state = State.RUNNING
    pipe = ReportPipe([("waiting", {"reason": UNMOUNTED}), ("heartbeat", {"unmounted": True})])
    child.reader = pipe  # type: ignore[assignment]
    child.receive(10.0)
    view = child.view(10.0)
    assert (view["state"], view["reason"]) == ("WAITING", "directory unmounted")
    assert child.last_heartbeat == 10.0  # the keepalive: not taken for hung
    pipe.reports.append(("ready", {"pid": 1}))
    child.receive(11.0)
    assert (child.view(11.0)["state"], child.view(11.0)["reason"]) == ("RUNNING", "")


def test_the_unmounted_metric_follows_the_heartbeat() -> None:
    """multiwatch_instance_unmounted is 1 while the watcher says its mount is gone, else 0."""
    def value(unmounted: bool) -> float | None:
        view = {"instances": {"share": {"state": "WAITING",
                                        "heartbeat": {"unmounted": unmounted}}}}
        for family in fleet_metrics(view):
            if family.name == "multiwatch_instance_unmounted":
                return next(s.value for s in family.samples
                            if s.labels == {"instance_id": "share"})
        return None

    assert value(True) == 1.0
    assert value(False) == 0.0


@needs_root
@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_one_filesystem_hears_nothing_from_a_sub_mount(
        tmp_path: Path, mounts: Mounts, observers: list[BaseObserver], mode: str) -> None:
    """one_filesystem: true, with either observer: a file written in a sub-mount sends no
    notification; one written beside it does."""
    root = tmp_path / "tree"
    (root / "local").mkdir(parents=True)
    inner = mounts.tmpfs(root / "inner")
    (inner / "deep").mkdir()
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observer = start_observer(str(root), recursive=True, events=events, mode=mode,
                              polling_interval=0.1, subdirectories_later=True,
                              one_filesystem=True)
    observers.append(observer)
    watch = directory_watcher(observer)
    for _ in scan_batches(ConfinedRoot(str(root)), "", PathFilter(("*",), ()), recursive=True,
                          watch=watch, one_filesystem=True):
        pass
    (inner / "deep" / "there.txt").write_text("there")
    (inner / "top.txt").write_text("top")
    (root / "local" / "here.txt").write_text("here")
    seen = _until(events, "local/here.txt")
    # Written after: for polling a later poll, for inotify a later event; anything from
    # the sub-mount would have come before it.
    (root / "local" / "after.txt").write_text("after")
    seen += _until(events, "local/after.txt")
    assert not [e for e in seen if e.src and e.src.startswith("inner")], seen


def _until(events: queue.SimpleQueue[RawEvent], path: str) -> list[RawEvent]:
    """Notifications up to the first about `path` (AssertionError after 10 s)."""
    deadline = time.monotonic() + 10
    seen: list[RawEvent] = []
    while not seen or seen[-1].src != path:
        try:
            seen.append(events.get(timeout=max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"no notification about {path}; got {seen}") from None
    return seen


@needs_root
def test_a_sub_mount_that_goes_away_is_lost_below_it_only_and_found_again(
        tmp_path: Path, mounts: Mounts) -> None:
    """Followed sub-mounts: unmounted, paths below it count as lost (the rest of the tree
    does not); mounted again (a new device), it is reported back and nothing is lost."""
    root = tmp_path / "tree"
    (root / "local").mkdir(parents=True)
    inner = mounts.tmpfs(root / "inner")
    guard = MountGuard(str(root), required=False, remembered=None, follow_submounts=True)
    guard.adopt()
    assert guard.submounts == {"inner": os.stat(inner).st_dev}
    assert not guard.lost("inner/a.txt") and not guard.any_unmounted

    mounts.umount(inner)
    assert guard.lost("inner/a.txt") and guard.lost("inner")
    assert not guard.lost("local/a.txt") and not guard.lost("innerX/a.txt")
    assert guard.check_submounts(force=True) == (["inner"], [])
    assert guard.any_unmounted and not guard.unmounted

    mounts.tmpfs(tmp_path / "other")  # (so the next tmpfs gets another device number)
    mounts.tmpfs(inner)
    assert guard.lost("inner/a.txt")  # until the loop's check has seen the new mount
    assert guard.check_submounts(force=True) == ([], ["inner"])
    assert not guard.lost("inner/a.txt") and not guard.any_unmounted
    assert guard.check_submounts(force=True) == ([], [])
    mounts.tmpfs(root / "local")  # a new mount inside the tree is reported to be scanned
    assert guard.check_submounts(force=True) == ([], ["local"])


@needs_root
def test_sub_mounts_are_not_followed_with_one_filesystem(tmp_path: Path, mounts: Mounts) -> None:
    """follow_submounts off (one_filesystem: true, or recursive: false): an unmounted
    sub-mount changes nothing."""
    root = tmp_path / "tree"
    inner = mounts.tmpfs(root / "inner")
    guard = MountGuard(str(root), required=False, remembered=None, follow_submounts=False)
    guard.adopt()
    mounts.umount(inner)
    assert not guard.lost("inner/a.txt")
    assert guard.check_submounts(force=True) == ([], [])


def test_check_accepts_a_bare_mount_point_that_mount_required_waits_for(tmp_path: Path) -> None:
    """`check` of mount_required on an unreadable bare mount point passes (the mount brings
    its own permissions); the same directory without mount_required is refused."""
    (tmp_path / "share").mkdir()
    (tmp_path / "share").chmod(0o000)
    try:
        for required, code in ((True, 0), (False, 2)):
            roster = tmp_path / "roster.yaml"
            roster.write_text(f"state_dir: {tmp_path / 'st'}\ninstances:\n"
                              f"  - {{id: s, directory: {tmp_path / 'share'}, "
                              f"mount_required: {str(required).lower()}}}\n")
            result = run_unprivileged([sys.executable, "-m", "multiwatch", "check",
                                       "-c", str(roster)])
            assert result.returncode == code, result.stderr
    finally:
        (tmp_path / "share").chmod(0o755)


@needs_root
def test_the_mount_table_is_read_again_only_after_the_kernel_says_it_changed(
        tmp_path: Path, mounts: Mounts) -> None:
    """An idle loop does not read mountinfo: the generation moves only with a mount or an
    unmount (poll's POLLPRI on the open mountinfo)."""
    table = MountTable()
    first, _ = table.current()
    assert table.current()[0] == first
    share = mounts.tmpfs(tmp_path / "share")
    generation, entries = table.current()
    assert generation > first and str(share) in {e.mount_point for e in entries}
    assert table.current()[0] == generation
    mounts.umount(share)
    generation, entries = table.current()
    assert str(share) not in {e.mount_point for e in entries}


@needs_root
def test_a_bind_mount_of_the_same_filesystem_counts_as_a_mount(
        tmp_path: Path, mounts: Mounts) -> None:
    """mount --bind within one filesystem keeps the device: mount_required still sees a
    mount point, and its unmount is noticed through mountinfo."""
    source = tmp_path / "source"
    source.mkdir()
    root = mounts.bind(source, tmp_path / "share")
    assert os.stat(root).st_dev == os.stat(tmp_path).st_dev
    guard = MountGuard(str(root), required=True, remembered=None)
    assert guard.why_waiting() is None
    guard.adopt()
    assert not guard.mount_gone()
    mounts.umount(root)
    assert not guard.lost()  # (the same device)
    time.sleep(SUBMOUNT_CHECK_SECONDS)  # mountinfo is read at most this often
    assert guard.mount_gone()
    assert guard.why_waiting() is not None


def test_state_forget_mount_drops_the_remembered_mount_of_a_stopped_instance(
        tmp_path: Path) -> None:
    """`state forget-mount` says what it forgot and the next start remembers nothing; while
    the instance's watcher runs (holds its lock) it refuses, exit 1."""
    state_dir, share = tmp_path / "state", tmp_path / "share"
    share.mkdir()
    roster = tmp_path / "roster.yaml"
    roster.write_text(f"state_dir: {state_dir}\ninstances:\n  - {{id: s, directory: {share}}}\n")
    store = StateStore(state_db_path(str(state_dir), "s"))
    store.set_meta(META_KEY, Mount(7, str(share), "nfs4", "nas:/music").to_json())
    store.close()
    command = [sys.executable, "-m", "multiwatch", "state", "forget-mount", "-c", str(roster)]

    lock = open_watcher_lock(str(state_dir), "s")
    assert try_lock_exclusive(lock)  # as a running watcher holds it
    try:
        refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        os.close(lock)
    assert refused.returncode == 1 and "running" in refused.stderr

    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"s: forgot the nfs4 mount {share} (nas:/music)" in done.stdout
    store = StateStore(state_db_path(str(state_dir), "s"))
    assert store.meta(META_KEY) is None
    store.close()


@needs_root
def test_inotify_tells_the_loop_at_once_when_the_watched_filesystem_is_unmounted(
        tmp_path: Path, mounts: Mounts, observers: list[BaseObserver]) -> None:
    """The kernel's IN_UNMOUNT reaches the pipeline's queue as an "unmounted" wake-up, so
    the mount check runs then, not at the next idle heartbeat (up to 5 s later)."""
    root = mounts.tmpfs(tmp_path / "share")
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    observers.append(start_observer(str(root), recursive=True, events=events, mode="inotify"))
    mounts.umount(root)
    assert events.get(timeout=5) == UNMOUNTED_WAKE


@needs_root
def test_a_sub_mount_in_an_excluded_directory_is_not_followed(
        tmp_path: Path, mounts: Mounts) -> None:
    """An automount under an excluded name (.zfs/snapshot/x) comes and goes unreported."""
    root = tmp_path / "tree"
    snapshot = mounts.tmpfs(root / ".zfs" / "snapshot" / "daily")
    guard = MountGuard(str(root), required=False, remembered=None, follow_submounts=True,
                       wanted=PathFilter(("*",), (".*",)).wants_directory)
    guard.adopt()
    assert guard.submounts == {}
    mounts.umount(snapshot)
    assert guard.check_submounts(force=True) == ([], []) and not guard.any_unmounted


@needs_root
@pytest.mark.parametrize("files", [5, 50])
def test_a_scan_over_a_lost_mount_neither_announces_nor_holds_deletions(
        tmp_path: Path, mounts: Mounts, files: int) -> None:
    """The pipeline asks the mount guard before a scan counts a file gone: a reconcile scan
    that meets the bare mount point (it began before the loop noticed) announces no
    deletion, holds none (5 files: under the bound; 50: above it) and forgets nothing."""
    root = mounts.tmpfs(tmp_path / "w")
    for i in range(files):
        (root / f"f{i}.txt").write_text(str(i))
    pipeline, outbox, _ = make_pipeline(tmp_path)
    guard = MountGuard(str(root), required=False, remembered=None)
    guard.adopt()
    pipeline.mount_lost = guard.lost
    pipeline.request_scan()
    settle_all(pipeline)
    assert len(drain(outbox)) == files

    mounts.umount(root)
    pipeline.request_scan()
    settle_all(pipeline)
    assert drain(outbox) == []
    assert pipeline.deletions.held == 0
    assert len(pipeline.tracked) == files
