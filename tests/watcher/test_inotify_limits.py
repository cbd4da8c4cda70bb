"""The kernel refuses inotify: one line naming the limit and the value needed, then polling.

The limits are hit for real without touching the machine's: each probe runs in a user
namespace of its own (`unshare --user --map-root-user`), whose `user.max_inotify_*` its
root may lower and which bind only inside it (inotify_limits' docstring).  The wording's
arithmetic is checked against a made-up /proc, where every count is known.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from multiwatch import inotify_limits
from multiwatch.inotify_limits import Limit, read_limit, suggested

REPO = Path(__file__).resolve().parents[2]


def _namespaces_work() -> bool:
    try:
        done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c",
                               "echo 0 > /proc/sys/user/max_inotify_instances"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


in_a_user_namespace = pytest.mark.skipif(
    not _namespaces_work(), reason="needs unshare --user and a writable /proc/sys/user")


def in_namespace(limits: dict[str, int], code: str, *args: str,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -c code args` in a new user namespace whose inotify `limits`
    ({"instances": 0, ...}) are set before Python starts."""
    lowered = "; ".join(f"echo {value} > /proc/sys/user/max_inotify_{kind}"
                        for kind, value in limits.items())
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c",
         f'{lowered}; exec "$@"', "sh", sys.executable, "-c", code, *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO)


# A probe: the observer is started as the watcher starts it (the root alone, then a walk
# adding the watches; argv: root, observer mode, the file to write, and optionally a
# directory to create once watching) and replaced as the watcher's loop replaces it; it
# reports on stdout, one JSON object, and its log records go to stderr.
_PROBE = r'''
import json, logging, queue, sys, time
from pathlib import Path
from multiwatch.watcher import inotify_observer, observe

root = Path(sys.argv[1])
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
events = queue.SimpleQueue()
inotify_observer.quiet_refused_watch_warnings()
start = dict(recursive=True, events=events, mode=sys.argv[2], polling_interval=0.1,
             subdirectories_later=True)
try:
    observer = observe.start_observer(str(root), **start)
except OSError as exc:
    print(json.dumps({"raised": exc.strerror}))
    sys.exit(0)
modes = [observe.observer_mode(observer)]
watch = observe.directory_watcher(observer)
if watch is not None:  # as the startup scan does, parents first
    for directory in sorted(p for p in root.rglob("*") if p.is_dir()):
        watch(str(directory))
    if len(sys.argv) > 4:  # mid-run: watchdog's thread watches the new directory
        (root / sys.argv[4]).mkdir()
        deadline = time.monotonic() + 30
        while observe.inotify_refused(observer) is None and time.monotonic() < deadline:
            time.sleep(0.05)
    refused = observe.inotify_refused(observer)
    if refused is not None:  # as the watcher's loop does
        observer.stop()
        observer = observe.start_observer(str(root), **start, refused=refused)
        modes.append(observe.observer_mode(observer))
time.sleep(0.3)  # (the poller's first snapshot is its baseline: written after it)
target = root / sys.argv[3]
target.parent.mkdir(parents=True, exist_ok=True)
target.write_bytes(b"x")
deadline = time.monotonic() + 30
seen = False
while not seen and time.monotonic() < deadline:
    try:
        event = events.get(timeout=0.5)
    except queue.Empty:
        continue
    seen = event.src == sys.argv[3]
observer.stop()
observer.join(5)
print(json.dumps({"modes": modes, "seen": seen}))
'''


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]


@in_a_user_namespace
def test_no_instance_left_one_line_names_the_limit_and_the_watcher_polls(
        tmp_path: Path) -> None:
    """inotify_init refused (EMFILE): one WARNING line names user.max_inotify_instances,
    its value and the value needed; the watcher polls and still reports a new file."""
    done = in_namespace({"instances": 0}, _PROBE, str(tmp_path), "auto", "new.txt")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"modes": ["polling (inotify limit)"], "seen": True}
    [line] = _warnings(done.stderr)
    assert "user.max_inotify_instances=0 reached" in line, line
    assert "polling every 0.1s instead" in line
    assert "needs user.max_inotify_instances >= 1" in line
    assert "sysctl -w user.max_inotify_instances=128" in line


@in_a_user_namespace
def test_out_of_watches_while_walking_one_line_then_polling_finds_unwatched_files(
        tmp_path: Path) -> None:
    """The walk's sixth watch is refused (ENOSPC): the observer gives way, one WARNING line
    names user.max_inotify_watches and the tree's 31 directories, and a file written in a
    directory that never got its watch is reported by polling."""
    for n in range(30):
        (tmp_path / f"d{n:02d}").mkdir()
    done = in_namespace({"watches": 5}, _PROBE, str(tmp_path), "auto", "d29/late.txt")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"modes": ["inotify", "polling (inotify limit)"],
                                       "seen": True}
    [line] = _warnings(done.stderr)
    assert "user.max_inotify_watches=5 reached" in line, line
    assert "this tree has 31 directories" in line
    assert "needs user.max_inotify_watches >= 31" in line


