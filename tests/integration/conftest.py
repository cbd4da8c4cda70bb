"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.process import Multiwatch


@pytest.fixture
def started() -> Iterator[list[Multiwatch]]:
    """Every supervisor a test starts, killed (its process group only) at teardown."""
    running: list[Multiwatch] = []
    yield running
    for mw in running:
        mw.cleanup()
