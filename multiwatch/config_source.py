"""Where config values come from, and turning them into typed values with precise errors.

Every value is a `Node` with the line it came from (`multiwatch.config_yaml` composes
them from the roster's YAML), so errors can say `file:line: key: why`.  Environment
variables go through the same coercers as `Node`s without a line.  The roster schema
itself lives in `multiwatch.config`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class ConfigError(Exception):
    """A user mistake in the roster or environment; printed as one paragraph, exit 2."""


@dataclass(frozen=True)
class Node:
    """A value and the 1-based line to point at when it is wrong (None: no line, e.g. env).

    `value` is a plain scalar (str, int, float, bool, None, date...), a `dict[str, Node]`
    or a `list[Node]`. Mapping values carry their *key's* line, list items their own.
    `raw` is a scalar's source text, so `id: 0123` can stay "0123" instead of an int.
    """

    value: Any
    line: int | None = None
    raw: str | None = None


@dataclass(frozen=True)
class Where:
    """The `file:line: key` prefix of an error about one value."""

    source: str  # the roster file as the user named it, or "environment"
    line: int | None
    key: str  # dotted path such as `instances[1].id`, or an environment variable name

    def error(self, why: str) -> ConfigError:
        loc = f"{self.source}:{self.line}" if self.line else self.source
        return ConfigError(f"{loc}: {self.key}: {why}" if self.key else f"{loc}: {why}")

    @property
    def at(self) -> str:
        """` (line N)` for cross-references inside messages; empty without a line."""
        return f" (line {self.line})" if self.line else ""


@dataclass(frozen=True)
class Source:
    """One origin of values: the roster file (expanded, relative to it) or the environment."""

    name: str
    base_dir: str  # relative paths resolve here
    environ: Mapping[str, str]
    expand: bool  # only roster text gets `${VAR}` expansion; the shell already did env

    def where(self, node: Node, key: str) -> Where:
        return Where(self.name, node.line, key)


# ---------------------------------------------------------------- YAML → Node


def parse_yaml(text: str, filename: str) -> Node | None:
    """Parse one YAML document with SafeLoader semantics; None when it is empty."""
    # PyYAML is imported only where a roster is read: a watcher child unpickles the
    # config dataclasses but never parses YAML, and its start is what a restart waits for.
    from multiwatch.config_yaml import parse_yaml as parse

    return parse(text, filename)


# ---------------------------------------------------------------- ${VAR} expansion

# `$$` first so that `$${X}` is a literal `${X}`; a `${` that is not a well-formed
# reference is reported instead of being passed through half-expanded.
_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-)([^}]*))?\}|(\{))")


def expand_vars(text: str, environ: Mapping[str, str], where: Where) -> str:
    """Expand `${VAR}`, `${VAR:-default}` (default also when VAR is empty) and `$$`."""

    def replace(match: re.Match[str]) -> str:
        dollar, name, has_default, default, broken = match.groups()
        if dollar:
            return "$"
        if broken:
            raise where.error(
                f"malformed variable reference in {show(text)}; "
                "use ${NAME}, ${NAME:-default}, or $$ for a literal $"
            )
        value = environ.get(name)
        if has_default:
            return value if value else default  # shell `:-` semantics
        if value is None:
            raise where.error(
                f"environment variable {name} is not set "
                f"(write ${{{name}:-default}} to give it a default)"
            )
        return value

    return _VAR.sub(replace, text)


# ---------------------------------------------------------------- typed coercion


def show(value: Any) -> str:
    """A value as the user would write it, quoted so it cannot break the paragraph."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


def kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {show(value)}"
    return show(value)


