"""Include/exclude glob filters on paths relative to the watched directory.

A pattern without "/" matches a single name: for include, the file's own name; for
exclude, any component of the path (so ".*" hides dot-files and everything under a
dot-directory).  A pattern with "/" matches the whole relative path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase, translate


def _any_of(patterns: list[str]) -> Callable[[str], object] | None:
    """One compiled matcher for several glob patterns (fnmatchcase semantics); None if none."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns)).match


def _matches(pattern: str, relative_path: str, names: list[str], *, any_component: bool) -> bool:
    if "/" in pattern:
        return fnmatchcase(relative_path, pattern)
    if any_component:
        return any(fnmatchcase(name, pattern) for name in names)
    return fnmatchcase(names[-1], pattern)


@dataclass(frozen=True)
class PathFilter:
    """Decides which relative paths an instance announces."""

    include: tuple[str, ...]
    exclude: tuple[str, ...]

    def wants_file(self, relative_path: str) -> bool:
        """True if a regular file at this relative path should be announced."""
        names = relative_path.split("/")
        if any(_matches(p, relative_path, names, any_component=True) for p in self.exclude):
            return False
        return any(_matches(p, relative_path, names, any_component=False) for p in self.include)

    def wants_directory(self, relative_path: str) -> bool:
        """False if nothing under this directory can be wanted (prunes scans)."""
        names = relative_path.split("/")
        return not any(
            "/" not in p and any(fnmatchcase(name, p) for name in names) for p in self.exclude
        )

    def scan_tests(self) -> tuple[Callable[[str], object] | None,
                                  Callable[[str, str], bool] | None]:
        """Fast tests for a walk that enters only directories `wants_directory` accepted:
        (skip_name, wants).

        skip_name(name) is true for an entry name matching an exclude pattern without "/":
        neither a file nor a directory of that name is wanted, so the walk can skip it
        without a stat.  wants(relative_path, name) decides the rest for a file; None
        means every file not skipped is wanted (the default include "*").  Each group of
        patterns is one compiled regular expression, instead of one fnmatch per pattern
        and path component."""
        base = PathFilter
        if (type(self).wants_file is not base.wants_file
                or type(self).wants_directory is not base.wants_directory):
            return None, lambda relative_path, _name: self.wants_file(relative_path)
        skip_name = _any_of([p for p in self.exclude if "/" not in p])
        path_excluded = _any_of([p for p in self.exclude if "/" in p])
        name_patterns = [p for p in self.include if "/" not in p]
        if "*" in name_patterns:
            if path_excluded is None:
                return skip_name, None
            return skip_name, lambda relative_path, _name: not path_excluded(relative_path)
        name_included = _any_of(name_patterns)
        path_included = _any_of([p for p in self.include if "/" in p])

        def wants(relative_path: str, name: str) -> bool:
            if path_excluded is not None and path_excluded(relative_path):
                return False
            return bool((name_included is not None and name_included(name))
                        or (path_included is not None and path_included(relative_path)))

        return skip_name, wants
