"""Escapes: an unprivileged user who can write into a watched directory tries to make the
watcher (running as root) read what they cannot: through directory symlinks seen by the
polling observer, symlink loops, a parent directory swapped for a symlink between settle and
hash, and symlinked files with follow_symlinks.  Nothing outside the tree is ever announced."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import multiwatch.watcher.pipeline as pipeline_module
from multiwatch.watcher import confined
from multiwatch.watcher import hash_pool as hash_pool_module
from multiwatch.watcher.hash_pool import HashPool
from multiwatch.watcher.mount import MountGuard
from multiwatch.watcher.observe import start_observer
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.pipeline import Pipeline
from multiwatch.watcher.raw_event import EventKind, RawEvent
from multiwatch.watcher.state import StateStore
from multiwatch.watcher.unreadable import Unreadable
from tests.support.hostile import Announced, is_log, remove_tree, roster
from tests.support.mounts import Mounts
from tests.support.process import LogLine, Multiwatch
from tests.watcher.test_pipeline import make_pipeline

ATTACKER = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
SECRET = b"root's private token: never to be announced\n"
SECRET_SHA256 = hashlib.sha256(SECRET).hexdigest()
MIB = 1 << 20

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacker is `nobody`: needs root")


def as_attacker(script: str, *args: str) -> None:
    """Run a shell script as the unprivileged user `nobody`; fail the test if it fails."""
    done = subprocess.run([*ATTACKER, "sh", "-ec", script, "attacker", *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.fixture(params=["openat2", "walk"])
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with openat2, and with the component walk used where it is missing."""
    if request.param == "walk":
        monkeypatch.setattr(confined, "openat2_works", False)
    else:
        monkeypatch.setattr(confined, "openat2_works", None)  # probed again: must work here
    return str(request.param)


@pytest.fixture
def arena() -> Iterator[tuple[Path, Path]]:
    """(private, base): a root-only directory holding `token` (SECRET), and a directory
    `nobody` can reach (pytest's tmp_path is root-only), both removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="mw-escape-"))
    try:
        base.chmod(0o755)
        private = base / "private"
        private.mkdir(mode=0o700)
        (private / "token").write_bytes(SECRET)
        yield private, base
    finally:
        remove_tree(base)


@contextmanager
def attacked_pipeline(base: Path, *, pool_from: int | None = None,
                      **options: Any) -> Iterator[tuple[Announced, Path]]:
    """A pipeline over base/w, a directory `nobody` may write into (no observer); with
    `pool_from`, files of that many bytes and more are hashed by a HashPool's threads, as
    big files are in the watcher."""
    pool = None if pool_from is None else HashPool(None, workers=2, min_bytes=pool_from)
    pipeline, outbox, root = make_pipeline(base, **options)
    if pool is not None:  # the same pipeline, as the watcher wires one with its pool
        pipeline.store.close()
        pipeline = Pipeline(pipeline.instance, StateStore(pipeline.store.path), OutboxGauge(
            events=0, size=0, max_events=10**6, max_bytes=10**9), hash_pool=pool)
    root.chmod(0o777)
    try:
        yield Announced(pipeline, outbox), root
    finally:
        if pool is not None:
            pool.shutdown()
        outbox.close()
        pipeline.store.close()


def leaked(announced: Announced, secret_sha256: str = SECRET_SHA256) -> list[str]:
    """Paths announced with the private file's content."""
    return [body["file_info"]["relative_path"] for body in announced.bodies
            if body["file_info"]["sha256_hash"] == secret_sha256]


@pytest.mark.parametrize("mode", ["polling", "inotify"])
def test_observers_never_enter_a_symlinked_directory_or_loop(
        arena: tuple[Path, Path], resolution: str, mode: str) -> None:
    """Polling mode, and inotify alike: `ln -s /private/dir link`, two `ln -s . loop`s and
    a `sub/up -> ..` by an unprivileged user; nothing under the link is announced (nor a
    file the owner adds there later), and each real file is announced once under its real
    path (not once per loop/loop/... level), files written through a loop included."""
    private, base = arena
    with attacked_pipeline(base) as (announced, root):
        observer = start_observer(str(root), recursive=True, mode=mode,
                                  events=announced.pipeline.notifications, polling_interval=0.05)
        try:
            as_attacker('ln -s "$1" "$2/link"; ln -s . "$2/loop"; ln -s . "$2/loop2";'
                        'mkdir "$2/sub"; ln -s .. "$2/sub/up";'
                        'echo mine > "$2/sub/real.txt"; echo top > "$2/top.txt"',
                        str(private), str(root))
            announced.until(lambda bodies: len(bodies) >= 2)
            (private / "later").write_bytes(SECRET)
            as_attacker('echo via > "$1/loop/loop2/via-loop.txt"; echo up > "$1/sub/up/via-up.txt"',
                        str(root))
            announced.until(lambda bodies: len(bodies) >= 4)
            announced.step(0.3)  # a few more polls
            announced.settled()
        finally:
            observer.stop()
            observer.join(timeout=10)
    assert sorted(announced.paths()) == ["sub/real.txt", "top.txt", "via-loop.txt",
                                         "via-up.txt"], announced.summary()
    assert leaked(announced) == []