@in_a_user_namespace
def test_a_new_directory_refused_mid_run_falls_back_and_loses_nothing(tmp_path: Path) -> None:
    """All watches fit at start; a directory created later is refused its watch: the
    observer gives way, and a file in that directory is reported by polling."""
    for n in range(3):
        (tmp_path / f"d{n}").mkdir()
    done = in_namespace({"watches": 4}, _PROBE, str(tmp_path), "auto", "new/deeper/file.txt",
                        "new")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"modes": ["inotify", "polling (inotify limit)"],
                                       "seen": True}
    [line] = _warnings(done.stderr)
    assert "user.max_inotify_watches=4 reached (this tree has 5 directories" in line, line


@in_a_user_namespace
def test_observer_inotify_raises_a_clear_error_instead_of_polling(tmp_path: Path) -> None:
    """observer: inotify never degrades: the error it raises names the limit."""
    done = in_namespace({"instances": 0}, _PROBE, str(tmp_path), "inotify", "x")
    assert done.returncode == 0, done.stderr
    raised = json.loads(done.stdout)["raised"]
    assert "user.max_inotify_instances=0 reached" in raised and "not watching" in raised


_RETRY_PROBE = r'''
import json, logging, queue, sys, time
from pathlib import Path
from multiwatch.watcher import inotify_observer, observe

root = Path(sys.argv[1])
inotify_observer.UNWATCHED_RESCAN_SECONDS = 0.2
logging.basicConfig(level=sys.argv[2], format="%(levelname)s %(message)s")  # the log_level
events = queue.SimpleQueue()
inotify_observer.quiet_refused_watch_warnings()
observer = observe.start_observer(str(root), recursive=True, events=events, mode="inotify",
                                  polling_interval=0.1, subdirectories_later=True)
watch = observe.directory_watcher(observer)
for name in ("a", "b", "c"):
    watch(str(root / name))
refused = observe.inotify_refused(observer)  # (observer: inotify never gives way)
Path("/proc/sys/user/max_inotify_watches").write_text("100")  # watches free again
deadline = time.monotonic() + 30
while len(observer.unwatched) and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.3)
(root / "c" / "late.txt").write_bytes(b"x")
seen = False
while not seen and time.monotonic() < deadline:
    try:
        seen = events.get(timeout=0.5).src == "c/late.txt"
    except queue.Empty:
        pass
observer.stop()
print(json.dumps({"gave_way": refused is not None, "mode": observe.observer_mode(observer),
                  "seen": seen}))
'''


@in_a_user_namespace
@pytest.mark.parametrize("level", ["INFO", "ERROR"])
def test_observer_inotify_says_once_then_retries_the_refused_watches(tmp_path: Path,
                                                                      level: str) -> None:
    """observer: inotify, out of watches: one ERROR line naming the limit, no polling, and
    once watches are free again the refused directories are watched and report files, at
    any log level (lost events never rest on log records)."""
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    done = in_namespace({"watches": 2}, _RETRY_PROBE, str(tmp_path), level)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"gave_way": False, "mode": "inotify", "seen": True}
    [line] = _warnings(done.stderr)
    assert line.startswith("ERROR") and "not watched" in line, line
    assert "raise user.max_inotify_watches=2" in line


# ---------------------------------------------------------------- the wording, exactly


def _fake_proc(tmp_path: Path, processes: dict[int, tuple[int, list[int]]],
               watchers: tuple[int, ...] = ()) -> Path:
    """A /proc with `processes` {pid: (ppid, [watches of each inotify descriptor])}, each
    with one descriptor that is not inotify, `watchers` titled as multiwatch's; all owned
    by this user."""
    proc = tmp_path / "proc"
    for pid, (ppid, instances) in processes.items():
        base = proc / str(pid)
        (base / "fd").mkdir(parents=True)
        (base / "fdinfo").mkdir()
        (base / "stat").write_text(f"{pid} (multi watch) S {ppid} 1 1 0\n")
        (base / "fd" / "0").symlink_to("/dev/null")
        (base / "cmdline").write_bytes(b"multiwatch: watcher w%d\0" % pid if pid in watchers
                                       else b"python3\0-c\0")
        for fd, watches in enumerate(instances, start=3):
            (base / "fd" / str(fd)).symlink_to("anon_inode:inotify")
            (base / "fdinfo" / str(fd)).write_text(
                "pos:\t0\nflags:\t02004000\n"
                + "".join(f"inotify wd:{w + 1} ino:1 sdev:1 mask:0 ignored_mask:0\n"
                          for w in range(watches)))
    return proc


