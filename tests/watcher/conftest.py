"""Fixtures shared by the watcher's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from watchdog.observers.api import BaseObserver


@pytest.fixture
def observers() -> Iterator[list[BaseObserver]]:
    """Observers a test started; stopped and joined afterwards."""
    started: list[BaseObserver] = []
    yield started
    for observer in started:
        observer.stop()
        observer.join(timeout=5)
