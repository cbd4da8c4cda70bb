"""A frozen broker node (accepts TCP, never reads: a SIGSTOPped or paused node) and a blocked
one (a memory alarm): no wait without a deadline, failover to the next URL within
confirm_timeout + connect_timeout, and SIGTERM still stops the watcher within
stop_timeout_seconds, by itself (not SIGKILLed by the supervisor).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from kombu import Connection

from multiwatch.broker import close_connection, connect_once, open_connection
from multiwatch.config import BrokerConfig, mask_url
from multiwatch.watcher.batches import BLOCKED_WAIT
from tests.support.consumer import collect, wait_for
from tests.support.faults import (
    FAST_BROKER,
    broker_frozen,
    durable_roster,
    is_message,
    memory_alarm,
    outbox_rows,
    state_db,
)
from tests.support.frozen import FreezableProxy, url_via
from tests.support.hostile import figure
from tests.support.process import LogLine, Multiwatch, multiwatch_command
from tests.support.rabbitmq import RabbitMQ

QUEUE = "file_events"
CONNECT = FAST_BROKER["connect_timeout_seconds"]
CONFIRM = FAST_BROKER["confirm_timeout_seconds"]
STOP_TIMEOUT = 5  # durable_roster's supervisor.stop_timeout_seconds
MARGIN = 3.0
KILLED = "child did not stop in time; killing it"


@pytest.fixture
def proxy(broker_url: str) -> Iterator[FreezableProxy]:
    parts = urlsplit(broker_url)
    node = FreezableProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def frozen_node() -> Iterator[FreezableProxy]:
    node = FreezableProxy.listening_only()
    try:
        yield node
    finally:
        node.close()


@pytest.fixture(scope="module")
def spare_node() -> Iterator[RabbitMQ]:
    """A second real node, private to this module (never a reused broker): the one frozen
    with SIGSTOP in front of the session's node."""
    node = RabbitMQ.start()
    try:
        yield node
    finally:
        node.stop()


def _start(tmp_path: Path, inbox: Path, urls: list[str], **broker: Any) -> Multiwatch:
    roster = durable_roster(tmp_path, urls[0], [{"id": "inbox", "directory": str(inbox)}],
                            broker={"url": urls, **broker})
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_watching("inbox")
    except BaseException:
        mw.cleanup()
        raise
    return mw


def _connected(mw: Multiwatch, after: int = 0, timeout: float = 30) -> LogLine:
    return mw.wait_for_log(lambda line: is_message(line, "connected to broker", "inbox"),
                           after=after, timeout=timeout)


def _arrives(url: str, name: str, timeout: float) -> float:
    """Seconds until a message about `name` is consumed from the real node."""
    began = time.monotonic()
    got = collect(url, QUEUE, timeout=timeout,
                  until=lambda ms: any(m.body["file_info"]["name"] == name for m in ms))
    assert name in {m.body["file_info"]["name"] for m in got}, f"{name} never arrived"
    return time.monotonic() - began


