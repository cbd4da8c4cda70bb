"""The supervisor's report wait: one poll set kept across turns, changed with the pipes."""

from __future__ import annotations

import multiprocessing
import os

from multiwatch.supervisor.report_wait import ReportWait


def test_reports_eof_and_the_wake_fd_are_seen_as_the_pipes_change() -> None:
    """A pipe with a report is ready, one whose writer closed is ready (EOF), a pipe no
    longer passed is no longer polled, a new one is, and the wake-up fd is told apart."""
    wake_read, wake_write = os.pipe()
    first_reader, first_writer = multiprocessing.Pipe(duplex=False)
    second_reader, second_writer = multiprocessing.Pipe(duplex=False)
    wait = ReportWait(wake_read)
    try:
        assert wait.wait([first_reader, second_reader], 0) == ([], False)
        second_writer.send("heartbeat")
        assert wait.wait([first_reader, second_reader], 0) == ([second_reader], False)
        assert second_reader.recv() == "heartbeat"
        first_writer.close()
        assert wait.wait([first_reader, second_reader], 0) == ([first_reader], False)
        first_reader.close()  # (the child's EOF: the supervisor drops its reader)
        third_reader, third_writer = multiprocessing.Pipe(duplex=False)
        third_writer.send("ready")
        assert wait.wait([second_reader, third_reader], 0) == ([third_reader], False)
        os.write(wake_write, b"x")
        assert wait.wait([second_reader, third_reader], 0) == ([third_reader], True)
        third_reader.close()
        third_writer.close()
    finally:
        for end in (second_reader, second_writer):
            end.close()
        os.close(wake_read)
        os.close(wake_write)
