"""Include/exclude glob filters on paths relative to the watched directory.

A pattern without "/" matches a single name: for include, the file's own name; for
exclude, any component of the path (so ".*" hides dot-files and everything under a
dot-directory).  A pattern with "/" matches the whole relative path.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


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
