"""The roster key `unusual_activity`: when a burst of deletions, modifications and renames is
worth a warning (what ransomware or a runaway script looks like).

    unusual_activity: {window_seconds: 300, percent: 20, min_events: 100}   # the defaults
    unusual_activity: off                                                     # no signal

One threshold over the three kinds together: the events announced within the last
`window_seconds` are unusual when they are at least `min_events` and more than `percent` %
of the tracked files.  A mapping replaces the whole setting (a key it leaves out takes the
built-in default, not the one from `defaults:`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from multiwatch.config import source as cs
from multiwatch.config.source import Node, Source

# Per-second buckets make the window's memory window_seconds entries: a day at most.
MAX_WINDOW_SECONDS = 86_400
_OFF = ("off", "false", "no", "none", "disabled")
_ON = ("on", "true", "yes", "enabled")
_KEYS = ("window_seconds", "percent", "min_events")


@dataclass(frozen=True)
class UnusualActivityConfig:
    """Above both figures within the window, the instance reports unusual activity."""

    window_seconds: float = 300.0  # the rolling window the events are counted over
    percent: float = 20.0  # of the tracked files (events, not distinct files: may pass 100)
    min_events: int = 100  # fewer events than this are never unusual (small trees)


DEFAULT_UNUSUAL_ACTIVITY = UnusualActivityConfig()


def unusual_activity(src: Source, node: Node, key: str) -> UnusualActivityConfig | None:
    """`off` (or false/null) → None; `on`/true → the defaults; a mapping → those figures."""
    if not isinstance(node.value, dict):
        value = node.value if isinstance(node.value, list) else cs.scalar(src, node, key)
        word = str(value).strip().lower() if isinstance(value, (str, bool)) else None
        if value is None or word in _OFF:
            return None
        if word in _ON:
            return DEFAULT_UNUSUAL_ACTIVITY
        raise src.where(node, key).error(
            f"expected off, on, or a mapping with {', '.join(_KEYS)}; got {cs.kind(value)}")
    entries = cs.mapping(src, node, key, _KEYS)
    figures: dict[str, Any] = {}
    if "window_seconds" in entries:
        where = cs.join(key, "window_seconds")
        seconds = cs.number(src, entries["window_seconds"], where, positive=True)
        if not 1 <= seconds <= MAX_WINDOW_SECONDS:
            raise src.where(entries["window_seconds"], where).error(
                f"must be from 1 to {MAX_WINDOW_SECONDS} (a day), got {seconds:g}")
        figures["window_seconds"] = seconds
    if "percent" in entries:
        figures["percent"] = cs.number(src, entries["percent"], cs.join(key, "percent"),
                                       positive=True)
    if "min_events" in entries:
        figures["min_events"] = int(cs.number(src, entries["min_events"],
                                              cs.join(key, "min_events"), positive=False,
                                              integer=True))
    return UnusualActivityConfig(**figures)
