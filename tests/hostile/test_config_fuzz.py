"""Configuration fuzzing: whatever a roster file holds, `multiwatch check` answers with exit 0,
or exit 2 and one clear paragraph on stderr; never a traceback, never a hang."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from multiwatch import cli
from multiwatch.config import (
    BrokerConfig,
    HttpConfig,
    InstanceConfig,
    Roster,
    SupervisorConfig,
    TlsConfig,
)
from multiwatch.config.activity import UnusualActivityConfig
from multiwatch.config.deletions import ScanDeletionBound
from tests.support.hostile import roster as hostile_roster
from tests.support.process import Multiwatch, multiwatch_command, run_cli

# Deterministic by default (same examples every run, so CI cannot flake on a new find); set
# MULTIWATCH_FUZZ_EXAMPLES=5000 MULTIWATCH_FUZZ_RANDOM=1 to explore further.
FUZZ = settings(max_examples=int(os.environ.get("MULTIWATCH_FUZZ_EXAMPLES", "300")),
                deadline=None, database=None,
                derandomize=not os.environ.get("MULTIWATCH_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# Every key any section declares (config/roster.py, broker.py, activity.py, deletions.py),
# plus the two lists that are not dataclass fields: a new key is fuzzed without a line here.
_SECTIONS = (Roster, SupervisorConfig, HttpConfig, InstanceConfig, BrokerConfig, TlsConfig,
             UnusualActivityConfig, ScanDeletionBound)
ROSTER_KEYS = sorted({f.name for section in _SECTIONS for f in dataclasses.fields(section)}
                     - {"source"} | {"defaults", "instances"})  # (source: where it was read)
TRICKY_TEXT = ["", " ", "~", "null", "yes", "no", "on", "0x1F", "1e999", "-1", "0", "nan",
               ".inf", "${HOME}", "${UNSET_VAR_FOR_FUZZ}", "${X:-default}", "$$", "${", "$",
               "${A:-${B}}", "/", ".", "..", "/nonexistent/dir", "/dev/null", "/proc/self",
               "amqp://u:p@h:1/v", "amqps://h", "embedded", "filesystem://", "amqp://",
               "amqp://[::1", "127.0.0.1:0", "[::1]:99999", "off", "host:port", "*", "[",
               "**/x", "512MiB", "1G", "1Gi", "-5MiB", "10 KB", "é\u0000", "\ud800", "a" * 300,
               "DEBUG", "quorum", "classic", "polling", "inotify", "auto", "console", "json",
               "50%", "best-effort:7", "idle", "realtime:0", "50MiB/s"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**400, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(TRICKY_TEXT),
    st.text(max_size=40),
)
keys = st.one_of(st.sampled_from(ROSTER_KEYS), st.text(max_size=12), st.integers(),
                 st.booleans(), st.none())
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(keys, children, max_size=6)),
    max_leaves=30,
)
top_level = st.dictionaries(st.sampled_from(ROSTER_KEYS), documents, max_size=8)


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    """Two real directories and a state directory, shared by every example of a test."""
    with tempfile.TemporaryDirectory(prefix="mw-fuzz-") as tmp:
        base = Path(tmp)
        for name in ("music", "docs", "state"):
            (base / name).mkdir()
        (base / "ca.pem").write_text("not really a certificate\n")
        (base / "password").write_text("fuzz-password\n")
        yield base


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("RABBITMQ_", "MULTIWATCH_")) or name in (
                "DATA_DIR", "INSTANCE_ID", "LOG_LEVEL", "SETTLE_SECONDS", "INCLUDE", "EXCLUDE"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", "/root")


def valid_roster(base: Path) -> dict[str, Any]:
    return {
        "state_dir": str(base / "state"),
        "log_level": "INFO",
        "broker": {"url": "amqp://user:secret@127.0.0.1:5672/", "exchange": "file_events",
                   "queue": "file_events", "heartbeat_seconds": 30},
        "supervisor": {"stop_timeout_seconds": 5, "restart_backoff_seconds": 1},
        "http": {"listen": "127.0.0.1:9120"},
        "defaults": {"settle_seconds": 1.0, "exclude": [".*", "*.part"], "memory_limit": "512MiB"},
        "instances": [{"id": "music", "directory": str(base / "music"), "include": ["*.mp3"]},
                      {"id": "docs", "directory": str(base / "docs"), "recursive": False}],
    }


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`multiwatch check -c path` in-process: (exit status, stdout, stderr).

    stdout and stderr behave like a real process's in a UTF-8 locale: stdout is strict UTF-8,
    stderr uses backslashreplace (Python's default for stderr). capsys's own streams are
    strict for both, which would turn a lone surrogate in an error message into a crash that
    no user can ever see.
    """
    capsys.readouterr()
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace",
                           write_through=True)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(["check", "-c", str(path)])
        except SystemExit as exc:  # argparse; never expected here
            status = exc.code if isinstance(exc.code, int) else 2
    out.flush()
    err.flush()
    return status, out_bytes.getvalue().decode(), err_bytes.getvalue().decode()