def _fake_sys(tmp_path: Path, **values: int) -> Path:
    """A /proc/sys with the given limits (max_user_instances=4 → fs/inotify/...)."""
    sys_dir = tmp_path / "sys"
    for name, value in values.items():
        path = (sys_dir / "fs" / "inotify" / name if name.startswith("max_user")
                else sys_dir / "user" / name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    return sys_dir


def test_the_smaller_limit_binds_and_a_tie_names_the_hosts_sysctl(tmp_path: Path) -> None:
    """fs.inotify.max_user_* against the namespace's user.max_inotify_*: the smaller one
    is named; equal (the initial namespace), the host's sysctl is."""
    tie = _fake_sys(tmp_path / "a", max_user_watches=8192, max_inotify_watches=8192)
    assert read_limit("watches", str(tie)) == Limit("watches", "fs.inotify.max_user_watches",
                                                    8192)
    lower = _fake_sys(tmp_path / "b", max_user_instances=128, max_inotify_instances=16)
    assert read_limit("instances", str(lower)) == Limit(
        "instances", "user.max_inotify_instances", 16)
    assert read_limit("instances", str(tmp_path / "none")) is None
    assert (suggested("instances", 201), suggested("watches", 70_000)) == (256, 131_072)


def test_an_instance_refused_counts_the_watchers_beside_it(tmp_path: Path) -> None:
    """fs.inotify.max_user_instances=4, held by two of the three other watchers of this
    supervisor and by two descriptors of another program: the fleet needs 3 + 1 + 2 = 6
    (a process beside it that is no watcher counts for nothing)."""
    me = os.getppid()  # the watchers sharing this one's parent are "beside" it
    proc = _fake_proc(tmp_path, {101: (me, [3]), 102: (me, [0]), 103: (me, []),
                                 104: (me, []), os.getpid(): (me, []), 200: (1, [5, 5])},
                      watchers=(101, 102, 103, os.getpid()))
    line = inotify_limits.instance_refused(
        OSError(errno.EMFILE, "Too many open files"), polling="polling every 1s",
        proc=str(proc), proc_sys=str(_fake_sys(tmp_path, max_user_instances=4)))
    assert line == (
        "inotify refused an instance: fs.inotify.max_user_instances=4 reached (this user "
        "holds 4: 2 in the 3 watchers beside this one, 2 elsewhere); polling every 1s "
        "instead; needs fs.inotify.max_user_instances >= 6: as root on the host, sysctl -w "
        "fs.inotify.max_user_instances=128 (to keep it: README, Deploying it)")


def test_a_watch_refused_counts_the_tree_and_what_others_hold(tmp_path: Path) -> None:
    """fs.inotify.max_user_watches=12: a tree of 21 directories plus 10 watches held by
    another process needs 31; this watcher's own 7 are not counted (it gives them back)."""
    tree = tmp_path / "tree"
    for n in range(20):
        (tree / f"d{n}").mkdir(parents=True)
    (tree / "file.txt").write_bytes(b"x")
    proc = _fake_proc(tmp_path, {os.getpid(): (1, [7]), 300: (1, [10])})
    line = inotify_limits.watch_refused(
        OSError(errno.ENOSPC, "No space left on device"), str(tree), recursive=True,
        polling="polling every 1s", proc=str(proc),
        proc_sys=str(_fake_sys(tmp_path, max_user_watches=12)))
    assert "fs.inotify.max_user_watches=12 reached (this tree has 21 directories" in line
    assert "other processes hold 10)" in line
    assert "needs fs.inotify.max_user_watches >= 31: as root on the host, sysctl -w " \
           "fs.inotify.max_user_watches=65536" in line


def test_emfile_from_the_descriptor_limit_names_rlimit_nofile_not_the_sysctl() -> None:
    """inotify_init's EMFILE can be the process's open-file limit: then that is named."""
    code = (
        "import errno, os, resource\n"
        "from multiwatch import inotify_limits\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (32, resource.getrlimit("
        "resource.RLIMIT_NOFILE)[1]))\n"
        "held = []\n"
        "try:\n"
        "    while True: held.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError: pass\n"
        "os.close(held.pop())  # room for the /proc/self/fd listing\n"
        "print(inotify_limits.instance_refused(OSError(errno.EMFILE, 'x'), polling='p'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "RLIMIT_NOFILE" in done.stdout and "fs.inotify" not in done.stdout, done.stdout
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 32  # (the probe's own, not ours)
