"""The tree walk: regular files only, relative paths, pruned excluded directories."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.filters import PathFilter
from multiwatch.watcher.hashing import FileVersion
from multiwatch.watcher.scan import scan_batches, walk_files
from tests.support.privilege import run_python_unprivileged

DEFAULTS = PathFilter(include=("*",), exclude=(".*", "*.part", "*.tmp", "*~"))


def _write(root: Path, relative: str, data: bytes = b"x") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _scan(root: Path, start: str = "", path_filter: PathFilter = DEFAULTS,
          *, recursive: bool = True) -> dict[str, FileVersion]:
    found = dict(walk_files(ConfinedRoot(str(root)), start, path_filter, recursive=recursive))
    return found


def test_finds_regular_files_recursively_with_relative_paths(tmp_path: Path) -> None:
    """Every regular file at any depth is found once, by its path relative to the root."""
    for relative in ["top.mp3", "a/one.mp3", "a/b/c/deep.flac"]:
        _write(tmp_path, relative)
    found = _scan(tmp_path)
    assert sorted(found) == ["a/b/c/deep.flac", "a/one.mp3", "top.mp3"]
    for relative, version in found.items():
        assert version == FileVersion.of(os.lstat(tmp_path / relative))


def test_empty_tree_yields_nothing(tmp_path: Path) -> None:
    """An empty tree (with empty subdirectories) yields no files."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert _scan(tmp_path) == {}


def test_skips_symlinks_and_fifos(tmp_path: Path) -> None:
    """Symlinks (to files or directories) and FIFOs are never reported, nor followed."""
    real = _write(tmp_path, "real.txt")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    _write(outside, "elsewhere.txt")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "file-link").symlink_to(real)
    (tree / "dir-link").symlink_to(outside, target_is_directory=True)
    os.mkfifo(tree / "pipe")
    _write(tree, "kept.txt")
    assert sorted(_scan(tree)) == ["kept.txt"]


def test_excluded_files_and_directories_are_not_reported(tmp_path: Path) -> None:
    """Dot-files, dot-directories and partial downloads are left out of the scan."""
    for relative in ["song.mp3", ".hidden", ".git/objects/ab", "a/.cache/x.mp3",
                     "a/x.mp3.part", "dl.part/inside.mp3", "a/ok.mp3"]:
        _write(tmp_path, relative)
    assert sorted(_scan(tmp_path)) == ["a/ok.mp3", "song.mp3"]


def test_pruned_directories_are_never_entered(tmp_path: Path) -> None:
    """A directory the filter rejects is not walked at all, even if it holds wanted names."""

    class PruneSkip(PathFilter):
        def wants_file(self, relative_path: str) -> bool:
            return True

        def wants_directory(self, relative_path: str) -> bool:
            return relative_path.split("/")[-1] != "skip"

    _write(tmp_path, "skip/a.mp3")
    _write(tmp_path, "keep/skip/b.mp3")
    _write(tmp_path, "keep/c.mp3")
    assert sorted(_scan(tmp_path, path_filter=PruneSkip((), ()))) == ["keep/c.mp3"]


def test_whole_path_exclude_is_applied_during_scan(tmp_path: Path) -> None:
    """An exclude pattern with "/" hides the matching files although it prunes nothing."""
    _write(tmp_path, "incoming/a.mp3")
    _write(tmp_path, "incoming/sub/b.mp3")
    _write(tmp_path, "library/c.mp3")
    no_incoming = PathFilter(include=("*",), exclude=("incoming/*",))
    assert sorted(_scan(tmp_path, path_filter=no_incoming)) == ["library/c.mp3"]


def test_non_recursive_scan_stays_at_top_level(tmp_path: Path) -> None:
    """With recursive=False only the files directly in the root are reported."""
    _write(tmp_path, "top.mp3")
    _write(tmp_path, "sub/nested.mp3")
    assert sorted(_scan(tmp_path, recursive=False)) == ["top.mp3"]


def test_scan_of_a_subdirectory_reports_paths_relative_to_root(tmp_path: Path) -> None:
    """Scanning part of the tree reports paths relative to the watched root, not the part."""
    _write(tmp_path, "top.mp3")
    _write(tmp_path, "sub/a.mp3")
    _write(tmp_path, "sub/deeper/b.mp3")
    assert sorted(_scan(tmp_path, "sub")) == ["sub/a.mp3", "sub/deeper/b.mp3"]


def test_missing_start_directory_yields_nothing(tmp_path: Path) -> None:
    """A directory that vanished before its scan ran ends the scan quietly."""
    assert _scan(tmp_path, "gone") == {}
    _write(tmp_path, "a-file")
    assert _scan(tmp_path, "a-file") == {}


def test_directory_removed_mid_scan_does_not_break_the_scan(tmp_path: Path) -> None:
    """Removing a not-yet-walked directory while the scan is suspended only drops its files."""
    _write(tmp_path, "first.mp3")
    _write(tmp_path, "doomed/x.mp3")
    walk = walk_files(ConfinedRoot(str(tmp_path)), "", DEFAULTS, recursive=True)
    assert next(walk)[0] == "first.mp3"
    (tmp_path / "doomed" / "x.mp3").unlink()
    (tmp_path / "doomed").rmdir()
    assert list(walk) == []


