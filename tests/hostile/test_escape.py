"""Escapes: an unprivileged user who can write into a watched directory tries to make the
watcher (running as root) read what they cannot: through directory symlinks seen by the
polling observer, symlink loops, a parent directory swapped for a symlink between settle and
hash, and symlinked files with follow_symlinks.  Nothing outside the tree is ever announced."""

from __future__ import annotations

import hashlib
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
from multiwatch.watcher.observe import start_observer
from multiwatch.watcher.raw_event import EventKind, RawEvent
from tests.support.hostile import Announced, is_log, remove_tree, roster
from tests.support.process import LogLine, Multiwatch
from tests.watcher.test_pipeline import make_pipeline

ATTACKER = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
SECRET = b"root's private token: never to be announced\n"
SECRET_SHA256 = hashlib.sha256(SECRET).hexdigest()

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
def attacked_pipeline(base: Path, **options: Any) -> Iterator[tuple[Announced, Path]]:
    """A pipeline over base/w, a directory `nobody` may write into (no observer)."""
    pipeline, outbox, root = make_pipeline(base, **options)
    root.chmod(0o777)
    try:
        yield Announced(pipeline, outbox), root
    finally:
        outbox.close()
        pipeline.store.close()


def leaked(announced: Announced) -> list[str]:
    """Paths announced with the private file's content."""
    return [body["file_info"]["relative_path"] for body in announced.bodies
            if body["file_info"]["sha256_hash"] == SECRET_SHA256]


def test_polling_never_enters_a_symlinked_directory_or_loop(
        arena: tuple[Path, Path], resolution: str) -> None:
    """Polling mode: `ln -s /private/dir link` and `ln -s . loop` by an unprivileged user;
    nothing under the link is announced, and each real file is announced once (not once
    per loop/loop/... level)."""
    private, base = arena
    with attacked_pipeline(base) as (announced, root):
        observer = start_observer(str(root), recursive=True, mode="polling",
                                  events=announced.pipeline.notifications, polling_interval=0.05)
        try:
            as_attacker('ln -s "$1" "$2/link"; ln -s . "$2/loop"; mkdir "$2/sub";'
                        'echo mine > "$2/sub/real.txt"; echo top > "$2/top.txt"',
                        str(private), str(root))
            announced.until(lambda bodies: len(bodies) >= 2)
            announced.step(0.3)  # a few more polls
            announced.settled()
        finally:
            observer.stop()
            observer.join(timeout=10)
    assert sorted(announced.paths()) == ["sub/real.txt", "top.txt"], announced.summary()
    assert leaked(announced) == []


def test_parent_swapped_for_a_symlink_between_settle_and_hash_is_never_read(
        arena: tuple[Path, Path], resolution: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A settled d/token whose directory is replaced (mv d moved; ln -s /private d) by an
    unprivileged user right before it is hashed: never announced with the private content
    (25 tries, the swap made at the worst moment by a hook)."""
    private, base = arena
    real_hash_file = pipeline_module.hash_file
    swaps: list[str] = []

    def swap_then_hash(*args: Any, **kwargs: Any) -> Any:
        if swaps:
            as_attacker('mv "$1/$2" "$1/moved-$2"; ln -s "$3" "$1/$2"',
                        str(root), swaps.pop(), str(private))
        return real_hash_file(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "hash_file", swap_then_hash)
    with attacked_pipeline(base) as (announced, root):
        for attempt in range(25):
            name = f"d{attempt}"
            as_attacker('mkdir "$1"; printf small > "$1/token"', str(root / name))
            swaps.append(name)
            event = RawEvent(EventKind.CREATED, False, f"{name}/token")
            announced.pipeline.notifications.put(event)
            announced.settled()
            assert not swaps, "the hook did not run"
    assert leaked(announced) == [], announced.summary()


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
    """The real attack against `multiwatch run` (root): a directory of 60 x 4 MB files and a
    small token moved in, and one second later `mv d moved; ln -s /private d`, 5 times; the
    private token is never announced."""
    private, base = arena
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
        for attempt in range(5):
            as_attacker('d="$1/d"; mkdir "$d"; printf small > "$d/token";'
                        'for i in $(seq 60); do head -c 4000000 /dev/zero > "$d/big$i"; done',
                        str(staging))
            as_attacker('mv "$1/d" "$2/d"; sleep 1; mv "$2/d" "$2/moved-$3"; ln -s "$4" "$2/d"',
                        str(staging), str(inbox), str(attempt), str(private))
            moved_token = str(inbox / f"moved-{attempt}" / "token")
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
                    and line.get("size_bytes") == len(SECRET)]
    assert secret_lines == []


def _announced_at(path: str, line: LogLine) -> bool:
    """A log line announcing `path` (discovered, or moved to it)."""
    return line.get("path") == path and (is_log(line, "file discovered")
                                         or is_log(line, "file moved"))
