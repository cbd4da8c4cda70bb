"""Broker plumbing shared by the watcher's publisher and `multiwatch tail`.

One place decides how a kombu Connection is built (AMQP, or the embedded filesystem
spool under state_dir) and what topology is declared, so producer and consumer agree.
"""

from __future__ import annotations

import os

from kombu import Connection, Exchange, Queue

from multiwatch.config import DEFAULT_QUEUE, BrokerConfig


def spool_dir(state_dir: str) -> str:
    """Where the embedded broker keeps messages (never inside a watched directory)."""
    return os.path.join(state_dir, "spool")


def open_connection(
    broker: BrokerConfig, state_dir: str, *, connection_name: str | None = None
) -> Connection:
    """A not-yet-connected kombu Connection for this roster's broker."""
    if broker.embedded:
        spool = spool_dir(state_dir)
        messages = os.path.join(spool, "messages")
        control = os.path.join(spool, "control")
        for folder in (messages, control):
            os.makedirs(folder, exist_ok=True)
        return Connection(
            "filesystem://",
            transport_options={
                "data_folder_in": messages,
                "data_folder_out": messages,
                "control_folder": control,
                "store_processed": False,
            },
        )
    # Confirms are requested and awaited by the publisher itself (pipelined, bounded);
    # the write timeout keeps a frozen broker from blocking a publish forever.
    options: dict[str, object] = {"write_timeout": broker.confirm_timeout_seconds}
    if connection_name:
        # Shown by `rabbitmqctl list_connections name client_properties` and the UI.
        options["client_properties"] = {"connection_name": connection_name}
    return Connection(
        broker.url,
        heartbeat=broker.heartbeat_seconds,
        connect_timeout=broker.connect_timeout_seconds,
        transport_options=options,
    )


def exchange_for(broker: BrokerConfig) -> Exchange:
    return Exchange(broker.exchange, type="topic", durable=True)


def queue_for(broker: BrokerConfig) -> Queue | None:
    """The durable queue to declare, or None when the user declares their own.

    The embedded spool always needs a queue: its transport drops messages that no
    queue is bound to.
    """
    name = broker.queue
    if name is None and broker.embedded:
        name = DEFAULT_QUEUE
    if name is None:
        return None
    return Queue(name, exchange_for(broker), routing_key=broker.binding_key, durable=True)
