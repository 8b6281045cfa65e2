"""One cgroup v2 per job, under a folder the agent may write (its own cgroup, or a delegated `--cgroup-root`).

A cgroup is the one container a job cannot leave: `setsid`, double forks and daemons stay in it. The
agent uses it to find every process of the job (for the memory watchdog), to kill them all at once
(`cgroup.kill`, Linux 5.14+; else SIGKILL to each member until none is left), and, where the controllers
are delegated to it, to have the kernel enforce `memory.max` (with `memory.oom.group`, so a breach kills
the whole job) and `pids.max` (fork bombs). Which of these are in force is reported per job.

Layout: `<root>/edgebench-<agent pid>/job-<n>`. cgroup v2's "no internal processes" rule means controllers
can only be enabled for children of a cgroup that holds no process itself; when the agent runs in the
root it may use it directly, otherwise (a systemd service with `Delegate=yes`) it first moves itself into
`<root>/agent` as systemd's documentation asks of delegated services. Folders of agents that died are
removed at start-up.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids")


def _own_cgroup() -> tuple[Path | None, str]:
    """The cgroup v2 folder of this process, or (None, why not)."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError as exc:
        return None, f"cannot read /proc ({exc.strerror})"
    mount_point = None
    for line in mounts:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            mount_point = left.split()[4]
            break
    if mount_point is None:
        return None, "no cgroup v2 filesystem is mounted"
    relative = next((ln[3:] for ln in lines if ln.startswith("0::")), None)
    if relative is None:
        return None, "this process is in no cgroup v2 hierarchy"
    return Path(mount_point) / relative.lstrip("/"), ""


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)


@dataclass
class JobCgroup:
    path: Path
    controllers: frozenset[str]

    def add(self, pid: int) -> None:
        _write(self.path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        return [int(p) for p in _read(self.path / "cgroup.procs").split()]

    def limit(self, memory_bytes: int, max_processes: int) -> list[str]:
        """Set the kernel's limits the controllers allow; returns what was set."""
        done = []
        if memory_bytes and "memory" in self.controllers:
            _write(self.path / "memory.max", str(memory_bytes))
            with contextlib.suppress(OSError):
                _write(self.path / "memory.swap.max", "0")  # swapping would hide the footprint and the time
            with contextlib.suppress(OSError):
                _write(self.path / "memory.oom.group", "1")
            done.append("memory.max")
        if max_processes and "pids" in self.controllers:
            _write(self.path / "pids.max", str(max_processes))
            done.append("pids.max")
        return done

    def oom_kills(self) -> int:
        for line in _read(self.path / "memory.events").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def kill(self) -> None:
        """Kill every process in the cgroup (the kernel's cgroup.kill where it exists)."""
        try:
            _write(self.path / "cgroup.kill", "1")
            return
        except OSError:
            pass
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, timeout_s: float = 5.0) -> bool:
        """Kill what is left and remove the folder; False if processes outlived the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.kill()
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    return False
            time.sleep(0.01)


class CgroupManager:
    """Creates and removes the agent's job cgroups. Construct with `detect`."""

    def __init__(self, base: Path, controllers: frozenset[str]) -> None:
        self.base = base
        self.controllers = controllers
        self._counter = itertools.count()

    @classmethod
    def detect(cls, root: Path | None = None) -> tuple[CgroupManager | None, str]:
        """A manager for job cgroups below `root` (default: this process's own cgroup), or (None, why not)."""
        if root is None:
            root, why = _own_cgroup()
            if root is None:
                return None, why
        if not (root / "cgroup.procs").exists():
            return None, f"{root} is not a cgroup v2 folder"
        _remove_stale(root)
        base = root / f"edgebench-{os.getpid()}"
        try:
            base.mkdir(exist_ok=True)
        except OSError as exc:
            return None, f"cannot create job cgroups in {root} ({exc.strerror}); give the agent a delegated cgroup"
        controllers = _enable_controllers(root, base)
        return cls(base, controllers), ""

    def create(self) -> JobCgroup:
        path = self.base / f"job-{next(self._counter)}"
        path.mkdir()
        return JobCgroup(path, self.controllers)

    def close(self) -> None:
        for child in self.base.glob("job-*"):
            JobCgroup(child, self.controllers).remove(timeout_s=1.0)
        with contextlib.suppress(OSError):
            self.base.rmdir()

    def describe(self) -> str:
        kinds = ", ".join(sorted(self.controllers)) or "none"
        return f"cgroup v2 {self.base} (controllers: {kinds})"


def _enable_controllers(root: Path, base: Path) -> frozenset[str]:
    """Enable memory and pids for the job cgroups where the hierarchy allows; the set that worked."""
    available = set(_read(root / "cgroup.controllers").split()) & set(CONTROLLERS)
    if not available:
        return frozenset()
    wanted = " ".join(f"+{c}" for c in sorted(available))
    try:
        _write(root / "cgroup.subtree_control", wanted)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            return frozenset()
        # Our own cgroup holds processes (ours): move them into a leaf, then enable (systemd's delegation rule).
        leaf = root / "agent"
        try:
            leaf.mkdir(exist_ok=True)
            for pid in _read(root / "cgroup.procs").split():
                with contextlib.suppress(ProcessLookupError):
                    _write(leaf / "cgroup.procs", pid)
            _write(root / "cgroup.subtree_control", wanted)
        except OSError:
            return frozenset()
    try:
        _write(base / "cgroup.subtree_control", wanted)
    except OSError:
        return frozenset()
    return frozenset(set(_read(base / "cgroup.subtree_control").split()) & available)


def _remove_stale(root: Path) -> None:
    """Folders left by agents that died (their pid no longer exists): kill what is in them and remove them."""
    for folder in root.glob("edgebench-*"):
        pid = folder.name.removeprefix("edgebench-")
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        for job in folder.glob("job-*"):
            JobCgroup(job, frozenset()).remove(timeout_s=1.0)
        with contextlib.suppress(OSError):
            folder.rmdir()
