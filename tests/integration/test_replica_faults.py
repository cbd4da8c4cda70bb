"""Replicas (roster `ha`) under the faults tests/integration/test_replicas.py leaves out: the
broker node holding the lease stopped (a private three-node cluster with a quorum queue), and
SIGSTOP of the active supervisor when each replica has a state_dir of its own.

Correctness only (one active replica, nothing lost, each file under one message id); how long
each takeover takes is measured by `bench/run.py --only replica-faults`.  The cluster is
private to this module (tests/support/cluster.py) and torn down after it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kombu import Connection, Consumer, Exchange, Queue
from kombu.message import Message

from tests.support.cluster import RabbitMQCluster
from tests.support.consumer import (
    BINDING_KEY,
    EXCHANGE,
    Received,
    _json_array,
    _table,
    collect,
    declare_queue,
    wait_for,
)
from tests.support.faults import Burst
from tests.support.process import Multiwatch, free_port
from tests.support.rabbitmq import RabbitMQ
from tests.support.replicas import (
    TAKEOVER,
    ids_by_name,
    replica_roster,
    role_of,
    start_pair,
    write_numbered,
)

QUEUE = "file_events"
CONNECTION = "file_watcher_music"
STANDING_BY = "another replica is active; standing by"
DEMOTED = "another replica holds the lease now"
LEASE = "multiwatch.lease.music"


def _roster(tmp_path: Path, name: str, inbox: Path, *, port: int, url: str | list[str],
            quorum: bool = False) -> Path:
    """A replica of instance `music` with its own state_dir (as on its own host)."""
    extra: dict[str, Any] = {"reconnect_max_seconds": 2}
    if quorum:
        extra["queue_type"] = "quorum"
    return replica_roster(tmp_path, name, inbox, state=tmp_path / f"state-{name}", port=port,
                          broker_url=url, broker_extra=extra)


def _one_active(ports: tuple[int, int]) -> bool:
    return sorted(str(role_of(port)) for port in ports) == ["active", "standby"]


def _node_of_active_connection(cluster: RabbitMQCluster, asked: RabbitMQ) -> RabbitMQ | None:
    """The node whose listener holds the connection that says `role: active`."""
    out = asked.rabbitmqctl("list_connections", "port", "client_properties",
                            "--formatter", "json")
    for row in _json_array(out):
        properties = _table(row.get("client_properties"))
        if properties.get("connection_name") == CONNECTION and properties.get("role") == "active":
            port = int(row["port"])
            return next(n for n in cluster.nodes if urlsplit(n.amqp_url).port == port)
    return None


def _lease_queues(asked: RabbitMQ) -> list[str]:
    out = asked.rabbitmqctl("list_queues", "name", "--formatter", "json")
    return [str(row["name"]) for row in _json_array(out)
            if str(row.get("name", "")).startswith("multiwatch.lease.")]


def _declare_quorum_queue(url: str) -> None:
    """The application's topology with the quorum argument the publisher declares it with."""
    queue = Queue(QUEUE, exchange=Exchange(EXCHANGE, type="topic", durable=True),
                  routing_key=BINDING_KEY, durable=True,
                  queue_arguments={"x-queue-type": "quorum"})
    with Connection(url, connect_timeout=10) as conn:
        queue(conn.default_channel).declare()


def _consume(url: str, want: set[str], timeout: float) -> list[Received]:
    """Take messages off the (already declared) quorum queue until every name in `want`
    was announced, and a second more for repeats."""
    received: list[Received] = []

    def on_message(message: Message) -> None:
        received.append(Received.from_message(message))
        message.ack()

    deadline = time.monotonic() + timeout
    linger_until: float | None = None
    with Connection(url, connect_timeout=10) as conn, Consumer(
            conn, [Queue(QUEUE, no_declare=True)], on_message=on_message, prefetch_count=200):
        while time.monotonic() < min(deadline, linger_until or deadline):
            if linger_until is None and want <= set(ids_by_name(received)):
                linger_until = time.monotonic() + 1
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.2)
    return received


def _delete_queue(url: str) -> None:
    with Connection(url, connect_timeout=10) as conn:
        conn.default_channel.queue_delete(QUEUE)