@pytest.mark.parametrize("size", [5, 2 * MIB])
def test_parent_swapped_for_a_symlink_between_settle_and_hash_is_never_read(
        arena: tuple[Path, Path], resolution: str, monkeypatch: pytest.MonkeyPatch,
        size: int) -> None:
    """A settled d/token whose directory is replaced (mv d moved; ln -s /private d) by an
    unprivileged user right before it is hashed: never announced with the private content
    (25 tries, the swap made at the worst moment by a hook), a small file hashed inline as
    a big one by the hash pool's threads (the private token of the same size)."""
    private, base = arena
    secret = SECRET if size < MIB else os.urandom(size)
    (private / "token").write_bytes(secret)
    swaps: list[str] = []

    def swapping(real_hash_file: Any) -> Any:
        def swap_then_hash(*args: Any, **kwargs: Any) -> Any:
            if swaps:
                as_attacker('mv "$1/$2" "$1/moved-$2"; ln -s "$3" "$1/$2"',
                            str(root), swaps.pop(), str(private))
            return real_hash_file(*args, **kwargs)
        return swap_then_hash

    for module in (pipeline_module, hash_pool_module):
        monkeypatch.setattr(module, "hash_file", swapping(module.hash_file))
    with attacked_pipeline(base, pool_from=MIB) as (announced, root):
        for attempt in range(25):
            name = f"d{attempt}"
            as_attacker('mkdir "$1"; head -c "$2" /dev/zero > "$1/token"',
                        str(root / name), str(len(secret)))
            swaps.append(name)
            event = RawEvent(EventKind.CREATED, False, f"{name}/token")
            announced.pipeline.notifications.put(event)
            announced.settled()
            assert not swaps, "the hook did not run"
    assert leaked(announced, hashlib.sha256(secret).hexdigest()) == [], announced.summary()


def test_follow_symlinks_follows_links_inside_the_tree_only(
        arena: tuple[Path, Path], resolution: str) -> None:
    """follow_symlinks: true: links to files inside the tree are announced with their target's
    hashes (relative, absolute, through another link); a link leaving the tree through any
    component (its target, a directory on the way, a chain of links) is refused, and a
    path through a symlinked directory (subdir/up) is never entered, as the README says."""
    private, base = arena
    with attacked_pipeline(base, follow_symlinks=True) as (announced, root):
        (root / "inside.txt").write_bytes(b"inside")
        as_attacker(
            'cd "$1"; mkdir sub; ln -s inside.txt rel; ln -s "$1/inside.txt" abs;'
            'ln -s ../inside.txt sub/up; ln -s sub/up chain; ln -s sub subdir;'
            'ln -s subdir/up via_dir;'
            'ln -s "$2/token" out_abs; ln -s ../private/token out_rel;'
            'ln -s "$2" privdir; ln -s privdir/token out_via_dir; ln -s out_abs out_chain;'
            'ln -s loop1 loop2; ln -s loop2 loop1', str(root), str(private))
        announced.pipeline.request_scan()
        for name in ("privdir/token", "out_via_dir", "subdir/up"):  # as events could name them
            announced.pipeline.notifications.put(RawEvent(EventKind.CREATED, False, name))
        announced.settled()
    inside = hashlib.sha256(b"inside").hexdigest()
    assert {b["file_info"]["relative_path"]: b["file_info"]["sha256_hash"]
            for b in announced.bodies} == {
        name: inside for name in ("inside.txt", "rel", "abs", "sub/up", "chain", "via_dir")}
    assert leaked(announced) == []


