"""The mass-deletion guard: deletions a scan finds are held, not announced, above a bound.

The kernel reports a deletion file by file, as it happens: those are announced at once.  A
scan (at start, after lost events, the periodic one) only sees that tracked files are no
longer there, which is also what an unmounted share, a mount that failed at boot or a
wrong `directory:` looks like; announcing it would tell every consumer to delete its
copies.  So when one scan finds more deletions than `max_scan_deletions` allows
(config/deletions.py), they are held: kept in the state database's held_deletions table,
their files still tracked, and reported (heartbeat `deletions_held`, a WARNING line).

A hold ends when
- a later scan meets the file again (a file back with the same version announces nothing,
  one back with other content is announced as modified), or the kernel reports a change
  to it (any write to its tracked row ends the hold, by trigger, in the same transaction);
- the operator runs `multiwatch deletions [-c ROSTER] ID --release`: each held file still gone is
  announced (file_deleted, through the outbox like any event);
- the operator runs `--recheck`: a rescan, as above.
While deletions are held, every deletion a later scan finds joins them: the operator
decides once, with the whole picture.

The command asks by a row in the state database (held_deletions.request_deletions), which this
guard reads every POLL_SECONDS while deletions are held (next_due turns the pipeline loop
for it then, and only then: no idle wakeups otherwise): no signal, no restart.  With none
held it reads nothing after its first look (the command asks only while some are held, and
only this guard holds deletions), so an idle watcher's wakeups cost no query.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable

from multiwatch.config import InstanceConfig
from multiwatch.watcher import held_deletions, state
from multiwatch.watcher.outbox import OutboxGauge

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
RELEASED_PER_STEP = 2000  # one pipeline turn's share of a release (an lstat each)


class DeletionGuard:
    """Decides which deletions a scan may announce; serves the operator's requests."""

    def __init__(self, store: state.StateStore, instance: InstanceConfig, gauge: OutboxGauge, *,
                 is_gone: Callable[[str], bool], is_tracked: Callable[[str], bool],
                 announce: Callable[[str], None], rescan: Callable[[], None]) -> None:
        self._conn = store.connection
        self._instance = instance
        self._gauge = gauge
        self._is_gone = is_gone
        self._is_tracked = is_tracked
        self._announce = announce  # the pipeline's deletion of a tracked path (file_deleted)
        self._rescan = rescan
        self.held = held_deletions.held_count(self._conn)  # for the heartbeat, refreshed each poll
        self._serving = 0  # the request being served (held_deletions.RECHECK or RELEASE), or 0
        self._releasing: list[str] = []  # held paths the release has not looked at yet
        self._released = self._back = 0  # of the release in progress
        self._next_poll = 0.0  # the first step looks (a request left before the start)
        self._looked = False
        self.roster = ""  # the roster file (main sets it): the WARNING's commands name it

    def scan_found(self, relative_dir: str, gone: list[str], tracked: int) -> list[str]:
        """A scan of relative_dir ended: `gone` are the tracked files it found gone, of
        `tracked` files in all.  Returns those to announce now; the others are held."""
        if self.held:
            back = sorted(set(held_deletions.held_paths(self._conn, relative_dir)).difference(gone))
            if back:  # met by this scan (or no longer tracked): nothing to announce
                held_deletions.hold_deletions(self._conn, back, held=False)
                self.held = held_deletions.held_count(self._conn)
                log.info("held deletions no longer held: the files are there again",
                         extra={"files": len(back), "deletions_held": self.held})
        if not relative_dir and self._serving == held_deletions.RECHECK:
            self._finish()  # the rescan it asked for (the newest walk runs first)
        bound = self._instance.max_scan_deletions
        if not gone or bound is None:
            return gone
        if not self.held and not bound.exceeded(len(gone), tracked):
            return gone
        before = self.held
        held_deletions.hold_deletions(self._conn, gone, held=True)
        self.held = held_deletions.held_count(self._conn)
        if self.held > before:
            id_ = self._instance.id
            if self.roster and not self.roster.startswith("<"):  # (not "<environment>")
                id_ = f"-c {shlex.quote(self.roster)} {id_}"
            log.warning(
                "%d deletions held: a scan found %d of %d tracked files gone (the bound is %s); "
                "nothing is announced for them. Is the directory unmounted? Run "
                "`multiwatch deletions %s --release` to announce them, or `--recheck` once the "
                "files are back", self.held, len(gone), tracked, bound.describe(), id_,
                extra={"path": self._instance.directory, "deletions_held": self.held})
        return []

    def next_due(self, now: float) -> float | None:
        """When the pipeline should turn for this guard: at once while a release is in
        progress, at the next poll while deletions are held (a request is only possible
        then: an operator waits on it), never otherwise (no idle wakeups)."""
        if self._releasing or self._serving == held_deletions.RELEASE:
            return now
        return self._next_poll if self.held else None

    def step(self, now: float) -> None:
        """Each pipeline turn: go on with a release; every POLL_SECONDS, look for a request."""
        if self._releasing and not self._gauge.full:
            self._release_some()
        elif self._serving == held_deletions.RELEASE and not self._releasing:
            self._finish()  # (a turn after the last announcements, which that turn committed)
        if now < self._next_poll:
            return
        self._next_poll = now + POLL_SECONDS
        if self._looked and not self.held and not self._serving:
            return  # nothing held: no request can come (and `held` cannot grow behind us)
        self._looked = True
        self.held = held_deletions.held_count(self._conn)
        request = held_deletions.deletion_request(self._conn)
        if not request or request == self._serving:
            return
        self._serving = request
        if request == held_deletions.RELEASE:
            self._releasing = held_deletions.held_paths(self._conn)
            self._releasing.reverse()  # popped from the end: path order
            self._released = self._back = 0
            log.info("releasing held deletions (multiwatch deletions --release)",
                     extra={"deletions_held": len(self._releasing)})
        else:
            log.info("re-checking held deletions: rescanning (multiwatch deletions --recheck)",
                     extra={"deletions_held": self.held})
            self._rescan()

    def _release_some(self) -> None:
        """Announce the next held paths still gone; those back (or untracked) are un-held."""
        back: list[str] = []
        for _ in range(RELEASED_PER_STEP):
            if not self._releasing:
                break
            relative = self._releasing.pop()
            if self._is_tracked(relative) and self._is_gone(relative):
                self._announce(relative)  # its row's deletion ends the hold (trigger)
                self._released += 1
            else:
                back.append(relative)
        if back:
            held_deletions.hold_deletions(self._conn, back, held=False)
            self._back += len(back)
        if not self._releasing:
            log.info("held deletions released: %d announced, %d not (their files are back)",
                     self._released, self._back)

    def _finish(self) -> None:
        held_deletions.finish_deletion_request(self._conn, self._serving)
        self._serving = 0
        self.held = held_deletions.held_count(self._conn)
