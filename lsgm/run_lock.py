"""One writer per run folder: a lock file `<run>/.lock` holding the owner's pid, host, start time and SLURM job id.

`RunLock(run_dir).acquire()` creates the file atomically (O_CREAT | O_EXCL). A lock already there is taken over only
when it is stale: written on this host by a process that no longer exists, or by an earlier run of the same SLURM
job (a requeued job resumes its own folder, possibly on another node). Otherwise the second run stops at once
with `RunFolderBusy`, before it has read or written anything in the folder.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"
HALF_WRITTEN_SECONDS = 2.0  # an unreadable lock younger than this is being written, older is debris


class RunFolderBusy(RuntimeError):
    """Another live process owns the run folder."""


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


class RunLock:
    """The lock of one run folder (see the module docstring); a context manager."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3),
                      "job": os.environ.get("SLURM_JOB_ID")}
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one; raise RunFolderBusy if a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not self._create():
            holder = self._read()
            if holder is None and self._age() < HALF_WRITTEN_SECONDS:  # its writer is between create and write
                time.sleep(0.05)
                continue
            if holder is not None and not self._stale(holder):
                raise RunFolderBusy(
                    f"run folder {self.path.parent} is in use by pid {holder['pid']} on {holder['host']} (since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['started']))}); wait for that run "
                    f"to end or give this one another folder (hydra.run.dir=...); if that run is gone, delete "
                    f"{self.path}")
            self.path.unlink(missing_ok=True)  # stale or unreadable: the next _create decides between racers
        self.held = True
        return self

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if self.held and (self._read() or {}).get("pid") == self.owner["pid"]:
            self.path.unlink(missing_ok=True)
        self.held = False

    def _create(self) -> bool:
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as stream:
            json.dump(self.owner, stream)
        return True

    def _read(self) -> dict | None:
        """The holder's record, or None for a missing or half-written file."""
        try:
            holder = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return holder if {"pid", "host", "started"} <= set(holder) else None

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _stale(self, holder: dict) -> bool:
        """The holder is gone: a dead process on this host, or an earlier run of this SLURM job (requeued, possibly
        on another node)."""
        same_job = holder.get("job") is not None and holder.get("job") == self.owner["job"]
        return same_job or (holder["host"] == self.owner["host"] and not process_alive(int(holder["pid"])))

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exception) -> None:
        self.release()
