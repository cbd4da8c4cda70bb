"""The publisher's low-level py-amqp I/O against a real broker: the one place that reaches
below py-amqp's public API (`transport._write`) keeps working and puts things back."""

from __future__ import annotations

from pathlib import Path

from kombu import Connection

from multiwatch.broker import close_connection, connect_once, named_queue, open_connection
from multiwatch.config import BrokerConfig
from multiwatch.watcher.amqp_io import publish_frames
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
