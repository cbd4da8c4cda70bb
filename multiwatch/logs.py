"""JSON-lines logging on stdout, one process-wide `instance_id` on every line.

Third-party loggers (kombu, amqp, watchdog) propagate to the root logger and so come
out in the same format.  Extra fields go in `extra={...}` and become JSON keys.
"""

from __future__ import annotations

import json
import logging
import sys
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


def setup_logging(level: str, instance_id: str) -> None:
    """Send every logger in this process to stdout as JSON lines tagged with instance_id."""
    global _instance_id
    _instance_id = instance_id
    # The JSON lines carry none of the caller, process or multiprocessing names: do not
    # compute them for every record (the logging HOWTO's "Optimization" switches).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kombu/amqp/watchdog are chatty at DEBUG; keep them at INFO unless asked for DEBUG.
    noisy_level = logging.DEBUG if level == "DEBUG" else logging.INFO
    for name in ("kombu", "amqp", "watchdog"):
        logging.getLogger(name).setLevel(max(noisy_level, logging.getLogger().level))
