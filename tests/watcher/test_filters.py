"""Include/exclude filters: which relative paths an instance announces."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multiwatch.watcher.filters import PathFilter

DEFAULTS = PathFilter(include=("*",), exclude=(".*", "*.part", "*.tmp", "*~"))


@pytest.mark.parametrize("relative_path", [
    ".hidden",
    "a/.hidden",
    ".git/config",
    "music/.cache/deep/song.mp3",
])
def test_dot_pattern_hides_dot_files_and_everything_under_dot_directories(
    relative_path: str,
) -> None:
    """".*" excludes dot-files and any file below a dot-directory, at any depth."""
    assert not DEFAULTS.wants_file(relative_path)


@pytest.mark.parametrize("relative_path", ["x.mp3.part", "incoming/x.mp3.part", "notes.tmp",
                                           "draft.txt~"])
def test_partial_and_temporary_files_are_excluded(relative_path: str) -> None:
    """In-progress downloads and editor/temporary files are never announced."""
    assert not DEFAULTS.wants_file(relative_path)


@pytest.mark.parametrize("relative_path", ["song.mp3", "a/b/c/song.mp3", "a.b/readme",
                                           "partial/x.mp3", "x.part.mp3"])
def test_ordinary_files_are_wanted_with_defaults(relative_path: str) -> None:
    """Ordinary names (even containing "part" or dots mid-name) pass the default filter."""
    assert DEFAULTS.wants_file(relative_path)


def test_include_name_pattern_matches_nested_files() -> None:
    """include "*.mp3" matches a file by its own name at any depth, and nothing else."""
    only_mp3 = PathFilter(include=("*.mp3",), exclude=(".*",))
    assert only_mp3.wants_file("x.mp3")
    assert only_mp3.wants_file("a/b/x.mp3")
    assert not only_mp3.wants_file("a/b/x.flac")
    assert not only_mp3.wants_file("x.mp3/cover.jpg")  # a directory named *.mp3 is not enough


def test_exclude_wins_over_include() -> None:
    """A file matching both include and exclude is not announced."""
    both = PathFilter(include=("*.mp3",), exclude=("*.part", ".*"))
    assert not both.wants_file("a/.x.mp3")
    assert not both.wants_file("stuff.part/x.mp3")


def test_empty_include_announces_nothing() -> None:
    """With no include pattern no file is wanted."""
    assert not PathFilter(include=(), exclude=()).wants_file("a.txt")


def test_include_pattern_with_slash_matches_whole_relative_path() -> None:
    """include "music/*.mp3" is matched against the relative path, not the bare name."""
    in_music = PathFilter(include=("music/*.mp3",), exclude=())
    assert in_music.wants_file("music/a.mp3")
    assert not in_music.wants_file("a.mp3")
    assert not in_music.wants_file("other/music/a.mp3")


def test_exclude_pattern_with_slash_matches_whole_relative_path() -> None:
    """exclude "incoming/*" hides what is below top-level incoming/ but not a nested incoming/."""
    no_incoming = PathFilter(include=("*",), exclude=("incoming/*",))
    assert not no_incoming.wants_file("incoming/a.mp3")
    assert not no_incoming.wants_file("incoming/deep/a.mp3")
    assert no_incoming.wants_file("other/incoming/a.mp3")
    assert no_incoming.wants_file("incoming.mp3")


@pytest.mark.parametrize("relative_dir", [".git", "a/.cache", "a/.cache/b", "dl.part"])
def test_wants_directory_prunes_excluded_directories(relative_dir: str) -> None:
    """A directory matched by a name pattern is pruned, and nothing below it is wanted."""
    assert not DEFAULTS.wants_directory(relative_dir)
    assert not DEFAULTS.wants_file(f"{relative_dir}/song.mp3")


@pytest.mark.parametrize("relative_dir", ["music", "a/b", "part", "a.b"])
def test_wants_directory_keeps_ordinary_directories(relative_dir: str) -> None:
    """Ordinary directories are walked."""
    assert DEFAULTS.wants_directory(relative_dir)


def test_slash_patterns_never_prune_directories() -> None:
    """A whole-path exclude does not prune (it is decided per file), so nothing wanted is lost."""
    no_incoming = PathFilter(include=("*",), exclude=("incoming/*",))
    assert no_incoming.wants_directory("incoming")
    assert no_incoming.wants_directory("other/incoming")


def _reference_wants_file(include: tuple[str, ...], exclude: tuple[str, ...], path: str) -> bool:
    """The documented rule, spelled out with fnmatchcase one pattern at a time."""
    names = path.split("/")

    def matches(pattern: str, *, any_component: bool) -> bool:
        if "/" in pattern:
            return fnmatchcase(path, pattern)
        return any(fnmatchcase(n, pattern) for n in (names if any_component else names[-1:]))

    if any(matches(p, any_component=True) for p in exclude):
        return False
    return any(matches(p, any_component=False) for p in include)


_GLOBS = st.lists(st.text(alphabet="ab*?[]!/.\n", min_size=1, max_size=6), max_size=3)


@settings(max_examples=400, deadline=None)
@given(include=_GLOBS, exclude=_GLOBS,
       path=st.text(alphabet="ab./\n\udcff", min_size=1, max_size=12))
def test_compiled_filters_decide_exactly_like_the_glob_rules(
    include: list[str], exclude: list[str], path: str,
) -> None:
    """The compiled filter announces exactly the files the one-glob-at-a-time rule does."""
    expected = _reference_wants_file(tuple(include), tuple(exclude), path)
    assert PathFilter(tuple(include), tuple(exclude)).wants_file(path) == expected


@settings(max_examples=400, deadline=None)
@given(exclude=_GLOBS, name=st.text(alphabet="ab.*?[]!~\udcff", min_size=1, max_size=6))
def test_the_walk_skips_exactly_the_names_an_exclude_pattern_matches(
    exclude: list[str], name: str,
) -> None:
    """Excluded names (prefix and suffix globs tested with str methods, the rest by regex)
    are exactly those a pattern without "/" matches, one glob at a time."""
    skip_name, _ = PathFilter(("*",), tuple(exclude)).scan_tests()
    expected = any(fnmatchcase(name, p) for p in exclude if "/" not in p)
    assert (skip_name is not None and skip_name(name)) == expected


@pytest.mark.parametrize("path_filter", [
    DEFAULTS,
    PathFilter(include=("*",), exclude=()),
    PathFilter(include=(), exclude=()),
    PathFilter(include=("*.mp3", "keep/*"), exclude=("*.part", "incoming/*", ".*")),
    PathFilter(include=("*",), exclude=("incoming/*", "[ab]*")),
    PathFilter(include=("*/deep/*",), exclude=("*~",)),
])
def test_scan_tests_decide_like_wants_file(path_filter: PathFilter) -> None:
    """The walk's compiled tests accept exactly the files wants_file accepts, for files in
    directories wants_directory lets the walk enter."""
    paths = ["a.mp3", "song.flac", ".hidden", "x.part", "keep/x.flac", "keep/.x", "b.mp3",
             "incoming/a.mp3", "other/incoming/c.mp3", "d/deep/song.mp3~", "d/deep/ok.wav",
             "song.tmp", "[ab].mp3", "caf\u00e9.mp3", "new\nline.mp3", "x/y/z/deep/q"]
    skip_name, wants = path_filter.scan_tests()
    checked = 0
    for relative in paths:
        directory, _, name = relative.rpartition("/")
        if directory and not path_filter.wants_directory(directory):
            continue
        fast = not (skip_name is not None and skip_name(name)) and (
            wants is None or wants(relative, name))
        assert fast == path_filter.wants_file(relative), relative
        checked += 1
    assert checked >= 10