def test_swap_race_end_to_end_as_the_issue_describes(arena: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    """The real attack against `multiwatch run` (root): a directory of 60 x 4 MB files, a
    small token and a big one (hashed by the pool) moved in, and one second later
    `mv d moved; ln -s /private d`, 10 times; neither private token is ever announced."""
    private, base = arena
    big_secret = 5 * MIB + 7  # (the attacker's bigtoken has 5 MiB: a leak shows by its size)
    (private / "bigtoken").write_bytes(os.urandom(big_secret))
    inbox = base / "inbox"
    inbox.mkdir(mode=0o777)
    inbox.chmod(0o777)
    staging = base / "staging"
    staging.mkdir(mode=0o777)
    staging.chmod(0o777)
    # A quiet period of the second before the swap: the token settles as d is swapped.
    mw = Multiwatch(["-c", str(roster(tmp_path, [
        {"id": "inbox", "directory": str(inbox), "settle_seconds": 1}]))])
    try:
        mw.wait_for_log(lambda line: is_log(line, "startup scan complete", "inbox"),
                        timeout=30)
        for attempt in range(10):
            as_attacker('d="$1/d"; mkdir "$d"; printf small > "$d/token";'
                        'head -c 5242880 /dev/zero > "$d/bigtoken";'
                        'for i in $(seq 60); do head -c 4000000 /dev/zero > "$d/big$i"; done',
                        str(staging))
            as_attacker('mv "$1/d" "$2/d"; sleep 1; mv "$2/d" "$2/moved-$3"; ln -s "$4" "$2/d"',
                        str(staging), str(inbox), str(attempt), str(private))
            for token in ("token", "bigtoken"):
                moved_token = str(inbox / f"moved-{attempt}" / token)
                mw.wait_for_log(partial(_announced_at, moved_token), timeout=120)
            (inbox / "d").unlink()
        (inbox / "marker").write_bytes(b"the end")
        mw.wait_for_log(lambda line: is_log(line, "file discovered", "inbox")
                        and line.get("path") == str(inbox / "marker"), timeout=60)
        mw.terminate()
    finally:
        mw.cleanup()
    secret_lines = [line for line in mw.lines
                    if str(line.get("path", "")).startswith(str(inbox / "d"))
                    and line.get("size_bytes") in (len(SECRET), big_secret)]
    assert secret_lines == []


def _announced_at(path: str, line: LogLine) -> bool:
    """A log line announcing `path` (discovered, or moved to it)."""
    return line.get("path") == path and (is_log(line, "file discovered")
                                         or is_log(line, "file moved"))


def test_readable_again_is_never_said_of_a_path_through_a_swapped_directory(
        arena: tuple[Path, Path], resolution: str, caplog: pytest.LogCaptureFixture) -> None:
    """d/token could not be read; `mv d moved; ln -s /private d` by an unprivileged user:
    its retry ending is not logged as "file readable again" for d/token, a path that now
    leads outside the tree (the same file moved back in is)."""
    private, base = arena
    root = base / "w"
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    as_attacker('mkdir "$1/d"; printf small > "$1/d/token"', str(root))
    unreadable = Unreadable(confined.ConfinedRoot(str(root)))
    caplog.set_level(logging.INFO, logger="multiwatch.watcher.unreadable")
    unreadable.cannot_read("d/token", PermissionError(13, "Permission denied"), 0.0)
    as_attacker('mv "$1/d" "$1/moved"; ln -s "$2" "$1/d"', str(root), str(private))
    unreadable.readable("d/token")
    unreadable.cannot_read("moved/token", PermissionError(13, "Permission denied"), 0.0)
    unreadable.readable("moved/token")
    assert [record.path for record in caplog.records  # type: ignore[attr-defined]
            if record.getMessage() == "file readable again"] == [str(root / "moved" / "token")]


def test_a_sub_mount_is_never_looked_up_through_a_symlink(arena: tuple[Path, Path]) -> None:
    """A mount inside the tree under up/inner, then `mv up up.old; ln -s up.old up` by an
    unprivileged user: up/inner no longer names the mount in the tree (the watcher never
    follows up), so paths below it count as on a lost mount, as after a plain mv, instead
    of the link's target being taken for the mount."""
    _, base = arena
    root = base / "w"
    (root / "up").mkdir(parents=True, mode=0o777)
    root.chmod(0o777)
    (root / "up").chmod(0o777)
    mounts = Mounts()
    try:
        inner = mounts.tmpfs(root / "up" / "inner")
        guard = MountGuard(str(root), required=False, remembered=None, follow_submounts=True)
        guard.adopt()
        assert guard.submounts == {"up/inner": os.stat(inner).st_dev}
        assert not guard.lost("up/inner/a.txt")
        as_attacker('mv "$1/up" "$1/up.old"; ln -s up.old "$1/up"', str(root))
        assert guard.lost("up/inner/a.txt")
        assert guard.check_submounts(force=True) == (["up/inner"], ["up.old/inner"])
    finally:
        mounts.cleanup()
