"""Relative paths grouped by directory, so the paths below a directory are found in time
proportional to that subtree, not to every tracked path.

A directory event (deleted, moved) and a directory's reconcile scan each ask for the paths
below one directory; filtering every tracked path by prefix made a tree of many directories
quadratic (thousands of albums moved or copied in, each asking about 100,000 paths).
"""

from __future__ import annotations

from collections.abc import Iterable


def directory_of(relative_path: str) -> str:
    """The relative directory a path is in ("" for the watched root)."""
    return relative_path.rpartition("/")[0]


class PathIndex:
    """A set of relative file paths, indexed by directory and by subdirectory."""

    __slots__ = ("_files", "_subdirectories")

    def __init__(self, paths: Iterable[str] = ()) -> None:
        self._files: dict[str, set[str]] = {}  # directory → its paths
        self._subdirectories: dict[str, set[str]] = {}  # directory → child directories
        self.update(paths)

    def add(self, relative_path: str) -> None:
        directory = directory_of(relative_path)
        files = self._files.get(directory)
        if files is None:
            files = self._files[directory] = set()
            self._link(directory)
        files.add(relative_path)

    def update(self, paths: Iterable[str]) -> None:
        for path in paths:
            self.add(path)

    def discard(self, relative_path: str) -> None:
        directory = directory_of(relative_path)
        files = self._files.get(directory)
        if files is None:
            return
        files.discard(relative_path)
        if not files:
            del self._files[directory]
            self._prune(directory)

    def under(self, relative_dir: str) -> list[str]:
        """The paths below relative_dir, at any depth ("" for all)."""
        found: list[str] = []
        pending = [relative_dir]
        while pending:
            directory = pending.pop()
            found.extend(self._files.get(directory, ()))
            pending.extend(self._subdirectories.get(directory, ()))
        return found

    def _link(self, directory: str) -> None:
        """Record directory under its parents, up to the first already recorded."""
        while directory:
            parent = directory_of(directory)
            children = self._subdirectories.get(parent)
            if children is None:
                children = self._subdirectories[parent] = set()
            elif directory in children:
                return
            children.add(directory)
            directory = parent

    def _prune(self, directory: str) -> None:
        """Forget directories left with no paths below them (renamed trees, over days)."""
        while directory and directory not in self._files and (
                not self._subdirectories.get(directory)):
            self._subdirectories.pop(directory, None)
            parent = directory_of(directory)
            children = self._subdirectories.get(parent)
            if children is not None:
                children.discard(directory)
            directory = parent
