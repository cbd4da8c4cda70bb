"""Fake supervisor fleet views, an in-process HTTP endpoint serving them, and a GET helper."""

from __future__ import annotations

import copy
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from multiwatch.supervisor.http import HttpServer, start_http_server

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def heartbeat(**overrides: Any) -> dict[str, Any]:
    """A full heartbeat snapshot, as a watcher sends it; keyword arguments replace keys."""
    beat: dict[str, Any] = {
        "events": {"file_discovered": 7, "file_modified": 2, "file_deleted": 1, "file_moved": 0},
        "bytes_hashed": 4096, "files_hashed": 9, "files_waiting": 1,
        "outbox_depth": 3, "outbox_bytes": 1500, "outbox_full": False,
        "broker_connected": True, "published": 7, "publish_failures": 1, "errors": 2,
        "last_error": "", "events_unroutable": 0, "events_nacked": 0, "publish_held": False,
        "problem": "", "deletions_held": 0, "unmounted": False,
        "latency": {"buckets": [0.1, 1.0, 5.0], "counts": [1, 4, 6], "sum": 9.5, "count": 7},
        "unusual_activity": {"enabled": True, "active": False, "since": None,
                             "window_seconds": 300.0,
                             "events": {"deleted": 1, "modified": 2, "moved": 0},
                             "files_tracked": 120, "percent": 2.5, "threshold_percent": 20.0,
                             "min_events": 100},
    }
    beat.update(overrides)
    return beat


def instance(state: str = "RUNNING", **overrides: Any) -> dict[str, Any]:
    """One instance entry of the fleet view, RUNNING and connected unless told otherwise."""
    entry: dict[str, Any] = {
        "state": state, "pid": 4242, "restarts": 0, "uptime_seconds": 125.0,
        "last_exit": "", "directory": "/data/music", "reason": "",
        "heartbeat_age_seconds": 0.4, "heartbeat": heartbeat(), "role": "active",
        "resources": {"cpu_percent": 1.5, "rss_bytes": 40 * 1048576, "open_files": 5,
                      "threads": 4, "read_bytes": 8192},
    }
    entry.update(overrides)
    return entry


def fleet(instances: Mapping[str, Mapping[str, Any]], *, loop_age: float = 0.2) -> dict[str, Any]:
    """A whole fleet view around `instances`."""
    return {
        "supervisor": {"pid": 100, "uptime_seconds": 3700.0, "loop_age_seconds": loop_age,
                       "roster": "/etc/multiwatch/roster.yaml",
                       "resources": {"cpu_percent": 0.5, "rss_bytes": 30 * 1048576,
                                     "open_files": 12, "threads": 3, "read_bytes": 0}},
        "instances": instances,
    }


class ViewHolder:
    """What the supervisor would hand the server: a callable returning a fresh copy."""

    def __init__(self, view: dict[str, Any]) -> None:
        self.view = view

    def __call__(self) -> dict[str, Any]:
        return copy.deepcopy(self.view)


@contextmanager
def serve(view: dict[str, Any], **options: Any) -> Iterator[tuple[HttpServer, ViewHolder]]:
    """An endpoint on a free loopback port serving `view` (change it via the holder)."""
    holder = ViewHolder(view)
    server = start_http_server("127.0.0.1:0", holder, **options)
    try:
        yield server, holder
    finally:
        server.close()


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; error statuses are answers, not exceptions."""
    request = urllib.request.Request(url, method=method)
    try:
        with _OPENER.open(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()