def mapping(src: Source, node: Node, key: str, allowed: Collection[str]) -> dict[str, Node]:
    """The entries of a mapping node; unknown keys are errors with a did-you-mean."""
    if node.value is None:  # `broker:` with nothing under it
        return {}
    if not isinstance(node.value, dict):
        raise src.where(node, key).error(f"expected a mapping, got {kind(node.value)}")
    for name, child in node.value.items():
        if name not in allowed:
            from difflib import get_close_matches  # only for a mistake: every start imports this

            close = get_close_matches(name, list(allowed), n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise src.where(child, join(key, name)).error(
                f"unknown key {show(name)}{hint} (valid keys: {', '.join(allowed)})"
            )
    return dict(node.value)


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def scalar(src: Source, node: Node, key: str) -> Any:
    """A single value, `${VAR}`-expanded when it is a string from the roster."""
    if isinstance(node.value, (dict, list)):
        raise src.where(node, key).error(f"expected a single value, got {kind(node.value)}")
    if isinstance(node.value, str) and src.expand:
        return expand_vars(node.value, src.environ, src.where(node, key))
    return node.value


def text(src: Source, node: Node, key: str, *, allow_empty: bool = False) -> str:
    value = scalar(src, node, key)
    if value is None or isinstance(value, bool):
        raise src.where(node, key).error(f"expected a string, got {kind(value)}")
    if not isinstance(value, str):  # a number or date: keep what the user typed
        value = node.raw if node.raw is not None else str(value)
    if not value and not allow_empty:
        raise src.where(node, key).error("must not be empty")
    return value


def optional_text(src: Source, node: Node, key: str) -> str | None:
    """None for null or empty, so `key: ${VAR:-}` falls back to the next source."""
    value = scalar(src, node, key)
    return None if value is None or value == "" else text(src, node, key)


def choice(src: Source, node: Node, key: str, choices: Sequence[str], *, what: str,
           hint: str) -> str:
    """One of `choices` (case-insensitive), else an error naming them and why to pick one."""
    value = text(src, node, key).strip().lower()
    if value not in choices:
        raise src.where(node, key).error(f"unknown {what} {show(value)}; {hint}")
    return value


def number(src: Source, node: Node, key: str, *, positive: bool, integer: bool = False) -> float:
    value = scalar(src, node, key)
    if isinstance(value, str):
        value = _parse_number(value.strip(), fallback=value)
    valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    if valid and isinstance(value, int) and abs(value) > 2**63:
        raise src.where(node, key).error(f"out of range: {show(value)[:40]}")
    if not valid or not math.isfinite(value):
        noun = "a whole number" if integer else "a number"
        if key.endswith("_seconds"):
            noun += " of seconds"
        raise src.where(node, key).error(f"expected {noun}, got {kind(value)}")
    if integer and value != int(value):
        raise src.where(node, key).error(f"expected a whole number, got {show(value)}")
    if positive and value <= 0:
        raise src.where(node, key).error(f"must be greater than 0, got {show(value)}")
    if value < 0:
        raise src.where(node, key).error(f"must be 0 or more, got {show(value)}")
    return int(value) if integer else float(value)


def _parse_number(text: str, fallback: str) -> Any:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return fallback


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def boolean(src: Source, node: Node, key: str) -> bool:
    value = scalar(src, node, key)
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise src.where(node, key).error(f"expected true or false, got {kind(value)}")


def patterns(src: Source, node: Node, key: str, *, allow_empty: bool) -> tuple[str, ...]:
    """A list of glob patterns; a single string is a one-item list."""
    if not isinstance(node.value, list):
        return (text(src, node, key),)
    items = tuple(text(src, item, f"{key}[{i}]") for i, item in enumerate(node.value))
    if not items and not allow_empty:
        raise src.where(node, key).error('needs at least one pattern (use "*" for every file)')
    return items


def path(src: Source, node: Node, key: str) -> str:
    return resolve_path(text(src, node, key), src.base_dir, src.environ)


def resolve_path(value: str, base_dir: str, environ: Mapping[str, str]) -> str:
    """`~` (HOME from `environ`) expanded, relative to `base_dir`, absolute and normalised."""
    if value == "~" or value.startswith("~/"):
        value = (environ.get("HOME") or os.path.expanduser("~")) + value[1:]
    elif value.startswith("~"):  # ~user
        value = os.path.expanduser(value)
    return os.path.abspath(os.path.join(base_dir, value))
