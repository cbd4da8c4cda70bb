"""Include/exclude glob filters on paths relative to the watched directory.

A pattern without "/" matches a single name: for include, the file's own name; for
exclude, any component of the path (so ".*" hides dot-files and everything under a
dot-directory).  A pattern with "/" matches the whole relative path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase, translate


def _any_of(patterns: list[str]) -> re.Pattern[str] | None:
    """One compiled regex matching any of the glob patterns (fnmatchcase semantics)."""
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns)) if patterns else None


_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class NameSkip:
    """The exclude patterns without "/", as a test of one entry name.

    The common shapes, "text*" and "*text", are tested with str.startswith and
    str.endswith on a tuple: the walk tests every directory entry, and one regex match per
    entry was a tenth of a restart's walk over 100,000 files (the defaults are all of
    those shapes).  The other patterns stay one regex."""

    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    others: Callable[[str], object] | None

    @classmethod
    def of(cls, patterns: tuple[str, ...]) -> NameSkip | None:
        prefixes, suffixes, others = [], [], []
        for pattern in (p for p in patterns if "/" not in p):
            if pattern.endswith("*") and not _GLOB_CHARACTERS & set(pattern[:-1]):
                prefixes.append(pattern[:-1])
            elif pattern.startswith("*") and not _GLOB_CHARACTERS & set(pattern[1:]):
                suffixes.append(pattern[1:])
            else:
                others.append(pattern)
        if not (prefixes or suffixes or others):
            return None
        regex = _any_of(others)
        return cls(tuple(prefixes), tuple(suffixes), regex.match if regex is not None else None)

    def __call__(self, name: str) -> bool:
        return bool(name.startswith(self.prefixes) or name.endswith(self.suffixes)
                    or (self.others is not None and self.others(name)))


@dataclass(frozen=True)
class _Compiled:
    """The patterns of one side (include or exclude), split by what they are matched on."""

    names: re.Pattern[str] | None  # patterns without "/": matched on a single name
    paths: re.Pattern[str] | None  # patterns with "/": matched on the whole relative path

    @classmethod
    def of(cls, patterns: tuple[str, ...]) -> _Compiled:
        return cls(_any_of([p for p in patterns if "/" not in p]),
                   _any_of([p for p in patterns if "/" in p]))


@dataclass(frozen=True)
class PathFilter:
    """Decides which relative paths an instance announces.

    Called for every notification, so each side's globs are compiled into one regex."""

    include: tuple[str, ...]
    exclude: tuple[str, ...]
    _include: _Compiled = field(init=False, repr=False, compare=False)
    _exclude: _Compiled = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_include", _Compiled.of(self.include))
        object.__setattr__(self, "_exclude", _Compiled.of(self.exclude))

    def wants_file(self, relative_path: str) -> bool:
        """True if a regular file at this relative path should be announced."""
        exclude, include = self._exclude, self._include
        if exclude.paths is not None and exclude.paths.match(relative_path):
            return False
        names = relative_path.split("/")
        if exclude.names is not None and any(exclude.names.match(n) for n in names):
            return False
        if include.paths is not None and include.paths.match(relative_path):
            return True
        return include.names is not None and include.names.match(names[-1]) is not None

    def why_unwanted(self, relative_path: str) -> str:
        """Why wants_file is false, for a DEBUG line: the first pattern that decided it.
        Pattern by pattern, so slow: only called when that line is logged."""
        names = relative_path.split("/")
        for pattern in self.exclude:
            subjects = [relative_path] if "/" in pattern else names
            if any(fnmatchcase(subject, pattern) for subject in subjects):
                return f"excluded by pattern {pattern!r}"
        return f"matches no include pattern ({', '.join(map(repr, self.include))})"

    def wants_directory(self, relative_path: str) -> bool:
        """False if nothing under this directory can be wanted (prunes scans)."""
        names = self._exclude.names
        return names is None or not any(names.match(n) for n in relative_path.split("/"))

    def scan_tests(self) -> tuple[NameSkip | None, Callable[[str, str], bool] | None]:
        """Fast tests for a walk that enters only directories `wants_directory` accepted:
        (skip_name, wants).

        skip_name(name) is true for an entry name matching an exclude pattern without "/":
        neither a file nor a directory of that name is wanted, so the walk can skip it
        without a stat.  wants(relative_path, name) decides the rest for a file; None
        means every file not skipped is wanted (the default include "*")."""
        base = PathFilter
        if (type(self).wants_file is not base.wants_file
                or type(self).wants_directory is not base.wants_directory):
            return None, lambda relative_path, _name: self.wants_file(relative_path)
        exclude, include = self._exclude, self._include
        skip_name = NameSkip.of(self.exclude)
        path_excluded = exclude.paths
        if "*" in self.include:
            if path_excluded is None:
                return skip_name, None
            return skip_name, lambda relative_path, _name: not path_excluded.match(relative_path)

        def wants(relative_path: str, name: str) -> bool:
            if path_excluded is not None and path_excluded.match(relative_path):
                return False
            return bool((include.names is not None and include.names.match(name))
                        or (include.paths is not None and include.paths.match(relative_path)))

        return skip_name, wants
