"""The roster key `max_scan_deletions`: how many deletions a scan may announce on its own.

    max_scan_deletions: {count: 1000, percent: 50}   # the defaults
    max_scan_deletions: 1000                          # a count only
    max_scan_deletions: "50%"                         # a share of the tracked files only
    max_scan_deletions: off                           # announce whatever a scan finds gone

A scan (at start, after lost events, the periodic one) that finds tracked files gone
holds its deletions instead of announcing them when they are more than `count`, or at
least PERCENT_FLOOR and more than `percent` % of the tracked files.  The bounds a form
names are the ones in force: `1000` turns the percentage off, and a mapping's missing key
is off too.  `count: 0` holds every deletion a scan finds.  Deletions the kernel reports
file by file are never held (watcher/deletion_guard.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from multiwatch.config import source as cs
from multiwatch.config.source import Node, Source

# Fewer deletions than this are never held by the percentage: emptying a small folder by
# hand (or a drop folder its consumer cleared) while stopped is announced as usual.
PERCENT_FLOOR = 10
_OFF = ("off", "false", "no", "none", "disabled")
_ON = ("on", "true", "yes", "enabled")  # the defaults
_KEYS = ("count", "percent")
_FORMS = "a count (1000), a percentage (\"50%\"), {count: N, percent: P}, or off"


@dataclass(frozen=True)
class ScanDeletionBound:
    """Above either figure (None: that figure is off) a scan's deletions are held."""

    count: int | None = 1000  # more deletions than this are held
    percent: float | None = 50.0  # more than this % of the tracked files (and >= the floor)

    def exceeded(self, deletions: int, tracked: int) -> bool:
        """True if `deletions` found by one scan, of `tracked` files, are too many."""
        if self.count is not None and deletions > self.count:
            return True
        return (self.percent is not None and deletions >= PERCENT_FLOOR
                and deletions * 100 > self.percent * max(tracked, 1))

    def describe(self) -> str:
        """The bound in words, for the log line that says deletions are held."""
        parts = []
        if self.count is not None:
            parts.append(f"more than {self.count}")
        if self.percent is not None:
            parts.append(f"more than {self.percent:g}% of the tracked files "
                         f"(at least {PERCENT_FLOOR})")
        return " or ".join(parts)


DEFAULT_MAX_SCAN_DELETIONS = ScanDeletionBound()


def max_scan_deletions(src: Source, node: Node, key: str) -> ScanDeletionBound | None:
    """`off` (or false/null) → None; `on` → the defaults; a count, "P%", or a mapping with
    count and/or percent."""
    if isinstance(node.value, dict):
        entries = cs.mapping(src, node, key, _KEYS)
        if not entries:
            raise src.where(node, key).error(
                f"give count, percent or both (or write off); expected {_FORMS}")
        return ScanDeletionBound(
            count=_count(src, entries["count"], cs.join(key, "count"))
            if "count" in entries else None,
            percent=_percent(src, entries["percent"], cs.join(key, "percent"))
            if "percent" in entries else None)
    if isinstance(node.value, list):
        raise src.where(node, key).error(f"expected {_FORMS}; got a list")
    value = cs.scalar(src, node, key)
    word = str(value).strip().lower() if isinstance(value, (str, bool)) else value
    if value is None or word in _OFF:
        return None
    if word in _ON:
        return DEFAULT_MAX_SCAN_DELETIONS
    if isinstance(word, str) and word.endswith("%"):
        return ScanDeletionBound(count=None, percent=_percent(src, node, key))
    if (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
            isinstance(word, str) and word.lstrip("+-").replace(".", "", 1).isdigit()):
        return ScanDeletionBound(count=_count(src, node, key), percent=None)
    raise src.where(node, key).error(f"expected {_FORMS}; got {cs.show(value)}")


def _count(src: Source, node: Node, key: str) -> int:
    return int(cs.number(src, node, key, positive=False, integer=True))


def _percent(src: Source, node: Node, key: str) -> float:
    value = cs.scalar(src, node, key)
    text = value.strip().removesuffix("%") if isinstance(value, str) else value
    percent = cs.number(src, Node(text, node.line, node.raw), key, positive=True)
    if percent > 100:
        raise src.where(node, key).error(
            f"a percentage of the tracked files must be from 0 to 100, got {percent:g}")
    return percent
