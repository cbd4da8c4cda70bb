"""Typed coercion of the roster's own keys (a value's shape, range and error message).

Each coercer takes (source, node, dotted key) and returns the typed value or raises the
`ConfigError` that names `file:line: key: why`; the generic ones (numbers, booleans, text,
patterns, paths) are in `source.py`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from multiwatch.config import source as cs
from multiwatch.config.source import Node, Source

Coerce = Callable[[Source, Node, str], Any]
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The id becomes part of the AMQP connection name `file_watcher_{id}` and of file names.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def positive(src: Source, node: Node, key: str) -> float:
    return cs.number(src, node, key, positive=True)


def non_negative(src: Source, node: Node, key: str) -> float:
    return cs.number(src, node, key, positive=False)


def whole(src: Source, node: Node, key: str) -> int:
    return int(cs.number(src, node, key, positive=False, integer=True))


def positive_whole(src: Source, node: Node, key: str) -> int:
    return int(cs.number(src, node, key, positive=True, integer=True))


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?", re.IGNORECASE)


def byte_size(src: Source, node: Node, key: str) -> int:
    """Bytes as a whole number, or with a unit: 512MiB, 1.5G, 800M (K/M/G/T; i = binary)."""
    value = cs.scalar(src, node, key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE_RE.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if match is None:
        raise src.where(node, key).error(
            f"expected a size such as 536870912, 512MiB or 1G, got {cs.show(value)}")
    number, unit, binary = match.groups()
    base = 1024 if binary or not unit else 1000
    return int(float(number) * base ** " kmgt".index(unit.lower() or " "))



def byte_rate(src: Source, node: Node, key: str) -> int:
    """Bytes per second, written like a size (50MiB, 1G), optionally ending in /s."""
    if isinstance(node.value, str) and node.value.strip().lower().endswith("/s"):
        node = dataclasses.replace(node, value=node.value.strip()[:-2])
    return byte_size(src, node, key)


OBSERVER_MODES = ("auto", "inotify", "polling")


def observer_mode(src: Source, node: Node, key: str) -> str:
    return cs.choice(src, node, key, OBSERVER_MODES, what="observer", hint=(
        f"use one of {', '.join(OBSERVER_MODES)} (polling for NFS/SMB/FUSE mounts where "
        "inotify misses remote writes)"))


def include(src: Source, node: Node, key: str) -> tuple[str, ...]:
    return cs.patterns(src, node, key, allow_empty=False)


def exclude(src: Source, node: Node, key: str) -> tuple[str, ...]:
    return cs.patterns(src, node, key, allow_empty=True)


def log_level(src: Source, node: Node, key: str) -> str | None:
    level = cs.optional_text(src, node, key)
    if level is not None and level.strip().upper() not in LEVELS:
        raise src.where(node, key).error(
            f"unknown log level {cs.show(level)}; use one of {', '.join(LEVELS)}"
        )
    return None if level is None else level.strip().upper()


def instance_id(src: Source, node: Node, key: str) -> str:
    ident = cs.text(src, node, key, allow_empty=True)
    if not _ID_RE.fullmatch(ident):
        raise src.where(node, key).error(
            f"invalid instance id {cs.show(ident)}: use 1 to 100 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit (it names the AMQP connection "
            "file_watcher_<id> and the state files)"
        )
    return ident


def listen_address(src: Source, node: Node, key: str) -> str | None:
    value = cs.scalar(src, node, key)
    # YAML reads a bare `off` or `no` as false.
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in _LISTEN_OFF:
        return None
    listen = cs.text(src, node, key).strip()
    try:
        _, port = split_listen(listen)
    except ValueError as exc:
        raise src.where(node, key).error(f"{cs.show(listen)}: {exc}") from None
    if port == 0:
        raise src.where(node, key).error(
            f"{cs.show(listen)}: the port must be a number from 1 to 65535 "
            "(multiwatch status and health must know where to connect)"
        )
    return listen


_LISTEN_OFF = ("", "off", "none", "null", "false", "no", "disabled")
_HOST_NAME_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,252}[a-z0-9_])?")


def allowed_hosts(src: Source, node: Node, key: str) -> tuple[str, ...]:
    """Host names (a list, or one name), compared case-insensitively, without a port."""
    names = []
    for name in cs.patterns(src, node, key, allow_empty=True):
        clean = name.strip().lower().rstrip(".")
        if not _HOST_NAME_RE.fullmatch(clean):
            raise src.where(node, key).error(
                f"{cs.show(name)} is not a host name; write names like monitor.example.com, "
                "without scheme or port")
        names.append(clean)
    return tuple(names)


MAX_PARALLEL_HASHES_LIMIT = 1024


def hash_slots(src: Source, node: Node, key: str) -> int:
    count = positive_whole(src, node, key)
    if count > MAX_PARALLEL_HASHES_LIMIT:
        raise src.where(node, key).error(
            f"must be at most {MAX_PARALLEL_HASHES_LIMIT}, got {count} (it counts big files "
            "read at the same time by all watchers; a few per disk is plenty)")
    return count



def split_listen(listen: str) -> tuple[str, int]:
    """`"host:port"` or `"[v6]:port"` as (host, port); ValueError says what is wrong."""
    host, sep, port = listen.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError("empty IPv6 address in brackets")
    elif ":" in host:
        raise ValueError("write an IPv6 address in brackets, like [::1]:9120")
    if not sep or not port:
        raise ValueError("expected host:port, like 127.0.0.1:9120")
    if not host:
        raise ValueError("the host is missing; write 0.0.0.0:PORT to listen on every interface")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"the port must be a number from 1 to 65535, got {cs.show(port)}")
    if any(c.isspace() or c in "/@?#" for c in host):
        raise ValueError(f"{cs.show(host)} is not a host name or address")
    return host, int(port)

