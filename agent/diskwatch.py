"""Whether the agent can still write its work directory, checked cheaply and often.

The agent cannot work when the filesystem under its folders is full or read-only, or when writing there
fails (an I/O error on a dying SD card). `DiskWatch` checks every `interval_s` with `statvfs` only (no
writes: flash storage wears out), and, after a write failed somewhere in the agent (`note_failure`), also
by writing and deleting a small probe file in each folder until that works again. Each change is passed
to `on_change` (the problem in words, or None once it is gone), which turns the health status
NOT_SERVING and back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: Below this much free space the agent cannot keep a result or prepare a job folder.
MIN_FREE_BYTES = 1 * 2**20
PROBE_BYTES = 4096
CHECK_INTERVAL_S = 2.0


def disk_problem(folders: Sequence[Path], *, probe: bool, min_free_bytes: int = MIN_FREE_BYTES) -> str | None:
    """Why the agent cannot write `folders`, or None. `probe` also writes and deletes a small file in each."""
    for folder in folders:
        try:
            st = os.statvfs(folder)
        except OSError as exc:
            return f"cannot inspect {folder}: {exc.strerror or exc}"
        if st.f_flag & os.ST_RDONLY:
            return f"{folder} is on a read-only filesystem"
        free = st.f_bavail * st.f_frsize
        if free < min_free_bytes:
            return f"only {free // 1024} KiB free under {folder} (the agent needs {min_free_bytes // 1024} KiB)"
        if probe:
            path = folder / f".health-probe-{os.getpid()}"
            try:
                with path.open("wb") as f:
                    f.write(b"\0" * PROBE_BYTES)
                path.unlink()
            except OSError as exc:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
                return f"cannot write under {folder}: {exc.strerror or exc}"
    return None


class DiskWatch:
    """Checks `folders` in a daemon thread and reports each change of their state to `on_change`."""

    def __init__(
        self,
        folders: Sequence[Path],
        on_change: Callable[[str | None], None],
        *,
        interval_s: float = CHECK_INTERVAL_S,
        min_free_bytes: int = MIN_FREE_BYTES,
    ) -> None:
        self._folders = tuple(folders)
        self._on_change = on_change
        self._interval_s = interval_s
        self._min_free = min_free_bytes
        self._suspect = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.problem = disk_problem(self._folders, probe=False, min_free_bytes=min_free_bytes)
        if self.problem:
            log.warning("the agent cannot write its work directory: %s; health is NOT_SERVING", self.problem)
        self._thread = threading.Thread(target=self._loop, name="edgebench-diskwatch", daemon=True)
        self._thread.start()

    def note_failure(self, exc: OSError) -> None:
        """A write failed somewhere: probe for real at the next check, which happens now. Cheap, lock-free."""
        self._suspect = True
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def check(self) -> str | None:
        """Check now, report a change, and return the current problem (None = healthy)."""
        suspect = self._suspect
        problem = disk_problem(self._folders, probe=suspect, min_free_bytes=self._min_free)
        if suspect and problem is None:
            self._suspect = False
        if problem != self.problem:
            if problem:
                log.warning("the agent cannot write its work directory: %s; health is NOT_SERVING", problem)
            else:
                log.warning("the agent's work directory is writable again; health is SERVING")
            self.problem = problem
            self._on_change(problem)
        return problem

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check()
            except Exception:  # the watch must outlive anything odd a filesystem does
                log.exception("disk check failed")
