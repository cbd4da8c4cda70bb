"""Confined lookups: below the root's descriptor, no symlink on the way (or, following, none
that leaves the root), with openat2 and with the component walk used where it is missing."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from watchdog.utils.dirsnapshot import DirectorySnapshot

from multiwatch.watcher import confined
from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.hashing import stat_regular
from multiwatch.watcher.polled import ConfinedSnapshotIO
from tests.watcher.test_pipeline import drain, make_pipeline, settle_all

RESOLUTIONS = ["openat2", "walk"]


def _root(path: Path, resolution: str, *, follow: bool = False) -> ConfinedRoot:
    root = ConfinedRoot(str(path), follow_symlinks=follow,
                        use_openat2=None if resolution == "openat2" else False)
    if resolution == "openat2" and not root.uses_openat2:  # (probed once per process)
        pytest.skip("this kernel has no openat2: the walk's cases cover it")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """w/ with a file, a subdirectory, and links of every kind; outside/secret beside it."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"secret")
    root = tmp_path / "w"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_bytes(b"inside")
    (root / "out").symlink_to(tmp_path / "outside")  # absolute, leaves
    (root / "sub" / "up").symlink_to("../../outside")  # relative, leaves
    (root / "in").symlink_to("sub")  # a directory inside
    (root / "loop").symlink_to(".")
    (root / "flink").symlink_to("sub/f")
    (root / "absin").symlink_to(root / "sub" / "f")
    (root / "via").symlink_to("in/f")  # through a symlinked directory, inside
    (root / "leave").symlink_to("out/secret")  # through a link that leaves
    return root


def _outcome(root: ConfinedRoot, relative: str) -> str:
    st = stat_regular(root, relative)
    return "absent" if st is None else f"file:{st.st_size}"


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_without_following_no_component_may_be_a_symlink(tree: Path, resolution: str) -> None:
    """Without follow_symlinks, a path with a symlink in any component names nothing, wherever
    the link leads (outside, inside, itself); real paths and ".." within the root work."""
    root = _root(tree, resolution)
    assert root.uses_openat2 is (resolution == "openat2")  # really the way under test
    outcomes = {relative: _outcome(root, relative) for relative in [
        "sub/f", "sub/../sub/f", "out/secret", "sub/up/secret", "in/f", "loop/sub/f",
        "loop/loop/loop/in/f", "flink", "absin", "../outside/secret", "sub/../../outside/secret"]}
    assert outcomes == {"sub/f": "file:6", "sub/../sub/f": "file:6", **{
        relative: "absent" for relative in outcomes if relative not in ("sub/f", "sub/../sub/f")}}


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_following_stays_beneath_the_root(tree: Path, resolution: str) -> None:
    """With follow_symlinks, a final symlink is followed (relative, absolute, through links in
    its target) while it stays beneath the root; one leaving it through any component is
    refused, and a path through a symlinked directory is never entered."""
    root = _root(tree, resolution, follow=True)
    outcomes = {relative: _outcome(root, relative) for relative in [
        "flink", "absin", "via", "leave", "out/secret", "sub/up/secret", "in/f", "loop/flink"]}
    assert outcomes == {"flink": "file:6", "absin": "file:6", "via": "file:6",
                        "leave": "absent", "out/secret": "absent", "sub/up/secret": "absent",
                        "in/f": "absent", "loop/flink": "absent"}


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_symlink_loops_cost_nothing(tmp_path: Path, resolution: str) -> None:
    """Two links pointing at each other (followed) fail at once with ELOOP, as the kernel's
    own limit of 40 links says, instead of spinning."""
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    root = _root(tmp_path, resolution, follow=True)
    with pytest.raises(OSError) as raised:
        root.open("a", os.O_RDONLY)
    assert raised.value.errno == errno.ELOOP
    assert stat_regular(root, "a") is None


