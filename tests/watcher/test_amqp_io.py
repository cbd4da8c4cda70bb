"""The publisher's low-level py-amqp I/O against a real broker: the one place that reaches
below py-amqp's public API (`transport._write`, `_read_buffer`) keeps working and puts
things back; a py-amqp upgrade that changes those internals fails here."""

from __future__ import annotations

import time
from pathlib import Path

import amqp
from kombu import Connection

from multiwatch.broker import close_connection, connect_once, named_queue, open_connection
from multiwatch.config import BrokerConfig
from multiwatch.watcher import amqp_io
from multiwatch.watcher.amqp_io import publish_frames, read_pending_frames
from multiwatch.watcher.message import Event


def _event(number: int) -> Event:
    return Event(instance_id="io", event_type="file_discovered", routing_key="file.discovered",
                 message_id=f"m{number}", correlation_id=f"c{number}", body=b'{"n": %d}' % number)


def test_a_batch_goes_out_in_one_socket_write_and_arrives_in_order(
        tmp_path: Path, broker_url: str) -> None:
    """Three events: one write to the socket, py-amqp's own writer restored afterwards, and
    all three in the queue in order and persistent."""
    broker = BrokerConfig(url=broker_url)
    connection: Connection = connect_once(open_connection(broker, str(tmp_path)))
    try:
        channel = connection.channel()
        named_queue(broker, "io")(channel).declare()
        transport = connection.connection.transport
        own = vars(transport).get("_write")
        writes: list[int] = []

        def counting(data: bytes) -> None:
            writes.append(len(data))
            assert own is not None
            own(data)

        transport._write = counting
        publish_frames(connection, channel, broker.exchange, [_event(i) for i in range(3)])
        assert len(writes) == 1 and writes[0] > 3 * len(_event(0).body)
        assert vars(transport)["_write"] is counting  # what was there before, put back
        transport._write = own
        got = [channel.basic_get("io", no_ack=True) for _ in range(3)]
        assert [m.properties["message_id"] for m in got] == ["m0", "m1", "m2"]
        assert all(m.properties["delivery_mode"] == 2 for m in got)
    finally:
        close_connection(connection, within=2.0)


def test_an_idle_connection_reads_nothing_and_a_delivery_is_read_when_it_arrives(
        tmp_path: Path, broker_url: str) -> None:
    """Idle, the connection is seen to have no input without a read (py-amqp's empty
    `_read_buffer` and a quiet socket); a delivery that arrives is then seen and handled."""
    broker = BrokerConfig(url=broker_url)
    connection: Connection = connect_once(open_connection(broker, str(tmp_path)))
    try:
        channel = connection.channel()
        named_queue(broker, "idle")(channel).declare()
        got: list[amqp.Message] = []
        channel.basic_consume("idle", callback=got.append, no_ack=True)
        assert not amqp_io._input_waiting(connection)  # (an unknown transport: always True)
        sender = connection.channel()
        sender.basic_publish(amqp.Message(b"x"), exchange="", routing_key="idle")
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            if amqp_io._input_waiting(connection):
                read_pending_frames(connection)
            else:
                time.sleep(0.01)
        assert [m.body for m in got] == [b"x"]
        assert not amqp_io._input_waiting(connection)
    finally:
        close_connection(connection, within=2.0)