def test_stopping_the_node_holding_the_lease_leaves_one_active_replica_and_loses_nothing(
        tmp_path: Path, cluster: RabbitMQCluster, started: list[Multiwatch]) -> None:
    """The active replica's connection, and its exclusive lease queue, are on node A; the
    standby's on node B.  Stopping A mid-burst: both replicas end up on surviving nodes,
    exactly one of them active, and a consumer on a surviving node gets every file, each
    under one message id."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    urls = [node.amqp_url for node in cluster.nodes]
    _declare_quorum_queue(urls[0])
    ports = free_port(), free_port()
    # Each replica tries the nodes in its own order: the first one on node 0, the second on
    # node 1, so stopping node 0 takes the lease's node and leaves the standby connected.
    first = Multiwatch(["-c", str(_roster(tmp_path, "a", inbox, port=ports[0], url=urls,
                                          quorum=True))])
    started.append(first)
    first.wait_watching("music")
    second = Multiwatch(["-c", str(_roster(tmp_path, "b", inbox, port=ports[1],
                                           url=[*urls[1:], urls[0]], quorum=True))])
    started.append(second)
    second.wait_for_log(lambda line: line.get("message") == STANDING_BY)
    wait_for(lambda: role_of(ports[0]) == "active" and role_of(ports[1]) == "standby", 15,
             message="roles in /status")
    lease_node = wait_for(lambda: _node_of_active_connection(cluster, cluster.nodes[1]), 15,
                          message="the active replica's connection in list_connections")
    assert lease_node is cluster.nodes[0]
    survivor = cluster.nodes[1]
    try:
        before = write_numbered(inbox, range(0, 10))
        burst = Burst(inbox, 300, batch=10, pause=0.2)  # ~6 s of files, across the stop
        burst.start()
        burst.wait_written(50)
        lease_node.rabbitmqctl("stop_app")
        assert burst.written < 300, "the node stopped after the burst; nothing was tested"
        burst.finish()
        wait_for(lambda: _one_active(ports) and LEASE in _lease_queues(survivor), 60,
                 message="one replica active again, holding the lease on a surviving node")
        after = write_numbered(inbox, range(10, 20))
        want = before | after | set(burst.names)
        received = _consume(survivor.amqp_url, want, timeout=90)
        announced = ids_by_name(received)
        missing = want - set(announced)
        assert not missing, f"{len(missing)} files never delivered, e.g. {sorted(missing)[:5]}"
        assert all(len(ids) == 1 for ids in announced.values()), "one message id per file"
        assert _one_active(ports), "still exactly one active replica"
        moved = _node_of_active_connection(cluster, survivor)
        assert moved is not None and moved is not lease_node
        print(f"CLUSTER: {len(want)} files, {len(received)} deliveries "
              f"({len(received) - len(announced)} repeated) after stopping {lease_node.node}",
              flush=True)
        for mw in (first, second):
            assert mw.terminate() == 0
        wait_for(lambda: LEASE not in _lease_queues(survivor), 15,
                 message="the lease queue leaves with its connection")
    finally:
        if lease_node.rabbitmqctl("eval", "rabbit:is_running().").strip() != "true":
            lease_node.rabbitmqctl("start_app", timeout=120)
        _delete_queue(survivor.amqp_url)


def test_a_frozen_active_replica_with_its_own_state_dir_is_replaced_and_later_stands_by(
        tmp_path: Path, inbox: Path, broker_url: str, started: list[Multiwatch]) -> None:
    """SIGSTOP of the active supervisor's process group, each replica with a state_dir of its
    own (two hosts): the broker closes the silent connection, the standby takes over and
    announces what was written meanwhile; continued, the old one stands by."""
    declare_queue(broker_url, QUEUE)
    ports = free_port(), free_port()
    first, second = start_pair(started, ports, *(
        _roster(tmp_path, name, inbox, port=port, url=broker_url)
        for name, port in zip("ab", ports, strict=True)))
    before = write_numbered(inbox, range(0, 10))
    received = collect(broker_url, QUEUE, timeout=30,
                       until=lambda got: set(ids_by_name(got)) >= before)
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        after = write_numbered(inbox, range(10, 20))
        second.wait_for_log(lambda line: line.get("message") == TAKEOVER, timeout=60)
        received += collect(broker_url, QUEUE, timeout=60,
                            until=lambda got: set(ids_by_name(received + got)) >= before | after)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    announced = ids_by_name(received)
    assert set(announced) == before | after, "nothing lost"
    assert all(len(ids) == 1 for ids in announced.values()), "one message id per file"
    first.wait_for_log(lambda line: str(line.get("message", "")).startswith(DEMOTED),
                       timeout=60)
    wait_for(lambda: role_of(ports[0]) == "standby" and role_of(ports[1]) == "active", 60,
             message="the thawed replica came back as a standby")
