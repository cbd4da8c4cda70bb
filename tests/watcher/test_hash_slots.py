"""Hash slots: a cap on concurrent hashing shared by every process using one state_dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from multiwatch.watcher.hash_slots import HashSlots

# Takes every slot of a HashSlots(directory, count), says so, then sleeps until killed.
_HOLDER = """
import sys, time
from multiwatch.watcher.hash_slots import HashSlots
slots = HashSlots(sys.argv[1], int(sys.argv[2]))
held = [slots.try_acquire() for _ in range(int(sys.argv[2]))]
assert all(held), held
print("holding", flush=True)
time.sleep(600)
"""


def _holder(directory: Path, count: int) -> subprocess.Popen[str]:
    """Another process holding all `count` slots, once it has said so."""
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(directory), str(count)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "holding"
    return process


def test_no_more_than_count_hashes_hold_a_slot_at_once(tmp_path: Path) -> None:
    """With two slots, a third hash waits until one of the first two releases its slot."""
    slots = HashSlots(str(tmp_path / "slots"), 2)
    first, second = slots.try_acquire(), slots.try_acquire()
    assert first is not None and second is not None
    assert {first.index, second.index} == {0, 1}
    assert slots.try_acquire() is None
    first.release()
    third = slots.try_acquire()
    assert third is not None and third.index == first.index
    second.release()
    third.release()


def test_slots_are_shared_with_other_processes(tmp_path: Path) -> None:
    """A slot held by another process (another watcher) is not handed out here."""
    directory = tmp_path / "slots"
    holder = _holder(directory, 1)
    try:
        assert HashSlots(str(directory), 1).try_acquire() is None
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_slot_of_a_killed_process_is_freed(tmp_path: Path) -> None:
    """kill -9 of a process holding every slot frees them: a waiting hash gets one."""
    directory = tmp_path / "slots"
    holder = _holder(directory, 2)
    slots = HashSlots(str(directory), 2)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire(threading.Event())))
    try:
        assert slots.try_acquire() is None
        waiter.start()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        waiter.join(timeout=10)
        assert not waiter.is_alive(), "no slot was freed by the kill"
        assert got and got[0] is not None
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)


def test_waiting_for_a_slot_stops_when_cancelled(tmp_path: Path) -> None:
    """A hash that is no longer wanted stops waiting for a slot and takes none."""
    slots = HashSlots(str(tmp_path / "slots"), 1)
    held = slots.try_acquire()
    assert held is not None
    cancelled = threading.Event()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire(cancelled)))
    waiter.start()
    cancelled.set()
    waiter.join(timeout=5)
    assert not waiter.is_alive() and got == [None]
    held.release()
