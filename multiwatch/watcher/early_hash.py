"""Early hashing of big files: a close-after-write starts the pool's hash while the file
settles, so a big file is announced soon after its settle period ends.

Runs on the pipeline's thread; only the reading happens on the pool's workers.  At most one
job per path is kept: the one whose result can still be announced.  Its result is used
only if the settle period then passes with no new event and the file still has the version
that was hashed; any event in between drops the job.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterator

from multiwatch.watcher.confined import ConfinedRoot
from multiwatch.watcher.hash_pool import HashJob, HashPool
from multiwatch.watcher.hashing import FileVersion
from multiwatch.watcher.tracked_files import TrackedFiles

Resolved = tuple[str, os.stat_result]
"""The file to read for a path (itself, or a symlink's target inside the root) and its stat."""


class EarlyHashes:
    """The pool's jobs, one per path; with no pool every file is hashed inline."""

    def __init__(self, pool: HashPool | None, confined: ConfinedRoot, tracked: TrackedFiles,
                 resolve: Callable[[str], Resolved | None]) -> None:
        self.pool = pool
        self._confined = confined
        self._tracked = tracked
        self._resolve = resolve
        self.jobs: dict[str, HashJob] = {}

    def start(self, relative: str) -> Resolved | None:
        """A writer closed the file (or renamed it into place): start hashing a big one
        now, while it settles.  Returns the file's stat (see trusted_stat_at_close)."""
        if self.pool is None:
            return None
        try:
            resolved = self._resolve(relative)
        except OSError:
            resolved = None
        if resolved is None:
            self.drop(relative)
            return None
        readable_path, st = resolved
        version = FileVersion.of(st)
        job = self.jobs.get(relative)
        if job is not None and job.version == version and job.path == readable_path:
            return resolved  # already hashing this very version
        self.drop(relative)
        if st.st_size < self.pool.min_bytes or self._tracked.version_of(relative) == version:
            return resolved
        self.jobs[relative] = self.pool.submit(relative, readable_path, version, self._confined)
        return resolved

    def trusted_stat_at_close(self, relative: str, resolved: Resolved | None) -> Resolved | None:
        """The stat taken at the close that ended this quiet period, when it can stand in
        for a fresh one: a small file whose content is new, hashed right away, where
        hash_file checks that the file it opens still has that version (a change without
        events since, by an mmap writer say, means another quiet period).  Big files (the
        pool's) and closes that changed nothing are stat'ed afresh."""
        if resolved is None or self.pool is None:
            return None
        st = resolved[1]
        if st.st_size >= self.pool.min_bytes:
            return None
        if self._tracked.version_of(relative) == FileVersion.of(st):
            return None
        return resolved

    def for_settled(self, relative: str, readable_path: str,
                    version: FileVersion) -> HashJob | None:
        """The pool's job for a file whose settle period is over (started now unless one
        for this very version runs already); None for a file small enough to hash inline."""
        if self.pool is None or version.size < self.pool.min_bytes:
            return None
        job = self.jobs.get(relative)
        if job is None or job.version != version or job.path != readable_path:
            self.drop(relative)
            job = self.jobs[relative] = self.pool.submit(relative, readable_path, version,
                                                         self._confined)
        job.settled = True
        return job

    def drop(self, relative: str) -> None:
        job = self.jobs.pop(relative, None)
        if job is not None:
            job.cancel()

    def completed(self) -> Iterator[HashJob]:
        """The jobs the pool handed back that are still wanted, each marked done."""
        if self.pool is None:
            return
        while True:
            try:
                job = self.pool.completed.get_nowait()
            except queue.Empty:
                return
            if self.jobs.get(job.relative) is not job:
                continue  # dropped meanwhile: a newer event made it stale
            job.done = True
            yield job

    def shutdown(self) -> None:
        """Abandon hashes in progress (see Pipeline.close)."""
        if self.pool is not None:
            self.pool.shutdown()
        self.jobs.clear()
