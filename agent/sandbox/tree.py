"""Every process of one job, found in a way the job cannot escape, and its memory, read cheaply.

Three sources, used together:
* the job's cgroup (when the agent has one): every member, whatever it did to its session or parent;
* the process tree below the job process, walked through `/proc/<pid>/task/<tid>/children` (no scan of
  all of /proc, so it is cheap enough for every watchdog tick);
* the agent's *subreaper* adoptees: with PR_SET_CHILD_SUBREAPER set on the agent, a job's process that
  double-forks out of its parent is re-parented to the agent instead of init; while a job runs, any
  child of the agent that the agent did not start itself is that job's.
With a PID namespace (see jobside.py) the job's processes cannot leave the tree at all; the other two
sources cover kernels or containers where namespaces are refused.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.sandbox.cgroup import JobCgroup

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def children(pid: int) -> list[int]:
    """Direct children of `pid` (all its threads'), from procfs; [] when it is gone."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        with contextlib.suppress(OSError, ValueError):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return found


def descendants(pid: int, limit: int = 100_000) -> list[int]:
    """`pid` and every process below it (breadth first, bounded)."""
    seen = [pid]
    index = 0
    while index < len(seen) and len(seen) < limit:
        seen += children(seen[index])
        index += 1
    return seen


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (statm), 0 when it is gone or a zombie."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def is_live(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


class JobTree:
    """The processes of one running job.

    `root_pid`: the job process the agent started. `cgroup`: its cgroup, if any. `adopted`: a callable that
    returns the agent's adopted children (subreaper), or None where there is no subreaper.
    """

    def __init__(
        self,
        root_pid: int,
        cgroup: JobCgroup | None = None,
        adopted: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        self.root_pid = root_pid
        self.cgroup = cgroup
        self._adopted = adopted
        self.peak_rss = 0
        self.peak_processes = 0

    def pids(self) -> set[int]:
        found = set(descendants(self.root_pid))
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                found.update(self.cgroup.pids())
        if self._adopted is not None:
            for pid in list(self._adopted()):
                found.update(descendants(pid))
        return found

    def sample(self) -> tuple[int, int]:
        """(RSS of every live process of the job, how many there are); tracks the peaks."""
        pids = [p for p in self.pids() if is_live(p)]
        total = sum(rss_bytes(p) for p in pids)
        self.peak_rss = max(self.peak_rss, total)
        self.peak_processes = max(self.peak_processes, len(pids))
        return total, len(pids)

    def kill(self) -> None:
        """SIGKILL every process of the job: the cgroup at once where there is one, the rest one by one."""
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.kill()
        # Stop the tree from growing first (a stopped process cannot fork), then kill.
        pids = self.pids()
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)

    def alive(self) -> list[int]:
        """Live processes of the job other than zombies."""
        return [p for p in self.pids() if is_live(p)]


class Subreaper:
    """The agent as subreaper: processes orphaned by a job are re-parented to it, found and reaped here."""

    def __init__(self, known: Callable[[], Iterable[int]]) -> None:
        """`known`: the pids of children the agent started itself (job processes, probes)."""
        from agent.sandbox import syscalls

        self.enabled = False
        self.reason = ""
        self._known = known
        if not syscalls.available():
            self.reason = "not Linux: no subreaper"
            return
        try:
            syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
            self.enabled = True
        except OSError as exc:
            self.reason = f"subreaper refused: {exc}"

    def adopted(self) -> list[int]:
        if not self.enabled:
            return []
        known = set(self._known())
        mine = os.getpgid(0)
        out = []
        for pid in children(os.getpid()):
            if pid in known:
                continue
            with contextlib.suppress(OSError):
                # Children the agent starts itself for its own work (the runtime probe) share its group.
                if os.getpgid(pid) == mine:
                    continue
            out.append(pid)
        return out

    def reap(self) -> None:
        """Collect the exit status of adopted processes that ended (they would stay zombies otherwise)."""
        for pid in self.adopted():
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
