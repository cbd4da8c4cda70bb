"""Shared fixtures: one private RabbitMQ node per session, one fresh vhost per test.

`rabbitmq` starts a throw-away node (see tests/support/rabbitmq.py), or reuses the broker in
MULTIWATCH_TEST_AMQP_URL. `broker_url` gives each test its own vhost and deletes it afterwards,
which removes every exchange, queue and message the test made: nothing is left on the broker.
It needs rabbitmqctl, so a reused broker must also name its node (MULTIWATCH_TEST_RABBITMQ_NODE).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from tests.support.rabbitmq import RabbitMQ

_started: list[RabbitMQ] = []


@pytest.fixture(autouse=True)
def _umask_restored() -> Iterator[None]:
    """Each test starts with the session's umask: `multiwatch run` called in-process sets
    077 (its state is private), which would leave later tests' files unreadable to the
    other users they run commands as."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


def _sigterm_to_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQ]:
    """The session's broker; a private node is stopped at session end, also on Ctrl-C/SIGTERM."""
    # pytest runs fixture teardown on KeyboardInterrupt, but SIGTERM would kill it outright
    # and strand the node: turn SIGTERM into KeyboardInterrupt while we own a broker.
    previous: Any = None
    in_main = threading.current_thread() is threading.main_thread()
    if in_main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    broker = RabbitMQ.start_or_reuse()
    _started.append(broker)
    try:
        yield broker
    finally:
        try:
            broker.stop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def broker_url(rabbitmq: RabbitMQ) -> Iterator[str]:
    """AMQP URL of a fresh vhost `mw-<uuid>` (full rights for the URL's user), deleted after."""
    vhost = f"mw-{uuid.uuid4().hex}"
    # One rabbitmqctl call instead of add_vhost + set_permissions (each call costs ~0.5 s).
    definitions = {
        "vhosts": [{"name": vhost}],
        "permissions": [
            {"user": rabbitmq.user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
        ],
    }
    with tempfile.TemporaryDirectory(prefix="mw-vhost-") as tmp:
        path = Path(tmp) / "definitions.json"
        path.write_text(json.dumps(definitions))
        rabbitmq.rabbitmqctl("import_definitions", str(path))
    try:
        yield rabbitmq.url_for(vhost)
    finally:
        rabbitmq.rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """An empty directory to watch, tmp_path/inbox."""
    directory = tmp_path / "inbox"
    directory.mkdir()
    return directory


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line saying which broker the session used and how long a private one took to boot."""
    for broker in _started:
        if broker.owned:
            line = (f"rabbitmq: private node {broker.node} ready in {broker.startup_seconds:.1f}s;"
                    f" stopped pids {' '.join(map(str, broker.pids()))}")
        else:
            line = f"rabbitmq: reused {broker.amqp_url} (node {broker.node or 'unknown'})"
        terminalreporter.write_line(line)
