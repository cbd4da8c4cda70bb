"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import RabbitMQCluster
from tests.support.process import Multiwatch


@pytest.fixture
def started() -> Iterator[list[Multiwatch]]:
    """Every supervisor a test starts, killed (its process group only) at teardown."""
    running: list[Multiwatch] = []
    yield running
    for mw in running:
        mw.cleanup()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitMQCluster]:
    """Three clustered nodes on this machine, one cluster per test module that asks (a boot
    takes ~12 s), stopped (every pid checked gone) afterwards."""
    started = RabbitMQCluster.start()
    print(f"CLUSTER: 3 nodes ready in {started.startup_seconds:.1f}s", flush=True)
    try:
        yield started
    finally:
        started.stop()
        assert not started.leftovers()
