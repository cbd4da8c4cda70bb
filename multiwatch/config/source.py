"""Where config values come from, and turning them into typed values with precise errors.

Every value is a `Node` with the line it came from (`multiwatch.config.yaml_nodes` composes
them from the roster's YAML), so errors can say `file:line: key: why`.  Environment
variables go through the same coercers as `Node`s without a line.  The roster's keys are
declared in `multiwatch.config.roster`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from multiwatch.config.urls import mask_url


class ConfigError(Exception):
    """A user mistake in the roster or environment; printed as one paragraph, exit 2.

    Whatever the message quotes, a URL's password never reaches the screen or a log: it is
    masked here, where every configuration error is made."""

    def __init__(self, message: str) -> None:
        super().__init__(mask_url_passwords(message))


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
    # (text, shown instead): the value's text an error must not echo (see Source.where)
    hidden: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)
    # every variable's value expanded so far while loading this source (Source.expanded)
    expanded: Sequence[tuple[str, str]] = field(default=(), compare=False, repr=False)

    def error(self, why: str) -> ConfigError:
        everywhere = [e for e in self.expanded if len(e[0].strip()) >= CONCEALED_EVERYWHERE_CHARS]
        why = conceal(why, [*self.hidden, *everywhere])
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
    # (value, "${NAME}") of every variable expanded so far: no error echoes them
    expanded: list[tuple[str, str]] = field(default_factory=list, compare=False, repr=False)

    def where(self, node: Node, key: str) -> Where:
        return Where(self.name, node.line, key, self._hidden(node, key), self.expanded)

    def _hidden(self, node: Node, key: str) -> tuple[tuple[str, str], ...]:
        """What errors about `node` must not show: the value of a secret-named key, or one
        that `${VAR}` expansion produced (shown as the reference the roster holds)."""
        value = node.value
        if isinstance(value, (dict, list)) or value is None:
            return ()
        if _SECRET_KEY.search(key.rsplit(".", 1)[-1]):
            return ((str(value), MASK),)
        if not isinstance(value, str):
            return ()
        # A URL's password, however the value is transformed before an error quotes it
        # (a path normalised, a list split): hidden wherever it appears.
        hidden = [(password, MASK) for password in url_passwords(value)]
        if self.expand and "${" in value:
            used: list[tuple[str, str]] = []
            try:
                expanded = expand_vars(value, self.environ, Where(self.name, node.line, key),
                                       used)
            except ConfigError:  # that error is about the reference, which it shows
                return tuple(hidden)
            if used:  # (a default is roster text: shown)
                hidden[:0] = [(expanded, value)]
                hidden += [(password, MASK) for password in url_passwords(expanded)]
        return tuple(hidden)


# ---------------------------------------------------------------- secrets in errors

MASK = "****"
_SECRET_KEY = re.compile(r"(?:^|[_-])(?:pass|passwd|password|secret|token|api_?key|credentials?)$",
                         re.IGNORECASE)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def mask_url_passwords(text: str) -> str:
    """`text` with the password of every URL in it (userinfo with a ':') masked, quoted
    (JSON, as `show` writes values) or not."""
    if "://" not in text:
        return text
    def quoted(match: re.Match[str]) -> str:
        try:
            content = json.loads(match.group(0))
        except ValueError:
            return match.group(0)
        if not isinstance(content, str) or "://" not in content:
            return match.group(0)
        return json.dumps(mask_url(content), ensure_ascii=False)

    text = _QUOTED.sub(quoted, text)
    return _URL.sub(lambda match: mask_url(match.group(0)), text)


def url_passwords(text: str) -> list[str]:
    """The passwords of the URLs in `text` (`scheme://user:password@host`, `;` lists too)."""
    found = []
    for match in _URL_IN_TEXT.finditer(text):
        rest = match.group(1)
        at = rest.rfind("@")
        _, colon, password = rest[: max(at, 0)].partition(":")
        if at >= 0 and colon and password.strip():
            found.append(password)
    return found


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(.*?)(?=;[A-Za-z][A-Za-z0-9+.-]*://|$)",
                          re.DOTALL)


def conceal(text: str, hidden: Sequence[tuple[str, str]]) -> str:
    """`text` with each secret (also trimmed, any case, as `show` escapes it) replaced by
    what stands for it, and any quoted piece of a secret (a host or port split out of it)
    by ****."""
    for secret, shown in hidden:
        if not secret.strip():
            continue
        variants = {secret, secret.strip(), json.dumps(secret.strip(), ensure_ascii=False)[1:-1]}
        for variant in sorted(variants, key=len, reverse=True):
            text = re.sub(re.escape(variant), shown.replace("\\", "\\\\"), text,
                          flags=re.IGNORECASE)

        def piece(match: re.Match[str], secret: str = secret, shown: str = shown) -> str:
            try:
                content = json.loads(match.group(0))
            except ValueError:
                return match.group(0)
            if (isinstance(content, str) and content.strip() and content != shown
                    and content.strip().lower() in secret.lower()):
                return f'"{MASK}"'
            return match.group(0)

        text = _QUOTED.sub(piece, text)
    return text


# ---------------------------------------------------------------- ${VAR} expansion

# `$$` first so that `$${X}` is a literal `${X}`; a `${` that is not a well-formed
# reference is reported instead of being passed through half-expanded.
_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-)([^}]*))?\}|(\{))")


# A variable's value this long or longer is hidden in every error of its roster; a shorter
# one (a number, a flag) only in errors about the value it is part of.
CONCEALED_EVERYWHERE_CHARS = 4


def expand_vars(text: str, environ: Mapping[str, str], where: Where,
                record: list[tuple[str, str]] | None = None) -> str:
    """Expand `${VAR}`, `${VAR:-default}` (default also when VAR is empty) and `$$`.

    record: where to note (value, "${VAR}") of each variable's value used, for errors to hide."""

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
        if value and record is not None:
            record.append((value, f"${{{name}}}"))
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
        return expand_vars(node.value, src.environ, src.where(node, key), src.expanded)
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