def assert_clean_answer(status: int, out: str, err: str) -> None:
    assert status in (0, 2), (status, out, err)
    assert "Traceback" not in out + err
    if status == 2:
        assert err.startswith("multiwatch: error: "), err
        assert len(err.strip()) > len("multiwatch: error: ")
    else:
        assert out.strip() and not err.strip()


def write(path: Path, document: Any) -> Path:
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False))
    return path


def test_the_unmutated_roster_is_valid(workspace: Path, clean_env: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Control: the roster the mutations start from passes `check` (exit 0)."""
    status, out, err = check(write(workspace / "valid.yaml", valid_roster(workspace)), capsys)
    assert (status, err) == (0, "")
    assert "secret" not in out


@FUZZ
@given(document=st.one_of(documents, top_level))
def test_random_yaml_documents_never_crash_check(
        document: Any, workspace: Path, clean_env: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Random YAML documents (nested mappings, lists and odd scalars) give exit 0 or 2 with a
    message, never a traceback."""
    try:
        path = write(workspace / "random.yaml", document)
    except (yaml.YAMLError, UnicodeEncodeError):
        return  # not representable as YAML text
    assert_clean_answer(*check(path, capsys))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _mutate(roster: dict[str, Any], path: tuple[Any, ...], how: str, value: Any) -> Any:
    if not path:
        return value if how == "replace" else roster
    parent: Any = roster
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if how == "delete":
        del parent[last]
    elif how == "replace":
        parent[last] = value
    elif how == "wrap-in-list":
        parent[last] = [parent[last]]
    elif how == "wrap-in-mapping":
        parent[last] = {"value": parent[last]}
    elif how == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    elif how == "rename" and isinstance(parent, dict):
        parent[str(value)] = parent.pop(last)
    return roster


@FUZZ
@given(data=st.data())
def test_mutated_valid_rosters_never_crash_check(
        data: st.DataObject, workspace: Path, clean_env: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A valid roster with one to three random mutations (a key deleted, renamed or duplicated,
    a value replaced by anything, wrapped in a list or mapping) gives exit 0 or 2 with a
    message, never a traceback."""
    roster: Any = valid_roster(workspace)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        if not isinstance(roster, dict):
            break
        path = data.draw(st.sampled_from(list(_paths(roster))), label="path")
        how = data.draw(st.sampled_from(["delete", "replace", "replace", "wrap-in-list",
                                         "wrap-in-mapping", "duplicate", "rename"]), label="how")
        value = data.draw(documents, label="value")
        roster = _mutate(roster, path, how, value)
    try:
        path_on_disk = write(workspace / "mutated.yaml", roster)
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    assert_clean_answer(*check(path_on_disk, capsys))


FUZZ_SECRET = "Fz-s3cret-9731"
secret_values = st.sampled_from([
    f"amqp://user:{FUZZ_SECRET}@rabbit/", f"amqps://u:{FUZZ_SECRET}@h:5671/%2F",
    f"amqp://u:{FUZZ_SECRET}@a;amqp://u:{FUZZ_SECRET}@b", f" amqp://u:{FUZZ_SECRET}@h ",
    f"AMQP://U:{FUZZ_SECRET.upper()}@H", "${FUZZ_SECRET_VAR}", " ${FUZZ_SECRET_VAR} ",
    "x-${FUZZ_SECRET_VAR}", "${FUZZ_SECRET_VAR}:5672", "amqp://u:${FUZZ_SECRET_VAR}@h/",
    ["${FUZZ_SECRET_VAR}"], {"url": "${FUZZ_SECRET_VAR}"}, {"value": f"amqp://u:{FUZZ_SECRET}@h"},
])


@FUZZ
@given(data=st.data())
def test_errors_never_echo_a_secret_put_anywhere(
        data: st.DataObject, workspace: Path, clean_env: None,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL with a password, or a `${VAR}` holding a secret, put in place of any value or
    key of a valid roster: whatever `check` says on stderr never contains the secret."""
    monkeypatch.setenv("FUZZ_SECRET_VAR", FUZZ_SECRET)
    roster: Any = valid_roster(workspace)
    for _ in range(data.draw(st.integers(1, 2), label="secrets")):
        path = data.draw(st.sampled_from(list(_paths(roster))[1:]), label="path")
        value = copy.deepcopy(data.draw(secret_values, label="value"))  # (no shared lists)
        roster = _mutate(roster, path, "replace", value)
    status, out, err = check(write(workspace / "secret.yaml", roster), capsys)
    assert_clean_answer(status, out, err)
    assert FUZZ_SECRET.lower() not in err.lower(), err


raw_texts: st.SearchStrategy[bytes | str] = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    st.lists(st.sampled_from(["instances:", "\n", "  - ", "id: a", "directory: /tmp", "&a ",
                              "*a", "[", "]", "{", "}", ": ", "!!python/object:os.system ",
                              "!!binary ", "%YAML 1.1\n", "---\n", "...\n", "\t", "? ", "|",
                              ">", "'", '"', "#", "\ufeff", "<<: *a", "!!set ", "!!omap ",
                              "${HOME}", "0o17", "-.inf", "~"]),
             max_size=40).map("".join),
)


@FUZZ
@given(raw=raw_texts)
@example(raw=b"a: &a [*a]\n")
@example(raw=b"\xff\xfe\x00instances: []")
@example(raw=b"instances: !!python/object/apply:os.system [echo pwned]\n")
def test_raw_text_never_crashes_check(raw: bytes | str, workspace: Path, clean_env: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Arbitrary bytes, text and YAML-ish token soup (tags, anchors, aliases, tabs, BOMs)
    give exit 0 or 2 with a message, never a traceback."""
    path = workspace / "raw.yaml"
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    assert_clean_answer(*check(path, capsys))


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_roster_is_a_clear_error(depth: int, workspace: Path, clean_env: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A roster nested thousands of levels deep is refused with exit 2 and a message."""
    path = workspace / "nested.yaml"
    path.write_text("instances: " + "[" * depth + "]" * depth + "\n")
    status, out, err = check(path, capsys)
    assert_clean_answer(status, out, err)
    assert status == 2


def test_password_file_that_is_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    """broker.password_file naming a FIFO gets exit 2 and a message within seconds."""
    (tmp_path / "music").mkdir()
    os.mkfifo(tmp_path / "password.fifo")
    roster = write(tmp_path / "roster.yaml", {
        "state_dir": str(tmp_path / "state"),
        "broker": {"url": "amqp://user@127.0.0.1:5672/",
                   "password_file": str(tmp_path / "password.fifo")},
        "instances": [{"id": "music", "directory": str(tmp_path / "music")}],
    })
    try:
        done = run_cli("check", "-c", str(roster), timeout=6)
    except subprocess.TimeoutExpired as exc:  # run() killed the hung check
        pytest.fail(f"multiwatch check hung on a FIFO password file: {exc}")
    assert done.returncode == 2
    assert "password" in done.stderr and "Traceback" not in done.stderr


def test_nan_and_infinite_numbers_are_refused_clearly(
        workspace: Path, clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    """NaN and infinity (YAML .nan, .inf, 1e999) as a timing are refused with exit 2 naming the
    key."""
    for value in (math.nan, math.inf, -math.inf, "1e999"):
        roster = valid_roster(workspace)
        roster["defaults"]["settle_seconds"] = value
        status, _, err = check(write(workspace / "numbers.yaml", roster), capsys)
        assert status == 2, (value, err)
        assert "settle_seconds" in err and "Traceback" not in err


@pytest.mark.parametrize("value", [10**400, "9" * 400], ids=["yaml-int", "digit-string"])
def test_integer_beyond_float_range_is_refused_clearly(
        value: object, workspace: Path, clean_env: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A 400-digit number as a timing is refused with exit 2 naming the key."""
    roster = valid_roster(workspace)
    roster["defaults"]["settle_seconds"] = value
    status, _, err = check(write(workspace / "numbers.yaml", roster), capsys)
    assert status == 2, err
    assert "settle_seconds" in err


def _alias_bomb(levels: int, *, merge: bool = False) -> str:
    """A billion-laughs roster: each level repeats the one below nine times by alias."""
    if merge:
        lines = ["x0: &x0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}"]
        lines += [f"x{i}: &x{i} {{<<: [{', '.join([f'*x{i - 1}'] * 9)}]}}"
                  for i in range(1, levels + 1)]
    else:
        lines = ["x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        lines += [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "defaults:\n" + "".join(f"  {line}\n" for line in lines) + "instances: []\n"


def _limit_memory() -> None:
    """The old loader would need ~18 GB for 7 levels: keep a regression from taking them."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("levels, merge", [(5, False), (7, False), (9, False), (7, True)])
def test_an_alias_bomb_is_refused_fast(tmp_path: Path, levels: int, merge: bool) -> None:
    """A 5-, 7- or 9-level alias bomb (or merge-key bomb): `check` exits 2 within seconds in
    1 GB of address space, with one line naming the limit (issue 18 item 9)."""
    roster = tmp_path / "bomb.yaml"
    roster.write_text(_alias_bomb(levels, merge=merge))
    started = time.monotonic()
    result = subprocess.run(multiwatch_command("check", "-c", str(roster)), capture_output=True,
                            text=True, timeout=60, preexec_fn=_limit_memory)
    assert time.monotonic() - started < 10
    assert result.returncode == 2, result.stderr[-500:]
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "more than 200,000 values, the limit" in result.stderr


def test_anchors_and_merges_of_a_large_real_roster_are_accepted(workspace: Path, clean_env: None,
                                                              capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    """300 instances that each merge a shared block of settings stay far below the limit."""
    lines = [f"state_dir: {workspace / 'state'}",
             "defaults: {settle_seconds: 1}", "instances:"]
    for i in range(300):
        (tmp_path / f"d{i}").mkdir()
        # (polling: 300 inotify instances would draw check's warning about the machine's limit)
        shared = ("&shared {include: ['*.mp3', '*.flac'], recursive: true, observer: polling}"
                  if i == 0 else "*shared")
        lines.append(f"  - {{<<: {shared}, id: i{i}, directory: {tmp_path / f'd{i}'}}}")
    status, out, err = check(write_text(tmp_path / "big.yaml", "\n".join(lines)), capsys)
    assert (status, err) == (0, ""), err
    assert out.count("- id: i") == 300


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_roster_over_one_mib_is_refused_without_reading_it_all(
        tmp_path: Path, workspace: Path, clean_env: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A roster file larger than 1 MiB (here 64 MiB of comments) is refused at once."""
    roster = tmp_path / "huge.yaml"
    with roster.open("w") as handle:
        handle.write("# padding\n" * (64 * 1024 * 1024 // 10))
    started = time.monotonic()
    status, _, err = check(roster, capsys)
    assert time.monotonic() - started < 5
    assert status == 2 and "is larger than 1 MiB, the limit; refused" in err


def test_a_sighup_reload_of_an_alias_bomb_is_refused_and_the_fleet_runs_on(
        tmp_path: Path, inbox: Path) -> None:
    """The roster replaced by an alias bomb, then SIGHUP: the reload is rejected with the
    limit in the log, the watcher keeps its pid and the supervisor stays small."""
    path = hostile_roster(tmp_path, [{"id": "box", "directory": str(inbox)}])
    mw = Multiwatch(["-c", str(path)])
    try:
        mw.wait_watching("box")
        watcher = mw.child_pids()
        path.write_text(_alias_bomb(9))
        os.kill(mw.pid, signal.SIGHUP)
        rejected = mw.wait_for_log(lambda line: line.get("message") == (
            "roster reload rejected; the running fleet is unchanged"))
        assert "more than 200,000 values, the limit" in rejected["error"]
        assert mw.child_pids() == watcher
        assert psutil.Process(mw.pid).memory_info().rss < 200 * 1024 * 1024
    finally:
        assert mw.terminate() == 0
        mw.cleanup()
