"""The startup scan's progress lines: every few seconds, then one summary line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiwatch.watcher.pipeline import Pipeline

log = logging.getLogger("multiwatch.watcher.pipeline")  # (the logger these lines always had)

PROGRESS_EVERY_SECONDS = 5.0


class StartupProgress:
    """Logs the startup scan's progress every few seconds, then one summary line."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.files_scanned = 0
        self._scan_done = False
        self._finished = False
        self._next_report = self.started + PROGRESS_EVERY_SECONDS
        # Called once, when the scan is done and what it found is committed to the outbox.
        self.on_complete: Callable[[], None] | None = None

    def scan_finished(self) -> None:
        self._scan_done = True

    def report(self, pipeline: Pipeline) -> None:
        if self._finished:
            return
        now = time.monotonic()
        if self._scan_done and not pipeline.busy:
            self._finished = True
            self._log("startup scan complete", pipeline, now)
            if self.on_complete is not None:
                self.on_complete()
        elif now >= self._next_report:
            self._next_report = now + PROGRESS_EVERY_SECONDS
            self._log("startup scan progress", pipeline, now)

    def _log(self, message: str, pipeline: Pipeline, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        log.info(message, extra={
            "files_scanned": self.files_scanned,
            "files_waiting": pipeline.files_waiting,
            "files_hashed": pipeline.files_hashed,
            "bytes_hashed": pipeline.bytes_hashed,
            "hash_rate_mb_s": round(pipeline.bytes_hashed / elapsed / 1e6, 1),
            "elapsed_seconds": round(elapsed, 1),
        })
