"""The roster keys `nice` and `ionice`: a watcher's CPU and disk priority (see watcher/priority.py).

`ionice` is kept as one normalised string, "idle", "best-effort:7" or "realtime:0", which
is what `check` prints and /status shows.
"""

from __future__ import annotations

import re

from multiwatch.config import source as cs
from multiwatch.config.source import Node, Source

NICE_RANGE = range(-20, 20)
IONICE_CLASSES = ("idle", "best-effort", "realtime")
_IONICE_RE = re.compile(r"([a-z-]+)(?:\s*:\s*(\d+))?")


def nice(src: Source, node: Node, key: str) -> int | None:
    """A nice value from -20 (first served) to 19 (last); null: inherit the supervisor's."""
    value = cs.scalar(src, node, key)
    if value is None:
        return None
    number = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if not isinstance(number, int) or isinstance(number, bool) or number not in NICE_RANGE:
        raise src.where(node, key).error(
            f"expected a whole number from -20 to 19 (19: lowest CPU priority), "
            f"got {cs.show(value)}")
    return number


def ionice(src: Source, node: Node, key: str) -> str | None:
    """An I/O class, with a level 0 (first) to 7 (last) for best-effort and realtime."""
    if cs.scalar(src, node, key) is None:
        return None
    text = cs.text(src, node, key).strip().lower().replace("_", "-")
    match = _IONICE_RE.fullmatch(text)
    name, level = match.groups() if match else (text, None)
    if name not in IONICE_CLASSES:
        raise src.where(node, key).error(
            f"unknown I/O class {cs.show(name)}; use idle, best-effort or realtime, "
            "optionally with a level 0-7 like best-effort:7")
    if level is not None and (name == "idle" or not 0 <= int(level) <= 7):
        why = "idle takes no level" if name == "idle" else f"the level must be 0-7, got {level}"
        raise src.where(node, key).error(f"{cs.show(text)}: {why}")
    return name if level is None else f"{name}:{int(level)}"
