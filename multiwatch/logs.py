"""JSON-lines logging on stdout, one process-wide `instance_id` on every line.

Third-party loggers (kombu, amqp, watchdog) propagate to the root logger and so come
out in the same format.  Extra fields go in `extra={...}` and become JSON keys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)

_instance_id = "supervisor"


# default=str: a path with surrogate escapes or an odd extra never breaks a log line.
# One encoder for all records (json.dumps with options builds a new one per call).
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=True)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: timestamp, level, instance_id, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ).replace("+00:00", "Z"),
            "level": record.levelname,
            "instance_id": getattr(record, "instance_id", _instance_id),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


class _JsonLinesHandler(logging.StreamHandler):
    """A stream handler that can hold lines back and write them with one call (see
    lines_written_together)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.held: list[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is None:
            super().emit(record)
            return
        try:
            self.held.append(self.format(record) + self.terminator)
        except Exception:  # noqa: BLE001 - as StreamHandler.emit: never raise from logging
            self.handleError(record)


    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):  # `multiwatch run | head -1`
            _discard_stdout()
            return
        super().handleError(record)


def _discard_stdout() -> None:
    """Nobody reads stdout any more: point it at /dev/null (the process goes on; a log
    reader leaving is no reason to stop announcing files) and say so once on stderr,
    instead of a "Logging error" traceback per line."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    try:
        print(f"multiwatch: {_instance_id}: stdout's reader went away; its log lines are "
              "discarded from now on", file=sys.stderr, flush=True)
    except OSError:  # stderr went with it
        pass


_handler: _JsonLinesHandler | None = None


@contextlib.contextmanager
def lines_written_together() -> Iterator[None]:
    """Write the lines logged inside (by any thread) with one write at the end.

    For a loop that logs a line per file: one write system call per line was about a
    tenth of the watcher's CPU in a burst.  Lines keep their order; nothing is held once
    the block ends, even if it raises."""
    handler = _handler
    lock = handler.lock if handler is not None else None
    if handler is None or lock is None or handler.held is not None:  # or already holding
        yield
        return
    with lock:
        handler.held = []
    try:
        yield
    finally:
        with lock:
            held, handler.held = handler.held, None
            if held:
                try:
                    handler.stream.write("".join(held))
                    handler.flush()
                except BrokenPipeError:
                    _discard_stdout()
                except Exception:  # noqa: BLE001 - a closed or full stdout must not kill us
                    pass


def setup_logging(level: str, instance_id: str) -> None:
    """Send every logger in this process to stdout as JSON lines tagged with instance_id."""
    global _instance_id
    _instance_id = instance_id
    # The JSON lines carry none of the caller, process or multiprocessing names: do not
    # compute them for every record (the logging HOWTO's "Optimization" switches).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _handler
    handler = _handler = _JsonLinesHandler()
    handler.setFormatter(JsonFormatter())
    handler.setLevel(level)  # what is printed
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # What is recorded: warnings always, whatever is printed, so that what counts them (the
    # errors metric) never depends on the log level.  They are rare: the cost is nil.
    root.setLevel(min(logging.getLevelName(level), logging.WARNING))
    # kombu/amqp/watchdog are chatty at DEBUG; keep them at INFO unless asked for DEBUG.
    noisy_level = logging.DEBUG if level == "DEBUG" else logging.INFO
    for name in ("kombu", "amqp", "watchdog"):
        logging.getLogger(name).setLevel(max(noisy_level, root.level))
