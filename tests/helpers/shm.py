"""The ``/dev/shm`` leak check, counting only what this test's own processes created.

A shared CI machine runs other programs beside the suite (other test runs, joblib's loky workers),
and they create and remove ``/dev/shm`` entries of their own at any time. A new entry is blamed on
the test only if nothing shows it belongs to another program:

* it is still there after a second look (torch's ``file_descriptor`` sharing creates and unlinks
  its entries at once: one seen in flight is not a leak);
* it is a file (this project never creates directories there; joblib's memmapping folders are)
  and not a named semaphore (``sem.*``: multiprocessing's and loky's locks and queues; weightsync
  creates none, their creator cannot be told from the name, and multiprocessing's resource
  tracker unlinks them when their program ends);
* no live process of another session holds it open or mapped, and a ``torch_<pid>_...`` name does
  not embed the pid of a live process of another session. Every process a test starts (spawned
  workers, ``run.py`` subprocesses and their workers) shares the test process's session. Under
  pytest-xdist each worker is a session of its own (``tests/conftest.py``), so the tests running
  beside this one on other workers count as other programs.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator

SHM_DIR = "/dev/shm"
_TORCH_PID = re.compile(r"^torch_(\d+)_")


def shm_entries() -> set[str]:
    return set(os.listdir(SHM_DIR)) if os.path.isdir(SHM_DIR) else set()


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[3])  # field 6: session id
    except (OSError, ValueError, IndexError):
        return None  # gone, or not ours to read


def _held_by_other_sessions(names: set[str]) -> set[str]:
    """The entries among ``names`` that a live process outside this session has open or mapped."""
    ours = os.getsid(0)
    held: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        session = _session_of(int(pid))
        if session is None or session == ours:
            continue
        paths: set[str] = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as maps:
            paths.update(line.split(maxsplit=5)[-1].strip() for line in maps if SHM_DIR in line)
        held |= {name for name in names if f"{SHM_DIR}/{name}" in paths}
    return held


def made_by_another_program(name: str) -> bool:
    """Whether the entry's name or type says another program made it."""
    path = os.path.join(SHM_DIR, name)
    if os.path.isdir(path) or name.startswith("sem."):
        return True
    match = _TORCH_PID.match(name)
    if match is None:
        return False
    session = _session_of(int(match.group(1)))
    return session is not None and session != os.getsid(0)


def leaked_since(before: set[str]) -> set[str]:
    """Entries created since ``before`` that are still there and belong to no other program."""
    new = shm_entries() - before
    if not new:
        return set()
    time.sleep(0.5)  # a second look: entries in flight are gone by now
    new &= shm_entries()
    new = {name for name in new if not made_by_another_program(name)}
    if new:
        new -= _held_by_other_sessions(new)
    return new & shm_entries()  # removed meanwhile: in flight after all


@contextlib.contextmanager
def no_leaked_shared_memory() -> Iterator[None]:
    """Fail (AssertionError) if the block leaves a ``/dev/shm`` entry of its own behind."""
    before = shm_entries()
    yield
    leaked = leaked_since(before)
    assert not leaked, f"shared-memory segments left behind in {SHM_DIR}: {sorted(leaked)}"
