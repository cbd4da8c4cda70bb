"""Logging on stdout, one process-wide `instance_id` on every line: JSON lines, or aligned
console lines for a person at a terminal.

Third-party loggers (kombu, amqp, watchdog) propagate to the root logger and so come
out in the same format.  Extra fields go in `extra={...}` and become JSON keys (key=value
on a console line).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
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


LOG_FORMATS = ("auto", "console", "json")
# Console columns: wide enough for most ids (longer ones push the message right).
_ID_WIDTH = 18
_LEVEL_WIDTH = len("CRITICAL")
# What a terminal could act on (controls, bidirectional overrides, lone surrogates from
# undecodable file names), as `multiwatch tail` escapes it; and what needs quoting in a value.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                     "\u2066-\u2069\ud800-\udfff]")
_NEEDS_QUOTES = re.compile(r'[\s"=\\]|^$')


def resolve_log_format(log_format: str, stream: object | None = None) -> str:
    """"console" or "json": `auto` is console when `stream` (stdout) is a terminal."""
    if log_format != "auto":
        return log_format
    isatty = getattr(stream if stream is not None else sys.stdout, "isatty", None)
    try:
        return "console" if isatty is not None and isatty() else "json"
    except (OSError, ValueError):  # a closed or odd stream: the machine-readable choice
        return "json"


def _escaped(text: str) -> str:
    return _UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _console_value(value: object) -> str:
    """A string with spaces, quotes, '=' or controls in double quotes (backslash escapes);
    anything else as str() shows it."""
    text = value if isinstance(value, str) else str(value)
    if isinstance(value, str) and (_NEEDS_QUOTES.search(text) or _UNSAFE.search(text)):
        return '"' + _escaped(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'
    return _escaped(text)


class ConsoleFormatter(logging.Formatter):
    """One aligned line for people: UTC time, level, instance_id, message, key=value extras
    (the JSON line's fields; `logger` only for a third-party record).  Control characters in
    paths are escaped, so a file name cannot drive the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        stamp = moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
        ident = str(getattr(record, "instance_id", _instance_id))
        parts = [stamp, record.levelname.ljust(_LEVEL_WIDTH), _escaped(ident).ljust(_ID_WIDTH),
                 _escaped(record.getMessage())]
        extras = [f"{key}={_console_value(value)}" for key, value in record.__dict__.items()
                  if key not in _STANDARD_ATTRS and key != "instance_id"]
        if not record.name.startswith("multiwatch") and record.name != "root":
            extras.insert(0, f"logger={_console_value(record.name)}")
        line = " ".join(parts)
        if extras:
            line += "  " + " ".join(extras)
        if record.exc_info:  # the traceback on the lines below, as Python prints it
            line += "\n" + "\n".join(_escaped(text) for text in
                                     self.formatException(record.exc_info).splitlines())
        return line


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


def setup_logging(level: str, instance_id: str, log_format: str = "json") -> None:
    """Send every logger in this process to stdout tagged with instance_id: as JSON lines,
    or as console lines (`log_format` console, or auto with stdout a terminal)."""
    global _instance_id
    _instance_id = instance_id
    # The JSON lines carry none of the caller, process or multiprocessing names: do not
    # compute them for every record (the logging HOWTO's "Optimization" switches).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _handler
    handler = _handler = _JsonLinesHandler()
    console = resolve_log_format(log_format, handler.stream) == "console"
    handler.setFormatter(ConsoleFormatter() if console else JsonFormatter())
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
