"""The `/` page: the fleet at a glance, one row per instance, refreshing itself every 5 s.

Plain HTML with inline CSS and a meta refresh: no JavaScript, nothing to install, and every
value from the fleet view is HTML-escaped. Events per minute come from successive views:
`EventRates` remembers each instance's event total over the last minute of page loads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from html import escape
from typing import Any

REFRESH_SECONDS = 5
RATE_WINDOW_SECONDS = 60.0
_MIN_SPAN_SECONDS = 1.0  # samples closer together than this make a noisy rate
_MAX_SAMPLES = 120
_STATES = {"STARTING", "RUNNING", "WAITING", "BACKOFF", "FATAL", "STOPPING", "STOPPED"}


def event_total(entry: Mapping[str, Any]) -> int | None:
    """All events an instance's watcher announced since it started; None before a heartbeat."""
    heartbeat = entry.get("heartbeat")
    events = heartbeat.get("events") if isinstance(heartbeat, Mapping) else None
    if not isinstance(events, Mapping):
        return None
    return sum(v for v in events.values() if isinstance(v, int) and not isinstance(v, bool))


class EventRates:
    """Events per minute per instance, from the totals seen at successive page loads.

    The rate spans the oldest sample of the last minute, so several open browsers do not
    shrink it to noise. A total that went down means the watcher restarted (its counters
    restart from 0): the history starts over. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def observe(self, instances: Mapping[str, Any], now: float) -> dict[str, float | None]:
        """Record this view's totals at `now` (monotonic); events/min per id, None if unknown."""
        rates: dict[str, float | None] = {}
        with self._lock:
            for ident in set(self._samples) - set(instances):
                del self._samples[ident]
            for ident, entry in instances.items():
                total = event_total(entry) if isinstance(entry, Mapping) else None
                rates[ident] = None if total is None else self._observe(ident, total, now)
        return rates

    def _observe(self, ident: str, total: int, now: float) -> float | None:
        samples = self._samples.setdefault(ident, deque(maxlen=_MAX_SAMPLES))
        if samples and total < samples[-1][1]:
            samples.clear()
        while len(samples) > 1 and now - samples[1][0] >= RATE_WINDOW_SECONDS:
            samples.popleft()  # keep one sample at least a window old
        if not samples or now - samples[-1][0] >= _MIN_SPAN_SECONDS:
            samples.append((now, total))
        first_time, first_total = samples[0]
        span = now - first_time
        if span < _MIN_SPAN_SECONDS:
            return None
        return (total - first_total) * 60.0 / span


def render_page(view: Mapping[str, Any], rates: Mapping[str, float | None]) -> str:
    """The whole HTML document for one fleet view."""
    instances = view.get("instances")
    instances = instances if isinstance(instances, Mapping) else {}
    rows = "\n".join(_row(str(ident), entry if isinstance(entry, Mapping) else {},
                          rates.get(ident))
                     for ident, entry in sorted(instances.items()))
    if not rows:
        rows = '<tr><td colspan="9" class="muted">no instances</td></tr>'
    return _PAGE.format(refresh=REFRESH_SECONDS, summary=_summary(view, len(instances)),
                        rows=rows)


def _summary(view: Mapping[str, Any], count: int) -> str:
    supervisor = view.get("supervisor")
    supervisor = supervisor if isinstance(supervisor, Mapping) else {}
    resources = supervisor.get("resources")
    rss = resources.get("rss_bytes") if isinstance(resources, Mapping) else None
    parts = [
        f"{count} instance{'s' if count != 1 else ''}",
        f"supervisor pid {_text(supervisor.get('pid'))}",
        f"up {format_duration(supervisor.get('uptime_seconds'))}",
        f"RSS {format_mib(rss)} MiB",
        f"roster {_text(supervisor.get('roster'))}",
    ]
    return " · ".join(escape(p) for p in parts)


def _row(ident: str, entry: Mapping[str, Any], rate: float | None) -> str:
    state = _text(entry.get("state"))
    heartbeat = entry.get("heartbeat")
    heartbeat = heartbeat if isinstance(heartbeat, Mapping) else {}
    resources = entry.get("resources")
    resources = resources if isinstance(resources, Mapping) else {}
    connected = heartbeat.get("broker_connected")
    broker = ("up", "ok") if connected is True else ("down", "bad") if connected is False \
        else ("-", "muted")
    if rate is not None:
        events = f"{rate:.1f}"
    else:
        total = event_total(entry)
        events = "-" if total is None else f"{total} total"
    note = entry.get("reason") or entry.get("last_exit") or heartbeat.get("last_error") or ""
    cells = [
        f'<td class="id">{escape(ident)}</td>',
        f'<td class="state {state.lower() if state in _STATES else ""}">{escape(state)}</td>',
        f'<td class="num">{escape(_text(entry.get("restarts")))}</td>',
        f'<td class="num">{escape(events)}</td>',
        f'<td class="num">{escape(_text(heartbeat.get("outbox_depth")))}</td>',
        f'<td class="{broker[1]}">{broker[0]}</td>',
        f'<td class="num">{escape(_percent(resources.get("cpu_percent")))}</td>',
        f'<td class="num">{escape(format_mib(resources.get("rss_bytes")))}</td>',
        f'<td class="note">{escape(str(note))}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _percent(value: Any) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.1f}"


def format_mib(value: Any) -> str:
    """Bytes as MiB with one decimal; "-" when unknown."""
    number = _number(value)
    return "-" if number is None else f"{number / 1048576:.1f}"


def format_duration(value: Any) -> str:
    """Seconds as 12s, 4m05s, 2h05m or 3d4h; "-" when unknown."""
    seconds = _number(value)
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<title>multiwatch</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; margin: 0 0 .2em; }}
p {{ color: #666; margin: 0 0 1em; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: .3em .8em; border-bottom: 1px solid #ddd; text-align: left; }}
th {{ background: #f4f4f4; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.id {{ font-family: ui-monospace, monospace; }}
.running, .ok {{ color: #1a7f37; font-weight: 600; }}
.backoff, .fatal, .bad {{ color: #cf222e; font-weight: 600; }}
.starting, .waiting, .stopping {{ color: #9a6700; font-weight: 600; }}
.stopped, .muted {{ color: #888; }}
td.note {{ color: #666; max-width: 30em; }}
</style>
</head>
<body>
<h1>multiwatch</h1>
<p>{summary} · refreshes every {refresh} s</p>
<table>
<tr><th>instance</th><th>state</th><th>restarts</th><th>events/min</th><th>outbox</th>
<th>broker</th><th>CPU %</th><th>RSS MiB</th><th>note</th></tr>
{rows}
</table>
</body>
</html>
"""
