"""The `/` page: the fleet at a glance, one row per instance, refreshing itself every 5 s.

Plain HTML with inline CSS and a meta refresh: no JavaScript, nothing to install, and every
value from the fleet view is HTML-escaped. Events per minute come from the view (the
supervisor computes them as heartbeats arrive), so the first load already shows a rate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from html import escape
from typing import Any

from multiwatch.status_view import mapping, number, role_label
from multiwatch.supervisor.lifecycle import State

REFRESH_SECONDS = 5
_STATES = set(State)
_COLUMNS = ("instance", "state", "directory", "files", "events/min", "last event",
            "events by type", "outbox", "broker", "role", "restarts", "CPU %", "RSS MiB",
            "note")
LINKS = ("/status", "/metrics", "/healthz", "/readyz")


def render_page(view: Mapping[str, Any], wall_now: float | None = None) -> str:
    """The whole HTML document for one fleet view; `wall_now` (time.time()) dates events."""
    now = time.time() if wall_now is None else wall_now
    instances = mapping(view.get("instances"))
    rows = "\n".join(_row(str(ident), mapping(entry), now)
                     for ident, entry in sorted(instances.items()))
    if not rows:
        rows = f'<tr><td colspan="{len(_COLUMNS)}" class="muted">no instances</td></tr>'
    links = " · ".join(f'<a href="{link}">{link}</a>' for link in LINKS)
    header = "".join(f"<th>{escape(name)}</th>" for name in _COLUMNS)
    return _PAGE.format(refresh=REFRESH_SECONDS, summary=_summary(view, len(instances)),
                        links=links, header=header, rows=rows)


def _summary(view: Mapping[str, Any], count: int) -> str:
    supervisor = mapping(view.get("supervisor"))
    rss = mapping(supervisor.get("resources")).get("rss_bytes")
    parts = [
        f"{count} instance{'s' if count != 1 else ''}",
        f"role {_text(supervisor.get('role'))}",
        f"broker {_text(supervisor.get('broker'))}",
        f"supervisor pid {_text(supervisor.get('pid'))}",
        f"up {format_duration(supervisor.get('uptime_seconds'))}",
        f"RSS {format_mib(rss)} MiB",
        f"roster {_text(supervisor.get('roster'))}",
    ]
    return " · ".join(escape(p) for p in parts)


def event_name(event_type: Any) -> str:
    """file_modified → modified: the short name a person reads."""
    return str(event_type).removeprefix("file_")


def events_by_type(heartbeat: Mapping[str, Any]) -> str:
    """"discovered 7, modified 2" (types never seen are left out); "-" before a heartbeat."""
    events = mapping(heartbeat.get("events"))
    parts = [f"{event_name(kind)} {count}" for kind, count in events.items()
             if isinstance(count, int) and count]
    return ", ".join(parts) if parts else ("no events yet" if events else "-")


def last_event(heartbeat: Mapping[str, Any], now: float) -> tuple[str, str]:
    """(what, when) of the latest announcement: ("modified /a/b", "2024-01-02 03:04:05 UTC,
    5m00s ago"); ("-", "") when none."""
    event = mapping(heartbeat.get("last_event"))
    at = number(event.get("at"))
    if not event or at is None:
        return "-", ""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    return (f"{event_name(event.get('event_type'))} {_text(event.get('path'))}",
            f"{stamp}, {format_duration(max(0.0, now - at))} ago")


def _row(ident: str, entry: Mapping[str, Any], now: float) -> str:
    state = _text(entry.get("state"))
    heartbeat = mapping(entry.get("heartbeat"))
    resources = mapping(entry.get("resources"))
    connected = heartbeat.get("broker_connected")
    broker = ("up", "ok") if connected is True else ("down", "bad") if connected is False \
        else ("-", "muted")
    rate = number(entry.get("events_per_minute"))
    what, when = last_event(heartbeat, now)
    note = entry.get("reason") or entry.get("last_exit") or heartbeat.get("last_error") or ""
    cells = [
        f'<td class="id">{escape(ident)}{_limits_line(entry)}</td>',
        f'<td class="state {state.lower() if state in _STATES else ""}">{escape(state)}</td>',
        f'<td class="path">{escape(_text(entry.get("directory")))}</td>',
        f'<td class="num">{escape(_text(heartbeat.get("files_tracked")))}</td>',
        f'<td class="num">{"-" if rate is None else f"{rate:.1f}"}</td>',
        f'<td class="path">{escape(what)}<br><span class="muted">{escape(when)}</span></td>',
        f'<td>{escape(events_by_type(heartbeat))}</td>',
        f'<td class="num">{escape(_text(heartbeat.get("outbox_depth")))}</td>',
        f'<td class="{broker[1]}">{broker[0]}</td>',
        f'<td>{escape(_text(role_label(entry)))}</td>',  # active | standby (roster ha)
        f'<td class="num">{escape(_text(entry.get("restarts")))}</td>',
        f'<td class="num">{escape(_percent(resources.get("cpu_percent")))}</td>',
        f'<td class="num">{escape(format_mib(resources.get("rss_bytes")))}</td>',
        f'<td class="note">{_deletions_held_html(heartbeat)}{_unusual_activity_html(heartbeat)}'
        f'{escape(str(note))}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def unusual_activity_text(heartbeat: Mapping[str, Any]) -> str:
    """"unusual activity: 200 moved within 5m00s, 100% of 200 tracked files" while the
    watcher reports it; "" otherwise."""
    unusual = mapping(heartbeat.get("unusual_activity"))
    if unusual.get("active") is not True:
        return ""
    counts = ", ".join(f"{count} {kind}" for kind, count in
                       mapping(unusual.get("events")).items() if number(count))
    percent = number(unusual.get("percent"))
    return (f"unusual activity: {counts or 'events'} within "
            f"{format_duration(unusual.get('window_seconds'))}, "
            f"{'-' if percent is None else f'{percent:.0f}'}% of "
            f"{_text(unusual.get('files_tracked'))} tracked files")


def _unusual_activity_html(heartbeat: Mapping[str, Any]) -> str:
    text = unusual_activity_text(heartbeat)
    return f'<span class="bad">{escape(text)}</span><br>' if text else ""


def deletions_held_text(heartbeat: Mapping[str, Any]) -> str:
    """"1000 deletions held" while a scan's deletions wait for the operator
    (`multiwatch deletions`); "" otherwise."""
    held = number(heartbeat.get("deletions_held"))
    if not held:
        return ""
    return f"{held:.0f} deletion{'' if held == 1 else 's'} held"


def _deletions_held_html(heartbeat: Mapping[str, Any]) -> str:
    text = deletions_held_text(heartbeat)
    return f'<span class="bad">{escape(text)}</span><br>' if text else ""


def limits_text(entry: Mapping[str, Any]) -> str:
    """The limits the roster sets: "read 4.0 MiB/s, nice 10, ionice idle"; "" when none."""
    parts = []
    if rate := number(entry.get("read_rate_limit")):
        parts.append(f"read {format_mib(rate)} MiB/s")
    if memory := number(entry.get("memory_limit")):
        parts.append(f"RSS {format_mib(memory)} MiB")
    for key in ("nice", "ionice"):
        if entry.get(key) is not None:
            parts.append(f"{key} {entry[key]}")
    return ", ".join(parts)


def _limits_line(entry: Mapping[str, Any]) -> str:
    text = limits_text(entry)
    return f'<br><span class="muted">{escape(text)}</span>' if text else ""


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _percent(value: Any) -> str:
    figure = number(value)
    return "-" if figure is None else f"{figure:.1f}"


def format_mib(value: Any) -> str:
    """Bytes as MiB with one decimal; "-" when unknown."""
    figure = number(value)
    return "-" if figure is None else f"{figure / 1048576:.1f}"


def format_duration(value: Any) -> str:
    """Seconds as 12s, 4m05s, 2h05m or 3d4h; "-" when unknown."""
    seconds = number(value)
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
td.id, td.path {{ font-family: ui-monospace, monospace; }}
td.path {{ max-width: 28em; overflow-wrap: anywhere; }}
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
<p>{links}</p>
<table>
<tr>{header}</tr>
{rows}
</table>
</body>
</html>
"""
