"""The roster key `ha`: replicas of an instance, one active (it announces), the others on
standby (watcher/lease.py decides which).

    ha: {enabled: false, lease_retry_seconds: 2}   # the defaults (a top-level section)
    ha: true                                       # enabled, lease_retry_seconds 2
    ha: off                                        # this instance runs alone

The top-level `ha` section is every instance's default; `defaults:` and an instance may set
their own.  A mapping replaces the whole setting (a key it leaves out takes the built-in
default, as `unusual_activity` does).  Environment mode: `MULTIWATCH_HA=1` (also with a
roster that has no top-level `ha` section).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from multiwatch.config import source as cs
from multiwatch.config.keys import key
from multiwatch.config.source import Node, Source

_OFF = ("off", "false", "no", "0", "disabled")
_ON = ("on", "true", "yes", "1", "enabled")
_KEYS = ("enabled", "lease_retry_seconds")


def _retry(src: Source, node: Node, where: str) -> float:
    return cs.number(src, node, where, positive=True)


@dataclass(frozen=True)
class HaConfig:
    """Whether replicas of the instance share one lease, and how often a standby asks."""

    enabled: bool = key(
        False, cs.boolean, "replicas allowed: only the lease holder announces, the rest stand by")
    lease_retry_seconds: float = key(
        2.0, _retry, "how often a standby tries to take the lease")


DEFAULT_HA = HaConfig()


def ha(src: Source, node: Node, where: str) -> HaConfig:
    """`off`/false → disabled; `on`/true → enabled with the defaults; a mapping → its keys."""
    if not isinstance(node.value, dict):
        value = node.value if isinstance(node.value, list) else cs.scalar(src, node, where)
        word = str(value).strip().lower() if isinstance(value, (str, bool, int)) else None
        if value is None or word in _OFF:
            return DEFAULT_HA
        if word in _ON:
            return HaConfig(enabled=True)
        raise src.where(node, where).error(
            f"expected on, off, or a mapping with {', '.join(_KEYS)}; got {cs.kind(value)}")
    entries = cs.mapping(src, node, where, _KEYS)
    values: dict[str, Any] = {}
    if "enabled" in entries:
        values["enabled"] = cs.boolean(src, entries["enabled"], cs.join(where, "enabled"))
    if "lease_retry_seconds" in entries:
        values["lease_retry_seconds"] = _retry(
            src, entries["lease_retry_seconds"], cs.join(where, "lease_retry_seconds"))
    return HaConfig(**values)
