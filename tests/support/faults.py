"""Fault injection for the durability tests: broker outages, a frozen broker, file bursts.

Everything here restores what it breaks: `broker_stopped` and `broker_frozen` are context
managers whose exit brings the broker back and waits until it accepts AMQP connections on
the test's vhost again, so a failing test never leaves a dead broker to the next one.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.consumer import Received, wait_for
from tests.support.process import LogLine, Multiwatch, write_roster
from tests.support.rabbitmq import RabbitMQ, accepts_amqp, amqp_connection

# Short broker timings so outages are noticed and recovered from within seconds.
FAST_BROKER: dict[str, Any] = {
    "connect_timeout_seconds": 2,
    "confirm_timeout_seconds": 2,
    "reconnect_max_seconds": 2,
}


def figure(text: str) -> None:
    """A line the lead can quote (visible with pytest -s)."""
    print(f"DURABILITY: {text}", flush=True)


# ---- roster -------------------------------------------------------------------------------


def durable_roster(
    tmp_path: Path,
    broker_url: str,
    instances: Sequence[Mapping[str, Any]],
    *,
    settle: float = 0.1,
    broker: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    supervisor: Mapping[str, Any] | None = None,
    log_level: str = "INFO",
) -> Path:
    """A roster with fast broker timings, state under tmp_path/state, quick restarts."""
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "log_level": log_level,
        "broker": {"url": broker_url, **FAST_BROKER, **(broker or {})},
        "supervisor": {"stop_timeout_seconds": 5, "restart_backoff_seconds": 0.5,
                       **(supervisor or {})},
        "defaults": {"settle_seconds": settle, **(defaults or {})},
        "instances": [dict(i) for i in instances],
    })


def state_db(tmp_path: Path, instance_id: str) -> Path:
    return tmp_path / "state" / "instances" / instance_id / "state.db"


def outbox_rows(db: Path) -> int | None:
    """Rows in the instance's outbox table right now; None while the database is not there."""
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None


# ---- log lines ----------------------------------------------------------------------------


def is_message(line: LogLine, message: str, instance_id: str | None = None) -> bool:
    return line.get("message") == message and (
        instance_id is None or line.get("instance_id") == instance_id)


def emitted(mw: Multiwatch, instance_id: str, after: int = 0) -> list[LogLine]:
    """The log lines of events the instance put into its outbox (one per event, in order)."""
    return [line for line in list(mw.lines[after:])
            if line.get("instance_id") == instance_id and "event_type" in line
            and "message_id" in line]


def wait_emitted(mw: Multiwatch, instance_id: str, count: int, timeout: float,
                 after: int = 0) -> list[LogLine]:
    """Wait until the instance has logged at least `count` events (from line `after`)."""
    got: list[LogLine] = []

    def enough() -> bool:
        got[:] = emitted(mw, instance_id, after)
        return len(got) >= count

    wait_for(enough, timeout=timeout, interval=0.1,
             message=f"{instance_id} did not log {count} events within {timeout}s; "
                     f"last lines: {mw.raw[-10:]}")
    return got


def startup_complete(mw: Multiwatch, instance_id: str, timeout: float,
                     after: int = 0) -> LogLine:
    return mw.wait_for_log(lambda line: is_message(line, "startup scan complete", instance_id),
                           timeout=timeout, after=after)


# ---- messages -----------------------------------------------------------------------------


def names(messages: Iterable[Received]) -> set[str]:
    return {m.body["file_info"]["name"] for m in messages}


def duplicates(messages: Sequence[Received]) -> int:
    """How many messages repeat a message_id already received."""
    return len(messages) - len({m.properties["message_id"] for m in messages})


def first_occurrences(messages: Iterable[Received]) -> list[str]:
    """message_ids in the order they first arrived."""
    seen: dict[str, None] = {}
    for m in messages:
        seen.setdefault(m.properties["message_id"], None)
    return list(seen)


# ---- broker -------------------------------------------------------------------------------


def wait_accepting(url: str, timeout: float = 60) -> None:
    wait_for(lambda: accepts_amqp(url), timeout=timeout, interval=0.2,
             message=f"broker did not accept connections within {timeout}s")


