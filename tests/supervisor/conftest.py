"""Fixtures shared by the in-process lifecycle tests (test_lifecycle_edges, test_fleet_edges)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.supervisor.fakes import FakeClock, FakeFactory


@pytest.fixture
def factory() -> Iterator[FakeFactory]:
    """Fake watcher processes; their pipes are closed afterwards."""
    made = FakeFactory()
    yield made
    made.close()


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()
