"""Broker URLs: a failover list split into its URLs, and passwords masked or replaced.

A module of its own, importing nothing of the package, because every error message passes
through `mask_url` (source.ConfigError) and the broker section uses it too.
"""

from __future__ import annotations

import re


def split_urls(url: str) -> list[str]:
    """`amqp://a;amqp://b` as its URLs; a `;` inside a password stays put.

    Splits only where a new `scheme://` starts.
    """
    return re.split(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)", url)


def mask_url(url: str) -> str:
    """`url` with its password replaced by `****`; URLs without one come back unchanged.

    kombu failover lists (`amqp://a;amqp://b`) are masked part by part.
    """
    return ";".join(replace_password(part, "****") for part in split_urls(url))


def replace_password(url: str, replacement: str | None) -> str:
    """One URL with its password replaced (None: removed, `user@host` remains)."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    user, colon, password = rest[: max(at, 0)].partition(":")
    # The last `@` ends the userinfo even when an unquoted password holds `/` or `@`:
    # over-masking an odd URL beats leaking a password into logs.
    if not sep or at < 0 or not colon or not password or any(c in user for c in "/?#"):
        return url
    secret = "" if replacement is None else f":{replacement}"
    return f"{scheme}://{user}{secret}@{rest[at + 1 :]}"
