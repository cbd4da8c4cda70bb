"""A three-node RabbitMQ cluster: quorum queue, failover when multiwatch's node goes away.

The cluster is private to this module (tests/support/cluster.py) and torn down after it,
queue and all; the session's single broker is not used.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

from kombu import Connection, Consumer, Queue
from kombu.message import Message

from tests.support.cluster import RabbitMQCluster
from tests.support.consumer import Received, _json_array, _table, wait_for
from tests.support.faults import FAST_BROKER, Burst, is_message, names
from tests.support.process import Multiwatch, run_cli, write_roster
from tests.support.rabbitmq import RabbitMQ

QUEUE = "file_events"
CONNECTION = "file_watcher_clustered"


def connection_node(cluster: RabbitMQCluster, asked: RabbitMQ, name: str) -> RabbitMQ | None:
    """The node holding the AMQP connection named `name` (by its listener port), if open."""
    out = asked.rabbitmqctl("list_connections", "port", "client_properties",
                            "--formatter", "json")
    for row in _json_array(out):
        if _table(row.get("client_properties")).get("connection_name") == name:
            port = int(row["port"])
            return next(n for n in cluster.nodes if urlsplit(n.amqp_url).port == port)
    return None


def queue_types(asked: RabbitMQ) -> dict[str, str]:
    out = asked.rabbitmqctl("list_queues", "name", "type", "--formatter", "json")
    return {row["name"]: row["type"] for row in _json_array(out)}


def consume(url: str, want: set[str], timeout: float) -> list[Received]:
    """Take messages off the (already declared) quorum queue until every name in `want` came."""
    received: list[Received] = []

    def on_message(message: Message) -> None:
        received.append(Received.from_message(message))
        message.ack()

    deadline = time.monotonic() + timeout
    with Connection(url, connect_timeout=10) as conn, Consumer(
            conn, [Queue(QUEUE, no_declare=True)], on_message=on_message, prefetch_count=200):
        while not want <= names(received) and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                pass
    return received


def test_files_survive_stopping_the_node_multiwatch_is_connected_to(
        tmp_path: Path, cluster: RabbitMQCluster) -> None:
    """Stop the node holding multiwatch's connection mid-burst: every file is still delivered."""
    watched = tmp_path / "in"
    watched.mkdir()
    roster = write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "broker": {"url": [node.amqp_url for node in cluster.nodes], "queue_type": "quorum",
                   **FAST_BROKER},
        "defaults": {"settle_seconds": 0.1},
        "supervisor": {"stop_timeout_seconds": 5},
        "instances": [{"id": "clustered", "directory": str(watched)}],
    })
    mw = Multiwatch(["-c", str(roster)])
    try:
        mw.wait_for_log(lambda line: is_message(line, "connected to broker", "clustered"))
        assert queue_types(cluster.nodes[0]) == {QUEUE: "quorum"}
        # `tail` declares the queue with the publisher's arguments, or RabbitMQ would refuse it.
        (watched / "first.txt").write_text("before the failover")
        tail = run_cli("tail", "-c", str(roster), "-n", "1", "--timeout", "30")
        assert tail.returncode == 0 and '"first.txt"' in tail.stdout, tail.stderr

        target = wait_for(lambda: connection_node(cluster, cluster.nodes[0], CONNECTION),
                          timeout=30)
        survivor = next(node for node in cluster.nodes if node is not target)
        burst = Burst(watched, 300, batch=10, pause=0.2)  # ~6 s of files
        burst.start()
        burst.wait_written(60)
        mark = len(mw.lines)
        assert target is not None
        target.rabbitmqctl("stop_app")
        assert burst.written < 300, "the node went down after the burst; nothing was tested"
        burst.finish()
        mw.wait_for_log(lambda line: is_message(line, "connected to broker", "clustered"),
                        timeout=60, after=mark)
        moved = wait_for(lambda: connection_node(cluster, survivor, CONNECTION), timeout=30)
        assert moved is not target

        got = consume(survivor.amqp_url, set(burst.names), timeout=60)
        missing = set(burst.names) - names(got)
        assert not missing, f"{len(missing)} files never delivered, e.g. {sorted(missing)[:5]}"
        print(f"CLUSTER: {len(burst.names)} files, {len(got)} deliveries "
              f"({len(got) - len(names(got))} duplicates) after stopping {target.node}", flush=True)
        assert mw.terminate() == 0
    finally:
        mw.cleanup()
