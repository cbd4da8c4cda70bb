"""Files that could not be read and directories that could not be listed, until they can.

Each is warned about once (not at every event, retry or rescan), and tried again: at once
when its permissions change ("attrib"), and with backoff anyway (retry.RetrySchedule),
because a network mount recovering from EIO/ESTALE sends no event at all.  The pipeline
asks what is due and does the reading; this module only keeps the books.
"""

from __future__ import annotations

import logging
import os

from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.retry import RetrySchedule

log = logging.getLogger(__name__)


def _within(path: str, relative_dir: str) -> bool:
    return not relative_dir or path == relative_dir or path.startswith(relative_dir + "/")


class Unreadable:
    """What could not be read or listed under one watched root."""

    def __init__(self, root: ConfinedRoot) -> None:
        self._root = root
        self.files: set[str] = set()  # files reported unreadable
        # Directories reported unlistable: scan.scan_batches adds and discards them itself.
        self.directories: set[str] = set()
        self._file_retries = RetrySchedule()
        self._directory_retries = RetrySchedule()

    def cannot_read(self, relative: str, exc: OSError, now: float) -> None:
        """A read (or stat) failed: warn the first time, try again later."""
        self._file_retries.failed(relative, now)
        if relative not in self.files:
            self.files.add(relative)
            log.warning("cannot read file: %s", exc.strerror or exc,
                        extra={"path": os.path.join(self._root.path, relative)})

    def readable(self, relative: str) -> None:
        """The file was read, or is gone: no more retries; a new failure warns again."""
        self._file_retries.forget(relative)
        if relative in self.files:
            self.files.discard(relative)
            if self._exists(relative):
                log.info("file readable again",
                         extra={"path": os.path.join(self._root.path, relative)})

    def _exists(self, relative: str) -> bool:
        """Whether `relative` is in the tree, looked up as every other path (confined.py)."""
        try:
            self._root.stat(relative)
        except OSError:
            return False
        return True

    def next_due(self) -> float | None:
        """When the next retry is due (time.monotonic), or None."""
        dues = [due for due in (self._file_retries.next_due(),
                                self._directory_retries.next_due()) if due is not None]
        return min(dues, default=None)

    def due(self, now: float) -> tuple[list[str], list[str]]:
        """(files to read again, directories to list again) whose retry is due."""
        return self._file_retries.pop_due(now), self._directory_retries.pop_due(now)

    def walked(self, relative_dir: str, now: float) -> None:
        """A walk of relative_dir ended: each directory in it that still cannot be listed
        is tried again later (backing off); one that listed is done with."""
        for directory in self._directory_retries.failing():
            if directory not in self.directories:
                self._directory_retries.forget(directory)
        for directory in self.directories:
            if _within(directory, relative_dir) and (
                    not self._directory_retries.pending(directory)):
                self._directory_retries.failed(directory, now)

    def below(self, relative_dir: str) -> tuple[list[str], list[str]]:
        """(files, directories) that failed at or below relative_dir: to try again when its
        permissions change (made listable, or searchable, again)."""
        return ([path for path in self.files if _within(path, relative_dir)],
                [d for d in self.directories if _within(d, relative_dir)])
