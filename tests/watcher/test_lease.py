"""The replicas' lease (watcher/lease.py): the broker's exclusive queue, the embedded flock,
and the role a replica reports as it takes, loses and takes back the lease."""

from __future__ import annotations

import logging
from pathlib import Path

import amqp
import pytest
from kombu import Connection

from multiwatch.watcher.lease import BrokerLease, FileLease, Role, RoleState
from multiwatch.watcher.publisher import replica_heartbeat_seconds
from tests.support.consumer import wait_for
from tests.support.rabbitmq import RabbitMQ


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_lone_watcher_is_active_from_the_start() -> None:
    """Without ha the watcher is active and holding, and never asks anyone."""
    role = RoleState(replicated=False)
    assert role.active and role.holding and role.promoted.is_set()


def test_a_replica_stands_by_then_takes_over_saying_how_long_nobody_was_active(
        caplog: pytest.LogCaptureFixture) -> None:
    """Refused: standby, logged once; free later: active, with the seconds since it last
    saw another replica hold the lease."""
    clock = Clock()
    role = RoleState(replicated=True, clock=clock)
    assert role.role is Role.STANDBY and role.label() == "active"  # (nobody seen yet)
    with caplog.at_level(logging.INFO):
        role.refused()
        clock.now += 2
        role.refused()
        assert role.label() == "standby"
        clock.now += 1.5
        role.took()
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("another replica is active; standing by") == 1
    [takeover] = [r for r in caplog.records if r.getMessage().startswith("took over")]
    assert takeover.levelno == logging.WARNING
    assert takeover.__dict__["no_active_replica_seconds"] == 1.5
    assert role.active and role.holding and role.promoted.is_set() and not role.demoted


def test_an_active_replica_that_loses_its_connection_then_finds_another_holder_is_demoted(
        ) -> None:
    """Dropped: still active but not holding (publishes nothing); refused: demoted."""
    role = RoleState(replicated=True)
    role.took()
    role.dropped()
    assert role.active and not role.holding
    assert role.label() == "active"
    woken: list[bool] = []
    role.on_change = lambda: woken.append(True)
    role.refused()
    assert role.demoted and role.role is Role.STANDBY and not role.holding and woken


def test_a_lease_won_on_a_standby_connection_is_taken_again_as_active() -> None:
    """The next connection after a win on a connection labelled standby says active."""
    role = RoleState(replicated=True)
    role.refused()
    assert role.label() == "standby"
    role.won_unlabelled()
    assert role.label() == "active" and role.role is Role.STANDBY


def test_the_embedded_lease_is_one_flock_per_instance(tmp_path: Path) -> None:
    """One holder at a time per instance under the state_dir; closing hands it over."""
    first, second = FileLease(str(tmp_path), "music"), FileLease(str(tmp_path), "music")
    other = FileLease(str(tmp_path), "books")
    spool = Connection("memory://")
    assert first.take(spool) and first.take(spool)
    assert not second.take(spool)
    assert other.take(spool)
    first.close()
    assert second.take(spool)
    for lease in (second, other):
        lease.close()


def test_the_broker_lease_is_exclusive_to_one_connection_and_ends_with_it(
        broker_url: str) -> None:
    """A second connection is refused (405: only its channel closes); once the holder's
    connection closes, the lease is free, and nothing is left on the broker."""
    lease = BrokerLease("music")
    with Connection(broker_url, connect_timeout=10) as holder, \
            Connection(broker_url, connect_timeout=10) as other:
        holder.ensure_connection(max_retries=1)
        other.ensure_connection(max_retries=1)
        assert lease.take(holder)
        assert not lease.take(other)
        assert not lease.take(other), "the connection survives a refusal"
        holder.release()
        wait_for(lambda: lease.take(other), 10, message="the lease is free once its holder left")
        lease.let_go(other)
        channel = other.channel()
        assert channel.queue_declare(queue=lease.name, exclusive=True, auto_delete=True)
        channel.queue_delete(queue=lease.name)


def test_a_standby_asks_without_an_error_in_the_broker_log_while_the_lease_is_held(
        broker_url: str, rabbitmq: RabbitMQ) -> None:
    """While another replica holds the lease, a standby's tries are answered by the .held
    queue's consumer count: no channel error per try in the broker's log (one refusal made
    on purpose afterwards is the only new error), and the standby's connection keeps one
    probe channel rather than a new one per try."""
    if rabbitmq.workdir is None:
        pytest.skip("an external broker: its log is not ours to read")
    log = rabbitmq.workdir / "log" / "rabbit.log"
    lease = BrokerLease("books")
    with Connection(broker_url, connect_timeout=10) as holder, \
            Connection(broker_url, connect_timeout=10) as standby:
        holder.ensure_connection(max_retries=1)
        standby.ensure_connection(max_retries=1)
        assert lease.take(holder)
        before = log.read_text(errors="replace").count("resource_locked")
        for _ in range(5):
            assert not lease.take(standby)
        assert lease.held_by_another(standby)
        channels = len(standby.connection.channels)
        assert not lease.take(standby) and len(standby.connection.channels) == channels
        with pytest.raises(amqp.exceptions.ResourceLocked):  # the refusal made on purpose
            standby.channel().queue_declare(queue=lease.name, exclusive=True,
                                            auto_delete=True)
        errors = wait_for(lambda: log.read_text(errors="replace").count("resource_locked")
                          - before, 30, message="the broker never logged the refusal")
        assert errors == 1, f"{errors} resource_locked errors for 7 tries and 1 refusal"
        holder.release()
        wait_for(lambda: lease.take(standby), 10, message="free once its holder left")
        lease.let_go(standby)


def test_a_replica_asks_for_half_the_configured_heartbeat() -> None:
    """Half of heartbeat_seconds, at least 1 s; 0 (heartbeats off) stays 0."""
    assert [replica_heartbeat_seconds(s) for s in (60, 4, 3, 2, 1, 0)] == [30, 2, 1, 1, 1, 0]