def queue_depth(url: str, queue: str) -> int:
    """Messages in `queue` now (passive declare: the queue must exist)."""
    with amqp_connection(url, connect_timeout=5) as conn:
        return int(conn.channel().queue_declare(queue, passive=True).message_count)


def needs_rabbitmqctl(rabbitmq: RabbitMQ) -> None:
    if not rabbitmq.has_rabbitmqctl:
        pytest.skip("needs rabbitmqctl for the test broker")


@contextmanager
def broker_stopped(rabbitmq: RabbitMQ, url: str) -> Iterator[None]:
    """`rabbitmqctl stop_app` now; on exit `start_app` and wait until `url` connects again."""
    needs_rabbitmqctl(rabbitmq)
    try:
        rabbitmq.rabbitmqctl("stop_app", timeout=120)
        yield
    finally:
        rabbitmq.rabbitmqctl("start_app", timeout=120)
        wait_accepting(url)


@contextmanager
def memory_alarm(rabbitmq: RabbitMQ, url: str) -> Iterator[None]:
    """Set the memory watermark so low that RabbitMQ raises its alarm and blocks publishers;
    on exit restore the default (0.4) and wait until the broker takes connections."""
    needs_rabbitmqctl(rabbitmq)
    try:
        rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.000001")
        yield
    finally:
        rabbitmq.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
        wait_accepting(url)


def beam_pids(rabbitmq: RabbitMQ) -> list[int]:
    """The Erlang VM process(es) of the test node (the ones that serve AMQP)."""
    found = []
    for pid in rabbitmq.pids():
        try:
            if psutil.Process(pid).name().startswith("beam"):
                found.append(pid)
        except psutil.NoSuchProcess:
            pass
    return found


@contextmanager
def broker_frozen(rabbitmq: RabbitMQ, url: str) -> Iterator[None]:
    """SIGSTOP the node's Erlang VM; on exit SIGCONT it and wait until `url` connects again.

    Only the beam process is frozen: epmd, the sh wrapper and erl_child_setup play no part
    in serving AMQP. Sockets stay open, so clients see a broker that accepts bytes and never
    answers, which is what a hung broker or a dead network path looks like.
    """
    pids = beam_pids(rabbitmq)
    if not pids:
        pytest.skip("the test broker's Erlang VM is not ours to freeze (reused broker?)")
    stopped: list[int] = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        wait_for(lambda: all(psutil.Process(p).status() == psutil.STATUS_STOPPED
                             for p in stopped), timeout=5)
        yield
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        wait_accepting(url)


# ---- writers ------------------------------------------------------------------------------


class Burst(threading.Thread):
    """Writes `count` small files named f00000.dat... in batches, pacing between batches."""

    def __init__(self, directory: Path, count: int, *, batch: int = 50, pause: float = 0.02,
                 prefix: str = "f", size: int = 256) -> None:
        super().__init__(name=f"burst-{directory.name}", daemon=True)
        self.directory = directory
        self.names = [f"{prefix}{i:05d}.dat" for i in range(count)]
        self.batch = batch
        self.pause = pause
        self.size = size
        self.written = 0
        self.error: BaseException | None = None
        self._progress = threading.Condition()

    def run(self) -> None:
        try:
            for start in range(0, len(self.names), self.batch):
                for name in self.names[start:start + self.batch]:
                    (self.directory / name).write_bytes(name.encode().ljust(self.size, b"."))
                with self._progress:
                    self.written = min(start + self.batch, len(self.names))
                    self._progress.notify_all()
                time.sleep(self.pause)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def wait_written(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self._progress:
            while self.written < count and self.error is None and self.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"only {self.written} of {count} files written")
                self._progress.wait(min(remaining, 0.2))
        if self.error is not None:
            raise self.error
        assert self.written >= count, f"writer stopped after {self.written} of {count} files"

    def finish(self, timeout: float = 60) -> None:
        self.join(timeout)
        if self.error is not None:
            raise self.error
        assert not self.is_alive(), "writer did not finish"
        assert self.written == len(self.names)
