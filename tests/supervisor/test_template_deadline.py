"""A stopped or hung template cannot hold the supervisor at a start: the start fails with
the reason, the template is replaced (its watchers come back from the new one), and the
supervisor goes on serving.  Real template processes, real SIGSTOPs."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

import psutil
import pytest

from multiwatch.supervisor.template import (
    TemplateUnresponsive,
    start_in_template,
    start_template,
    stop_template,
    template_pid,
)
from tests.support.consumer import wait_for
from tests.support.process import Multiwatch, free_port, write_roster


@pytest.fixture
def template() -> Iterator[ForkServerContext]:
    """A template process started by this test (stopped, or killed if stopped, after it)."""
    context = start_template()
    try:
        yield context
    finally:
        pid = template_pid()
        if pid is not None:
            _resume(pid)  # (a stopped process cannot read its alive pipe closing)
        stop_template()


def _resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _stop(pid: int) -> None:
    """SIGSTOP `pid` and wait until it is stopped (the signal is delivered asynchronously)."""
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, timeout=10,
             message=f"process {pid} not stopped")


def _forked(context: ForkServerContext) -> int:
    """Start a trivial process in the template and return its exit status."""
    process = context.Process(target=time.sleep, args=(0,))
    start_in_template(process)
    process.join(timeout=30)
    assert process.exitcode is not None
    return process.exitcode


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_stopped_template_fails_the_start_at_once_and_is_replaced(
        template: ForkServerContext) -> None:
    """SIGSTOP of the template: the next start fails at once, saying the template is
    stopped; that template is gone and the start after it forks from a new one."""
    assert _forked(template) == 0
    stopped = template_pid()
    assert stopped is not None
    _stop(stopped)
    with pytest.raises(TemplateUnresponsive, match=rf"pid {stopped}\) is stopped"):
        start_in_template(template.Process(target=time.sleep, args=(0,)))
    assert _gone(stopped)
    assert _forked(template) == 0
    assert template_pid() not in (None, stopped)


def test_a_template_that_does_not_answer_fails_the_start_at_its_deadline(
        template: ForkServerContext) -> None:
    """A template that takes a request but never forks (stopped after the liveness check
    could see it): the start gives up at its deadline, with the reason, and the template is
    replaced; the OSError it raises is what a Child counts as a failed start."""
    assert _forked(template) == 0
    hung = template_pid()
    assert hung is not None
    _stop(hung)
    with pytest.raises(OSError, match=rf"pid {hung}\) did not fork the watcher within 0.5 s"):
        start_in_template(template.Process(target=time.sleep, args=(0,)), timeout=0.5,
                          check_stopped=False)
    assert _gone(hung)
    assert _forked(template) == 0
    assert template_pid() not in (None, hung)


def _get(port: int, path: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except urllib.error.URLError:
        return 0


def _roster(tmp_path: Path, port: int, names: list[str]) -> Path:
    for name in names:
        (tmp_path / name).mkdir(exist_ok=True)
    return write_roster(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "http": {"listen": f"127.0.0.1:{port}"},
        "defaults": {"settle_seconds": 0.1},
        "supervisor": {"restart_backoff_seconds": 0.2},
        "instances": [{"id": name, "directory": str(tmp_path / name)} for name in names],
    })


def _start_failed(line: dict[str, Any]) -> bool:
    return (line.get("message") == "cannot start the watcher; trying again after backoff"
            and "is stopped" in str(line.get("error", "")))


def test_multiwatch_run_replaces_a_stopped_template_and_keeps_serving(tmp_path: Path) -> None:
    """`multiwatch run`, its template stopped (SIGSTOP), then a reload adds an instance: its
    start fails with the reason in the log, the template is replaced, every watcher watches
    again from the new one, and /healthz answers throughout."""
    port = free_port()
    roster = _roster(tmp_path, port, ["first"])
    mw = Multiwatch(["-c", str(roster)])
    try:
        first = mw.wait_watching("first")
        stopped = psutil.Process(first["pid"]).ppid()
        mark = len(mw.lines)
        _stop(stopped)
        _roster(tmp_path, port, ["first", "second"])
        mw.process.send_signal(signal.SIGHUP)
        failed = mw.wait_for_log(_start_failed, after=mark, timeout=60)
        assert failed["instance_id"] == "second"
        assert _get(port, "/healthz") != 0  # the supervisor answers (its watchers restart)
        watching = {name: mw.wait_watching(name, after=mark, timeout=60)
                    for name in ("first", "second")}
        templates = {psutil.Process(line["pid"]).ppid() for line in watching.values()}
        assert len(templates) == 1 and stopped not in templates
        assert _gone(stopped)
        assert mw.terminate() == 0
    finally:
        mw.cleanup()
