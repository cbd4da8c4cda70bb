"""Every independent roster error in one run of `check`, not one per run.

The loader tries each section and each instance on its own; a `ConfigErrors` keeps what
failed and raises one `ConfigError` at the end: the single error as it always read, or a
count and the errors (at most MAX_SHOWN), one per line, each still `file:line: key: why`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from multiwatch.config.source import ConfigError

MAX_SHOWN = 20


class ConfigErrors:
    """The ConfigErrors met so far while loading one roster (`source` names it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[ConfigError] = []

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Run the block; a ConfigError it raises is kept and loading goes on."""
        try:
            yield
        except ConfigError as exc:
            self.errors.append(exc)

    def _line(self, error: ConfigError) -> float:
        """The roster line an error points at (errors without one go last, in turn)."""
        text = str(error)
        prefix = f"{self.source}:"
        if text.startswith(prefix):
            number = text[len(prefix):].split(":", 1)[0]
            if number.isdigit():
                return int(number)
        return float("inf")

    def raise_any(self) -> None:
        """Raise what was kept, if anything: one error as is, several as one list."""
        if not self.errors:
            return
        if len(self.errors) == 1:
            raise self.errors[0]
        count = len(self.errors)
        shown = f" (the first {MAX_SHOWN} shown)" if count > MAX_SHOWN else ""
        in_file_order = sorted(self.errors, key=self._line)
        lines = [f"  {exc}" for exc in in_file_order[:MAX_SHOWN]]
        raise ConfigError("\n".join([f"{self.source}: {count} errors{shown}:", *lines]))