def _exited(process: psutil.Process) -> bool:
    """Gone, or a zombie: an orphan's exit is reaped by init whenever init gets to it."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _stops_by_itself(mw: Multiwatch) -> float:
    """SIGTERM the supervisor; seconds until it exited, having killed no watcher."""
    mark = len(mw.lines)
    began = time.monotonic()
    assert mw.terminate(timeout=STOP_TIMEOUT + 10) == 0
    took = time.monotonic() - began
    killed = [line for line in mw.lines[mark:] if line.get("message") == KILLED]
    assert not killed, f"the supervisor had to SIGKILL the watcher: {killed}"
    assert any(is_message(line, "stopped", "inbox") for line in mw.lines[mark:]), mw.raw[-10:]
    return took


def test_a_frozen_node_first_in_the_list_is_skipped_for_the_next(
        tmp_path: Path, inbox: Path, broker_url: str, frozen_node: FreezableProxy) -> None:
    """A node that accepts and never reads, listed before the real one (default 10 s connect
    timeout): SIGTERM during the hopeless handshake stops the watcher in time, and after a
    restart the event arrives via the real node within connect + confirm timeouts."""
    connect = 10.0
    urls = [url_via(broker_url, frozen_node.port), broker_url]
    mw = _start(tmp_path, inbox, urls, connect_timeout_seconds=connect)
    try:
        (inbox / "first.txt").write_bytes(b"via the healthy node")
        mw.wait_for_log(lambda line: line.get("instance_id") == "inbox" and "message_id" in line,
                        timeout=20)
        stopped = _stops_by_itself(mw)  # the publisher is still in the frozen handshake
        assert stopped <= STOP_TIMEOUT, f"stopped {stopped:.1f}s after SIGTERM"
    finally:
        mw.cleanup()
    began = time.monotonic()
    mw = _start(tmp_path, inbox, urls, connect_timeout_seconds=connect)
    try:
        took = _arrives(broker_url, "first.txt", timeout=connect + CONFIRM + 30)
        took = time.monotonic() - began
        assert took <= connect + CONFIRM + MARGIN, f"arrived {took:.1f}s after start"
        figure(f"frozen node first in the URL list: SIGTERM mid-handshake to exit {stopped:.1f}s "
               f"(stop_timeout {STOP_TIMEOUT}s); after a restart the event came via the next "
               f"node {took:.1f}s after start (connect_timeout {connect:.0f}s)")
    finally:
        mw.cleanup()


def test_a_node_that_freezes_while_connected_is_abandoned_for_the_next(
        tmp_path: Path, inbox: Path, broker_url: str, proxy: FreezableProxy) -> None:
    """Connected through a node that then freezes: the publisher drops it without waiting
    for a Close-Ok and delivers through the next URL within confirm + connect timeouts."""
    mw = _start(tmp_path, inbox, [url_via(broker_url, proxy.port), broker_url])
    try:
        _connected(mw)
        proxy.freeze()
        frozen_at = time.monotonic()
        (inbox / "after-freeze.txt").write_bytes(b"must fail over")
        _arrives(broker_url, "after-freeze.txt", timeout=CONFIRM + CONNECT + 30)
        took = time.monotonic() - frozen_at
        assert took <= CONFIRM + CONNECT + MARGIN, f"failover took {took:.1f}s"
        stopped = _stops_by_itself(mw)
        figure(f"node froze under the watcher: delivered via the next URL {took:.1f}s after "
               f"the freeze (confirm {CONFIRM}s + connect {CONNECT}s); stopped in {stopped:.1f}s")
    finally:
        mw.cleanup()


def test_sigterm_stops_a_watcher_whose_only_node_froze(
        tmp_path: Path, inbox: Path, broker_url: str, proxy: FreezableProxy) -> None:
    """The only node froze mid-publish (and takes connections it never serves): SIGTERM still
    ends the watcher by itself within stop_timeout_seconds; the event stays in the outbox."""
    mw = _start(tmp_path, inbox, [url_via(broker_url, proxy.port)],
                confirm_timeout_seconds=30)  # longer than the stop: stop's deadline must win
    try:
        _connected(mw)
        proxy.freeze()
        mark = len(mw.lines)
        (inbox / "stuck.txt").write_bytes(b"never confirmed")
        mw.wait_for_log(lambda line: line.get("instance_id") == "inbox"
                        and "message_id" in line, after=mark, timeout=20)
        stopped = _stops_by_itself(mw)
        assert stopped <= STOP_TIMEOUT, f"stopped {stopped:.1f}s after SIGTERM"
        figure(f"only node frozen mid-publish: SIGTERM to exit {stopped:.1f}s "
               f"(stop_timeout {STOP_TIMEOUT}s)")
    finally:
        mw.cleanup()


def test_a_watcher_orphaned_by_kill_9_exits_though_its_node_froze(
        tmp_path: Path, inbox: Path, broker_url: str, proxy: FreezableProxy) -> None:
    """kill -9 of the supervisor while the only node is frozen mid-publish: the watcher (sent
    SIGTERM by the kernel) exits by itself within stop_timeout_seconds, not orphaned."""
    mw = _start(tmp_path, inbox, [url_via(broker_url, proxy.port)])
    try:
        _connected(mw)
        children = [psutil.Process(pid) for pid in mw.child_pids()]
        assert children
        proxy.freeze()
        mark = len(mw.lines)
        (inbox / "orphan.txt").write_bytes(b"never confirmed")
        took = _kill_supervisor_mid_publish(mw, children, mark)
        assert took <= STOP_TIMEOUT, f"the orphaned watcher took {took:.1f}s to exit"
        figure(f"supervisor kill -9 with the node frozen: watcher exited {took:.1f}s later")
    finally:
        mw.cleanup()


def _kill_supervisor_mid_publish(mw: Multiwatch, children: list[psutil.Process],
                                 mark: int) -> float:
    """Once the watcher has published (its message id logged after `mark`), kill -9 the
    supervisor; the seconds until every watcher child has exited by itself."""
    mw.wait_for_log(lambda line: line.get("instance_id") == "inbox"
                    and "message_id" in line, after=mark, timeout=20)
    os.kill(mw.pid, signal.SIGKILL)
    began = time.monotonic()
    wait_for(lambda: all(map(_exited, children)), timeout=STOP_TIMEOUT + MARGIN,
             message="the watcher is still running after the supervisor died")
    return time.monotonic() - began


def test_a_real_node_sigstopped_first_in_the_list_hands_over_to_the_next(
        tmp_path: Path, inbox: Path, broker_url: str, spare_node: RabbitMQ) -> None:
    """A real node, first in the URL list, SIGSTOPped under the connected watcher: the file
    written after the freeze arrives through the real node listed next (the watcher
    names the missing confirm), and with the node still frozen SIGTERM stops the watcher by
    itself."""
    mw = _start(tmp_path, inbox, [spare_node.amqp_url, broker_url])
    try:
        first = _connected(mw)
        assert first.get("broker") == mask_url(spare_node.amqp_url), first
        with broker_frozen(spare_node, spare_node.amqp_url):
            mark = len(mw.lines)
            frozen_at = time.monotonic()
            (inbox / "after-sigstop.txt").write_bytes(b"must fail over")
            _arrives(broker_url, "after-sigstop.txt", timeout=CONFIRM + CONNECT + 30)
            took = time.monotonic() - frozen_at
            failed = mw.wait_for_log(lambda line: is_message(
                line, "broker unavailable, retrying", "inbox"), after=mark, timeout=5)
            assert "no confirm within" in str(failed.get("error")), failed
            moved = _connected(mw, after=mark, timeout=5)
            assert moved.get("broker") == mask_url(broker_url), moved
            stopped = _stops_by_itself(mw)
        figure(f"real node SIGSTOPped first in the URL list: delivered via the next node "
               f"{took:.1f}s after the freeze (confirm {CONFIRM}s + connect {CONNECT}s); "
               f"SIGTERM to exit {stopped:.1f}s (stop_timeout {STOP_TIMEOUT}s)")
    finally:
        mw.cleanup()


def test_a_watcher_orphaned_by_kill_9_exits_though_its_real_node_is_sigstopped(
        tmp_path: Path, inbox: Path, spare_node: RabbitMQ) -> None:
    """The only node, a real one, SIGSTOPped mid-publish, then kill -9 of the supervisor:
    the watcher exits by itself within stop_timeout_seconds, not orphaned."""
    mw = _start(tmp_path, inbox, [spare_node.amqp_url], confirm_timeout_seconds=30)
    try:
        _connected(mw)
        children = [psutil.Process(pid) for pid in mw.child_pids()]
        assert children
        with broker_frozen(spare_node, spare_node.amqp_url):
            mark = len(mw.lines)
            (inbox / "orphan.txt").write_bytes(b"never confirmed")
            took = _kill_supervisor_mid_publish(mw, children, mark)
        figure(f"supervisor kill -9 with its real node SIGSTOPped: watcher exited {took:.1f}s "
               f"later (stop_timeout {STOP_TIMEOUT}s)")
    finally:
        mw.cleanup()


def test_sigterm_stops_a_watcher_the_broker_blocked(
        tmp_path: Path, inbox: Path, broker_url: str, rabbitmq: RabbitMQ) -> None:
    """A memory alarm blocks the connection (the broker stops reading it): SIGTERM still ends
    the watcher by itself within stop_timeout_seconds."""
    mw = _start(tmp_path, inbox, [broker_url], confirm_timeout_seconds=30)
    try:
        _connected(mw)
        with memory_alarm(rabbitmq, broker_url):
            mark = len(mw.lines)
            for i in range(50):
                (inbox / f"blocked-{i:02d}.bin").write_bytes(b"%d" % i)
            mw.wait_for_log(lambda line: "blocked" in str(line.get("message")), after=mark,
                            timeout=20)
            stopped = _stops_by_itself(mw)
        assert stopped <= STOP_TIMEOUT, f"stopped {stopped:.1f}s after SIGTERM"
        figure(f"memory alarm: SIGTERM to exit {stopped:.1f}s (stop_timeout {STOP_TIMEOUT}s)")
    finally:
        mw.cleanup()


def test_a_blocked_connection_is_kept_and_each_event_arrives_once(
        tmp_path: Path, inbox: Path, broker_url: str, rabbitmq: RabbitMQ) -> None:
    """A memory alarm blocks the connection past confirm_timeout: the watcher keeps it and
    waits for the alarm to clear, instead of publishing the events again on new connections
    (RabbitMQ still delivers what an abandoned blocked connection sent once the alarm lifts):
    afterwards each event has arrived exactly once."""
    mw = _start(tmp_path, inbox, [broker_url])
    try:
        _connected(mw)
        mark = len(mw.lines)
        with memory_alarm(rabbitmq, broker_url):
            for i in range(20):
                (inbox / f"alarm-{i:02d}.txt").write_bytes(b"%d" % i)
            waited = mw.wait_for_log(
                lambda line: is_message(line, BLOCKED_WAIT, "inbox")  # kept, past the timeout
                or is_message(line, "connected to broker", "inbox"),  # or: a new connection
                after=mark, timeout=CONFIRM + 30)
        db = state_db(tmp_path, "inbox")
        wait_for(lambda: outbox_rows(db) == 0, timeout=60, message="the outbox never drained")
        got = collect(broker_url, QUEUE, timeout=5, until=lambda ms: len(ms) > 20)
        assert sorted(m.body["file_info"]["name"] for m in got) == [
            f"alarm-{i:02d}.txt" for i in range(20)], f"{len(got)} deliveries of 20 events"
        assert waited.get("message") == BLOCKED_WAIT, waited
        figure(f"memory alarm past confirm_timeout: {len(got)} deliveries of 20 events")
    finally:
        mw.cleanup()


def test_a_blocked_connection_whose_node_then_freezes_is_abandoned(
        tmp_path: Path, inbox: Path, broker_url: str, rabbitmq: RabbitMQ,
        proxy: FreezableProxy) -> None:
    """Kept while blocked, the connection is still watched: when its node also freezes (no
    more heartbeats) the watcher gives it up and takes the next URL; once the alarm clears
    the event arrives."""
    heartbeat = 2
    mw = _start(tmp_path, inbox, [url_via(broker_url, proxy.port), broker_url],
                heartbeat_seconds=heartbeat)
    try:
        _connected(mw)
        with memory_alarm(rabbitmq, broker_url):
            mark = len(mw.lines)
            (inbox / "blocked-then-frozen.txt").write_bytes(b"x")
            mw.wait_for_log(lambda line: is_message(line, BLOCKED_WAIT, "inbox"), after=mark,
                            timeout=CONFIRM + 30)
            proxy.freeze()
            failed = mw.wait_for_log(lambda line: is_message(
                line, "broker unavailable, retrying", "inbox"), after=mark,
                timeout=3 * heartbeat + 30)
            assert "no heartbeat from the broker" in str(failed.get("error")), failed
            moved = _connected(mw, after=mark, timeout=30)
            assert moved.get("broker") == mask_url(broker_url), moved
        _arrives(broker_url, "blocked-then-frozen.txt", timeout=60)
    finally:
        mw.cleanup()


def test_every_blocking_read_and_the_close_have_a_deadline(
        tmp_path: Path, broker_url: str, proxy: FreezableProxy) -> None:
    """On a connection whose node froze, opening a channel fails within connect_timeout
    (py-amqp would wait for Channel.Open-Ok forever) and closing returns within its bound
    (py-amqp's close() would wait for Close-Ok forever)."""
    broker = BrokerConfig(url=url_via(broker_url, proxy.port), connect_timeout_seconds=1.0)
    connection: Connection = open_connection(broker, str(tmp_path))
    connect_once(connection)
    proxy.freeze()
    began = time.monotonic()
    with pytest.raises(OSError):
        connection.channel()
    opened = time.monotonic() - began
    began = time.monotonic()
    close_connection(connection, within=1.0)
    closed = time.monotonic() - began
    wait_for(lambda: not connection.connected, timeout=1)
    assert opened < 1.0 + 1.0, f"channel open waited {opened:.1f}s"
    assert closed < 1.0 + 0.5, f"close waited {closed:.1f}s"


def test_tail_ends_with_an_error_when_its_node_freezes(
        tmp_path: Path, inbox: Path, broker_url: str, proxy: FreezableProxy) -> None:
    """`multiwatch tail` connected through a node that freezes: it notices the missing
    heartbeats and exits 1 saying so, instead of waiting silently forever."""
    heartbeat = 2
    roster = durable_roster(tmp_path, broker_url, [{"id": "inbox", "directory": str(inbox)}],
                            broker={"url": url_via(broker_url, proxy.port),
                                    "heartbeat_seconds": heartbeat})
    tail = subprocess.Popen(multiwatch_command("tail", "-c", str(roster)), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert tail.stderr is not None
        assert "tailing" in tail.stderr.readline()
        proxy.freeze()
        began = time.monotonic()
        code = tail.wait(timeout=6 * heartbeat + CONNECT + 10)
        took = time.monotonic() - began
        assert code == 1
        said = tail.stderr.read()
        # The silence was noticed here (missed heartbeats), not refused by the broker.
        assert "lost" in said and "no heartbeat from the broker" in said, said
        assert "refused" not in said, said
        figure(f"tail through a node that froze: exit 1 after {took:.1f}s "
               f"(heartbeat {heartbeat}s)")
    finally:
        if tail.poll() is None:
            os.killpg(tail.pid, signal.SIGKILL)
        tail.wait(timeout=10)
