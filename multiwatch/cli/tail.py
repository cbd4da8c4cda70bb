"""`multiwatch tail`: print the events on a queue (or the embedded spool), one JSON per line.

Anyone who can publish to the exchange decides what tail reads, so a body is trusted
neither to be JSON nor to be harmless on a terminal:

- a JSON body is printed re-encoded on one line, every control character escaped (C0 by
  JSON itself; DEL, C1 such as the 8-bit CSI, bidirectional overrides, line separators and
  lone surrogates as \\uXXXX), so no escape sequence reaches the terminal;
- anything else (a refused content type such as pickle, invalid JSON, bytes that are not
  UTF-8) is reported on stderr in one line and rejected without requeue: taken off the
  queue (into its dead-letter exchange if it has one) rather than redelivered to crash or
  stop the next run.  A --tap queue holds copies, so rejecting one loses nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiwatch.config import Roster

EXIT_BROKER = 1
JSON_TYPES = ("application/json", "text/json")
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                     "\u2066-\u2069\ud800-\udfff]")


def escape_controls(text: str) -> str:
    r"""`text` with every character a terminal could act on written as \uXXXX."""
    return _UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def printable_event(body: bytes, content_type: str | None,
                    content_encoding: str | None) -> str:
    """The line to print for a message body; ValueError says why it cannot be printed."""
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    if kind not in JSON_TYPES:
        raise ValueError(f"content type {content_type!r} is not JSON, refused")
    encoding = (content_encoding or "utf-8").strip().lower()
    if encoding not in ("utf-8", "utf8"):
        raise ValueError(f"content encoding {content_encoding!r} is not UTF-8, refused")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the body is not UTF-8 (byte {exc.start})") from None
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the body is not JSON ({exc})") from None
    return escape_controls(json.dumps(event, ensure_ascii=False))


def _describe(message: Any) -> str:
    """Which message, in words that are safe to print (its id and size)."""
    properties = getattr(message, "properties", None) or {}
    ident = properties.get("message_id") or "without message_id"
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    return escape_controls(f"message {ident} ({len(body)} bytes)")


def stdout_reader_gone() -> bool:
    """True once nobody reads our stdout any more (`tail | head -1` after head exits).

    Found without writing: poll reports POLLERR on a pipe whose reader closed (GNU tail
    -f asks the same), so an idle tail ends too instead of waiting for the next event."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # replaced or closed stdout: no pipe
        return False
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR and POLLHUP are always reported
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _wait_for_spool(roster: Roster, timeout: float | None) -> bool:
    """Wait, creating nothing, until `multiwatch run` has made the embedded spool; False
    if `timeout` seconds pass first."""
    from multiwatch.broker import spool_dir

    spool = spool_dir(roster.state_dir)
    folders = [os.path.join(spool, name) for name in ("messages", "control")]
    if all(os.path.isdir(folder) for folder in folders):
        return True
    print(f"multiwatch: nothing to tail yet: {spool} does not exist until `multiwatch run` "
          "starts with this roster; waiting for it (Ctrl-C to stop)", file=sys.stderr,
          flush=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while not all(os.path.isdir(folder) for folder in folders):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if stdout_reader_gone():
            raise BrokenPipeError("stdout's reader went away")
        time.sleep(0.5)  # a directory to appear: nothing to wait on but the clock
    return True


def tail(roster: Roster, args: argparse.Namespace) -> int:
    from kombu import Consumer, Queue

    from multiwatch import broker_errors
    from multiwatch.broker import BrokerLink, exchange_for, named_queue, queue_for
    from multiwatch.config import ConfigError, mask_url

    broker = roster.broker
    if args.tap and broker.embedded:
        raise ConfigError("--tap needs a RabbitMQ broker; the embedded spool has one queue")
    if args.tap:
        queue = Queue(f"multiwatch-tail-{uuid.uuid4().hex[:8]}", exchange_for(broker),
                      routing_key=broker.binding_key, exclusive=True, auto_delete=True)
    elif args.queue:
        queue = named_queue(broker, args.queue)
    else:
        configured = queue_for(broker)
        if configured is None:
            raise ConfigError("broker.queue is null, so there is no queue to tail; "
                              "pass --queue NAME or --tap")
        queue = configured
    printed = 0
    reader_gone = False  # stdout's reader left: told apart from a broker socket's EPIPE

    def on_message(message: Any) -> None:
        nonlocal printed, reader_gone
        raw = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        try:
            line = printable_event(raw, message.content_type, message.content_encoding)
        except ValueError as exc:
            print(f"multiwatch: skipped {_describe(message)}: {escape_controls(str(exc))}; "
                  "rejected without requeue", file=sys.stderr, flush=True)
            message.reject(requeue=False)
            return
        try:
            print(line, flush=True)
        except BrokenPipeError:  # not acked: the queue keeps it (a --tap queue goes)
            reader_gone = True
            return
        message.ack()
        printed += 1

    if broker.embedded and not _wait_for_spool(roster, args.timeout):
        return 0
    where = "embedded spool" if broker.embedded else mask_url(str(broker.url))
    link = BrokerLink(broker, roster.state_dir, connection_name="multiwatch_tail")
    try:
        connection = link.connect()
    except Exception as exc:  # noqa: BLE001 - socket, AMQP or password-file errors alike
        print(f"multiwatch: cannot connect to {where}: {broker_errors.describe(exc)}",
              file=sys.stderr)
        return EXIT_BROKER
    where = link.where
    # on_message receives messages undecoded: kombu's own decoding raises for a refused
    # content type (pickle) before any callback could reject the message.
    with connection, Consumer(connection, queues=[queue], on_message=on_message):
        print(f"multiwatch: tailing {queue.name} on {where} (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
        idle = 0.0
        while args.count is None or printed < args.count:
            before = printed
            try:
                connection.drain_events(timeout=0.5)
            except TimeoutError:
                pass
            except OSError as exc:  # the broker closed, froze or vanished
                print(f"multiwatch: lost {where}: {broker_errors.describe(exc)}",
                      file=sys.stderr)
                return EXIT_BROKER
            # An idle consumer sends nothing: heartbeats keep the broker from closing it,
            # and missing ones from the broker (a frozen node) end the wait instead of
            # leaving it silent forever.
            try:
                connection.heartbeat_check()
            except Exception as exc:  # noqa: BLE001 - ConnectionForced or a socket error
                print(f"multiwatch: lost {where}: {broker_errors.describe(exc)}",
                      file=sys.stderr)
                return EXIT_BROKER
            if reader_gone or stdout_reader_gone():  # main ends quietly; closing the
                # connection on the way out deletes a --tap queue
                raise BrokenPipeError("stdout's reader went away")
            idle = 0.0 if printed > before else idle + 0.5
            if args.timeout is not None and idle >= args.timeout:
                break
    return 0