def test_unreadable_directory_is_skipped(tmp_path: Path) -> None:
    """A subdirectory that cannot be listed is skipped; the rest of the tree is still found."""
    _write(tmp_path, "ok.mp3")
    _write(tmp_path, "locked/secret.mp3")
    _write(tmp_path, "other/fine.mp3")
    (tmp_path / "locked").chmod(0)
    try:
        result = run_python_unprivileged(
            "import sys; from multiwatch.watcher.scan import walk_files;"
            "from multiwatch.watcher.confined import ConfinedRoot;"
            "from multiwatch.watcher.filters import PathFilter;"
            "print(sorted(p for p, _ in walk_files(ConfinedRoot(sys.argv[1]), '',"
            " PathFilter(('*',), ()), recursive=True)))",
            str(tmp_path),
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "['ok.mp3', 'other/fine.mp3']"
        assert "cannot list directory" in result.stderr
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_large_directory_is_handed_over_in_bounded_batches(tmp_path: Path) -> None:
    """A directory with more files than one batch comes in several, each file once, with
    the size, mtime and inode of its lstat."""
    for i in range(25):
        _write(tmp_path, f"d/f{i:02d}.mp3")
    _write(tmp_path, "top.mp3")
    _write(tmp_path, "d/skip.part")
    batches = list(scan_batches(ConfinedRoot(str(tmp_path)), "", DEFAULTS, recursive=True,
                                batch_entries=10))
    assert max(len(batch) for batch in batches) <= 10
    merged = {path: version for batch in batches for path, version in batch.items()}
    assert sum(len(batch) for batch in batches) == len(merged) == 26
    st = os.lstat(tmp_path / "d" / "f03.mp3")
    assert merged["d/f03.mp3"] == (st.st_size, st.st_mtime_ns, st.st_ino)


def test_scan_from_an_excluded_directory_finds_nothing(tmp_path: Path) -> None:
    """A walk started inside an excluded directory yields nothing, as wants_file would say."""
    _write(tmp_path, ".cache/a.mp3")
    assert _scan(tmp_path, ".cache") == {}


def test_a_watching_walk_watches_every_real_directory_before_listing_it(
        tmp_path: Path) -> None:
    """With `watch`, every real directory below the root is watched, excluded ones too
    (their files stay unreported), none through a symlink, and each before it is listed:
    a file created the moment its directory is watched is found by the same walk."""
    for relative in ["a/b/old.mp3", ".cache/c/skip.mp3", "d.part/e/skip.mp3"]:
        _write(tmp_path, relative)
    (tmp_path / "link").symlink_to(tmp_path / "a", target_is_directory=True)
    watched: list[str] = []

    def watch(directory: str) -> None:
        watched.append(os.path.relpath(directory, tmp_path))
        (Path(directory) / "born.mp3").write_bytes(b"created after the watch")

    root = ConfinedRoot(str(tmp_path))
    found = {path for batch in scan_batches(root, "", DEFAULTS, recursive=True, watch=watch)
             for path in batch}
    assert sorted(watched) == [".cache", ".cache/c", "a", "a/b", "d.part", "d.part/e"]
    assert found == {"a/born.mp3", "a/b/born.mp3", "a/b/old.mp3"}


def test_a_non_recursive_watching_walk_watches_nothing_below_the_root(tmp_path: Path) -> None:
    """A non-recursive instance watches its root alone, so its walk adds no watch."""
    _write(tmp_path, "a/b/old.mp3")
    watched: list[str] = []
    batches = scan_batches(ConfinedRoot(str(tmp_path)), "", DEFAULTS, recursive=False,
                           watch=watched.append)
    assert [dict(batch) for batch in batches if batch] == [] and watched == []


def test_a_scan_says_at_debug_which_files_and_directories_a_filter_passes_over(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, each file a scan skips and each excluded directory is logged with the
    pattern that decided it; above DEBUG nothing is."""
    _write(tmp_path, "keep.mp3")
    _write(tmp_path, "a/song.mp3.part")
    _write(tmp_path, "a/notes.txt")
    _write(tmp_path, ".staging/album/track.mp3")
    only_mp3 = PathFilter(include=("*.mp3",), exclude=(".*", "*.part"))
    with caplog.at_level(logging.INFO, logger="multiwatch.watcher.scan"):
        list(walk_files(ConfinedRoot(str(tmp_path)), "", only_mp3, recursive=True))
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]
    with caplog.at_level(logging.DEBUG, logger="multiwatch.watcher.scan"):
        found = [p for p, _ in walk_files(ConfinedRoot(str(tmp_path)), "", only_mp3,
                                          recursive=True)]
    assert found == ["keep.mp3"]
    skipped = {os.path.relpath(r.path, str(tmp_path)): (r.getMessage(), r.reason)  # type: ignore[attr-defined]
               for r in caplog.records if "skipped" in r.getMessage()}
    assert skipped == {
        "a/song.mp3.part": ("file skipped by a filter", "excluded by pattern '*.part'"),
        "a/notes.txt": ("file skipped by a filter", "matches no include pattern ('*.mp3')"),
        ".staging": ("directory skipped by a filter", "excluded by pattern '.*'"),
    }
