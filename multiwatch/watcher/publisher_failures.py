"""The publisher's failures in words, and the broker's resource alarm (Connection.Blocked):
what its log lines, status and /readyz say.  Runs on the publisher thread (the alarm's
callbacks too: they run inside the connection's reads).
"""

from __future__ import annotations

import logging
import sqlite3
import time

from multiwatch.broker import BrokerLink
from multiwatch.broker_errors import describe, user_of, where
from multiwatch.config import mask_url
from multiwatch.watcher.batches import PublishFailed
from multiwatch.watcher.outbox import OutboxGauge
from multiwatch.watcher.publisher_health import PublisherStats

log = logging.getLogger("multiwatch.watcher.publisher")  # (the logger these lines always had)

# Every reconnect of a blocked connection is blocked again: said once a minute at most.
BLOCKED_LOG_EVERY_SECONDS = 60.0


class BlockedAlarm:
    """The broker blocked the connection (a memory or disk alarm), or lifted it."""

    def __init__(self, stats: PublisherStats) -> None:
        self._stats = stats
        self._blocked_logged_at = -float("inf")

    def on_blocked(self, reason: str) -> None:
        """Connection.Blocked: the broker stopped reading us (an alarm).  Confirms stop
        coming, so the usual confirm timeout (and reconnect) applies; this names why."""
        self._stats.blocked = reason or "resource alarm"
        now = time.monotonic()
        if now - self._blocked_logged_at >= BLOCKED_LOG_EVERY_SECONDS:  # every reconnect is blocked
            self._blocked_logged_at = now
            log.warning("the broker blocked the connection (a memory or disk alarm); events "
                        "wait in the outbox until it lifts", extra={"reason": self._stats.blocked})

    def on_unblocked(self) -> None:
        self._stats.blocked = ""
        self._blocked_logged_at = -float("inf")
        log.info("the broker unblocked the connection")


def failure_extra(failure: Exception, link: BrokerLink, stats: PublisherStats,
                  gauge: OutboxGauge, delay: float | None) -> dict[str, object]:
    """The fields of a failure's log line: the reason, the outbox, the URL (masked) and
    user it concerned, and when the next try comes."""
    extra: dict[str, object] = {"error": stats.last_error,
                                "outbox_depth": gauge.depth}
    if link.last_url and not isinstance(failure, sqlite3.Error):
        extra["broker"] = mask_url(link.last_url)
        extra["user"] = user_of(link.last_url)
    if delay is not None:
        extra["retry_in_seconds"] = round(delay, 2)
    return extra


def failure_reason(exc: Exception, link: BrokerLink) -> str:
    """Why the last attempt failed, in words, with the URL (masked) and user it concerned:
    the log line's `error` and the reason status and /readyz show."""
    if isinstance(exc, sqlite3.Error):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, PublishFailed) or not link.last_url:
        return describe(exc)
    return f"{describe(exc)} ({where(link.last_url)})"


def failure_message(exc: Exception) -> str:
    if isinstance(exc, sqlite3.Error):
        return "cannot update the outbox in the state database, retrying"
    return "broker unavailable, retrying"