def test_a_directory_swapped_for_a_symlink_after_a_lookup_is_not_entered(tree: Path) -> None:
    """The walk and openat2 both refuse a directory that became a symlink between two lookups
    (the settle-then-hash race): nothing is resolved again by its absolute name."""
    for resolution in RESOLUTIONS:
        root = _root(tree, resolution)
        assert stat_regular(root, "sub/f") is not None
        os.rename(tree / "sub", tree / "moved")
        (tree / "sub").symlink_to(tree / "moved")
        try:
            assert stat_regular(root, "sub/f") is None, resolution
        finally:
            (tree / "sub").unlink()
            os.rename(tree / "moved", tree / "sub")


def test_openat2_refused_by_the_kernel_falls_back_to_the_walk(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """openat2 failing with ENOSYS (an old kernel, or a seccomp filter) is detected once and
    the component walk takes over, with the same confinement."""
    def no_openat2(*args: Any) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(confined, "_syscall", no_openat2)
    monkeypatch.setattr(confined, "openat2_works", None)
    root = ConfinedRoot(str(tree))
    assert root.uses_openat2 is False
    assert _outcome(root, "sub/f") == "file:6" and _outcome(root, "out/secret") == "absent"


def test_a_replaced_root_is_opened_again(tmp_path: Path) -> None:
    """A root deleted and created anew between two bursts of work is opened again by its
    path: lookups see the new directory, not the deleted one a kept descriptor would name."""
    path = tmp_path / "w"
    path.mkdir()
    (path / "old").write_bytes(b"old")
    root = ConfinedRoot(str(path))
    assert _outcome(root, "old") == "file:3"
    root.release()  # (the pipeline does, after each step)
    (path / "old").unlink()
    path.rmdir()
    path.mkdir()
    (path / "new").write_bytes(b"new!")
    assert _outcome(root, "new") == "file:4" and _outcome(root, "old") == "absent"
    root.release()


def test_a_watched_mount_can_be_unmounted_while_the_pipeline_lives(tmp_path: Path) -> None:
    """The root's descriptor is not kept between steps: `umount` of a watched bind mount
    succeeds while its pipeline is alive (a kept one would make it fail with EBUSY)."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    source = tmp_path / "source"
    (source / "album").mkdir(parents=True)
    (source / "album" / "track.flac").write_bytes(b"lossless")
    (tmp_path / "w").mkdir()
    bind = subprocess.run(["mount", "--bind", str(source), str(tmp_path / "w")],
                          capture_output=True, text=True)
    assert bind.returncode == 0, bind.stderr
    pipeline, outbox, root = make_pipeline(tmp_path)
    try:
        pipeline.request_scan()
        settle_all(pipeline)
        assert [b["file_info"]["relative_path"] for b in drain(outbox)] == ["album/track.flac"]
        unmounted = subprocess.run(["umount", str(root)], capture_output=True, text=True)
        assert unmounted.returncode == 0, unmounted.stderr
    finally:
        subprocess.run(["umount", "--lazy", str(root)], capture_output=True, check=False)
        outbox.close()
        pipeline.store.close()


def test_polling_snapshot_lists_each_real_entry_once(tree: Path) -> None:
    """The polling observer's walk (watchdog's DirectorySnapshot over ConfinedSnapshotIO)
    lists symlinks as entries and never enters them: loops and links out add one entry
    each, and the entries' stats are their own (lstat), with birth times."""
    io = ConfinedSnapshotIO(ConfinedRoot(str(tree)))
    snapshot = DirectorySnapshot(str(tree), recursive=True, stat=io.stat,  # type: ignore[arg-type]
                                 listdir=io.listdir)
    relative = sorted(os.path.relpath(str(p), str(tree)) for p in snapshot.paths)
    assert relative == [".", "absin", "flink", "in", "leave", "loop", "out", "sub", "sub/f",
                        "sub/up", "via"]
    st = os.lstat(tree / "sub" / "f")
    assert snapshot.inode(str(tree / "sub" / "f")) == (st.st_ino, st.st_dev)
    assert snapshot.size(str(tree / "sub" / "f")) == 6
    assert not snapshot.isdir(str(tree / "loop"))
