"""The sandbox as the job process builds it around itself, before it touches anything a client sent.

Two steps, both run by trusted code (ours) before the job's model is opened:

1. `enter` (first thing `agent.child` does, while the interpreter is still single-threaded): new user (when
   not root), mount, network and PID namespaces. With a PID namespace the process forks: the original
   becomes a *keeper* that only waits and passes the exit status on to the agent, and the fork is PID 1 of
   the namespace and runs the job. Whatever the job starts (double-forked, `setsid`, daemonised) stays in
   that namespace, re-parents to the job's own PID 1, and is killed by the kernel when PID 1 exits. No job
   process can signal or trace anything outside the namespace.
2. `confine` (after the job envelope arrived, before the model is read): inside the private mount
   namespace, the agent's work directory is covered by an empty tmpfs except the job's own folder, secret
   files (token, TLS key, config) are covered by /dev/null, every mount becomes read-only except the job
   folder, the model/companion/dataset files inside it are read-only too (so nothing is written through
   their hard links into the agent's verified blobs), /tmp and /dev/shm are fresh private tmpfs; Landlock
   (where the kernel has it) restricts writes to the same folders as a second layer; finally every
   capability is dropped with no_new_privs set, so none of this can be undone.

Every step that fails is recorded with the OS's reason instead of aborting: the agent decides beforehand
(from its start-up probe, `agent.sandbox.probe`) which steps to ask for, and `--sandbox required` refuses
to run where any is missing. The keeper and PID 1 share the agent's process group; the agent also tracks
them through a cgroup or its subreaper, so a PID 1 that leaves the group is still found.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from agent.sandbox import syscalls as sc

#: Feature names, as passed from the agent to `python -m agent.child --sandbox a,b,c`.
USERNS, NETNS, MOUNTNS, PIDNS, READONLY, LANDLOCK, NOCAPS = (
    "userns",
    "netns",
    "mountns",
    "pidns",
    "readonly",
    "landlock",
    "nocaps",
)
ALL_FEATURES = (USERNS, NETNS, MOUNTNS, PIDNS, READONLY, LANDLOCK, NOCAPS)
TMPFS_SIZE = "size=256m"


@dataclass
class Confinement:
    """What is in force for this job process: feature -> how, or why not (for the agent's report)."""

    enforced: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def ok(self, name: str, how: str) -> None:
        self.enforced[name] = how

    def fail(self, name: str, why: str) -> None:
        self.missing[name] = why


def parse_features(text: str) -> frozenset[str]:
    return frozenset(f for f in text.split(",") if f in ALL_FEATURES)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux; elsewhere nothing: the agent kills its group)."""
    if sc.available():
        with contextlib.suppress(OSError):
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)


def _user_namespace() -> None:
    """A user namespace mapping this uid/gid to themselves: capabilities inside it (for the mounts and the
    other namespaces) without any privilege over the host's files."""
    uid, gid = os.getuid(), os.getgid()
    sc.unshare(sc.CLONE_NEWUSER)
    with contextlib.suppress(FileNotFoundError):
        _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")


def enter(features: frozenset[str], state: Confinement, close_in_keeper: tuple[int, ...] = ()) -> None:
    """Enter the namespaces asked for; with a PID namespace, fork and never return in the keeper.

    Must run before any thread exists (CLONE_NEWUSER refuses multi-threaded callers), i.e. before numpy or a
    runtime is imported. `close_in_keeper`: descriptors only the job needs (its event pipe, stdin).
    """
    if not features or not sc.available():
        return
    if USERNS in features and os.getuid() != 0:
        try:
            _user_namespace()
            state.ok(USERNS, "own user namespace (capabilities only over the job's own namespaces)")
        except OSError as exc:
            state.fail(USERNS, f"user namespace refused: {exc}")
            features = features - {NETNS, MOUNTNS, PIDNS}
            for name in (NETNS, MOUNTNS, PIDNS):
                state.fail(name, "needs a user namespace when the agent is not root, which was refused")
    for name, flag in ((NETNS, sc.CLONE_NEWNET), (MOUNTNS, sc.CLONE_NEWNS), (PIDNS, sc.CLONE_NEWPID)):
        if name not in features:
            continue
        try:
            sc.unshare(flag)
        except OSError as exc:
            state.fail(name, f"{name} refused by the kernel: {exc}")
            continue
        state.ok(
            name,
            {
                NETNS: "own network namespace: no interface but a down loopback",
                MOUNTNS: "own mount namespace",
                PIDNS: "own PID namespace: the job's processes cannot leave it, and die with it",
            }[name],
        )
    if PIDNS in state.enforced:
        _fork_keeper(close_in_keeper)


def _fork_keeper(close_in_keeper: tuple[int, ...]) -> None:
    """keeper (outside the PID namespace) -> init (its PID 1) -> the job (PID 2); returns in the job only.

    The job is not PID 1 itself: the kernel ignores signals a namespace's init sends itself, so an
    `abort()` in a runtime would not end it as a crash. init only reaps (the job's orphans re-parent to
    it) and, when the job ends, passes its exit status to the keeper through a pipe; the keeper then ends
    the same way, for the agent to report.
    """
    status_r, status_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(status_r)
        die_with_parent()
        job = os.fork()
        if job == 0:
            os.close(status_w)
            die_with_parent()
            return
        _close(close_in_keeper)
        _init(job, status_w)
    os.close(status_w)
    _close(close_in_keeper)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    status = _wait(init)
    report = b""
    with contextlib.suppress(OSError):
        report = os.read(status_r, 64)
    if report:
        status = int(report)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        # Die from the same signal, so the agent reports a crash as the crash it was.
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _close(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


def _init(job: int, status_w: int) -> None:
    """PID 1 of the job's namespace: reap every process, report the job's status, exit (the kernel then
    kills whatever is left in the namespace)."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(1)
        if pid == job:
            with contextlib.suppress(OSError):
                os.write(status_w, str(status).encode())
            os._exit(0)


def _cover_file(path: str) -> None:
    sc.mount("/dev/null", path, None, sc.MS_BIND)


def _cover_dir(path: str) -> None:
    sc.mount("tmpfs", path, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_RDONLY, "size=4k,mode=0555")


def _bind_readonly(path: str) -> None:
    sc.mount(path, path, None, sc.MS_BIND)
    sc.mount(None, path, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV)


def _writable(path: str) -> None:
    """`path` becomes its own mount, writable (a bind inherits read-only, so remount it without MS_RDONLY)."""
    sc.mount(path, path, None, sc.MS_BIND)
    sc.mount(None, path, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_NOSUID | sc.MS_NODEV)


def _hide_workdir(workdir: str, keep: list[str]) -> None:
    """Cover the agent's work directory with an empty tmpfs, then put the folders in `keep` back at their
    paths (the job folder, shared caches)."""
    fds = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)) for path in keep if _under(path, workdir)]
    try:
        sc.mount("tmpfs", workdir, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "size=64k,mode=0755")
        for path, fd in fds:
            os.makedirs(path, exist_ok=True)
            sc.mount(f"/proc/self/fd/{fd}", path, None, sc.MS_BIND)
    finally:
        for _, fd in fds:
            os.close(fd)


def _under(path: str, folder: str) -> bool:
    return Path(path).is_relative_to(folder)


def confine(
    features: frozenset[str],
    state: Confinement,
    *,
    job_folder: Path,
    workdir: Path | None,
    secrets: tuple[Path, ...],
    readonly_files: tuple[Path, ...],
    shared_dirs: tuple[Path, ...] = (),
) -> None:
    """Filesystem, Landlock and capability steps (see the module docstring). Records each outcome in
    `state`; never raises for an OS refusal. `shared_dirs`: folders of the work directory that jobs may
    write besides their own (caches that outlive a job, e.g. built TensorRT engines)."""
    folder = str(job_folder)
    keep = [folder, *(str(d) for d in shared_dirs if d.is_dir())]
    if MOUNTNS in state.enforced:
        _confine_mounts(features, state, keep, workdir, secrets, readonly_files)
    elif MOUNTNS in features:
        state.fail("secrets", "the agent's files are not hidden: no mount namespace")
    if LANDLOCK in features:
        writable = [(path, True) for path in keep] + [("/dev", False)]
        writable += [(p, True) for p in state.enforced.get("private-tmp", "").split() if p.startswith("/")]
        try:
            landlock_writes(writable)
            state.ok(LANDLOCK, f"Landlock ABI {sc.landlock_abi()}: writes only in the job folder")
        except OSError as exc:
            state.fail(LANDLOCK, f"Landlock not applied: {exc}")
    if NOCAPS in features:
        try:
            sc.drop_all_capabilities()
            state.ok(NOCAPS, "every capability dropped, no_new_privs set")
        except OSError as exc:
            state.fail(NOCAPS, f"capabilities not dropped: {exc}")
    os.chdir(folder)  # re-enter: the old working directory may lie under a covered mount


def landlock_writes(writable: list[tuple[str, bool]]) -> None:
    """Landlock: writes only beneath the given (path, whole folder?) entries; device files keep write
    access (GPUs, /dev/null) but nothing can be created in /dev."""
    sc.landlock_writes_only_beneath(writable)


def _confine_mounts(
    features: frozenset[str],
    state: Confinement,
    keep: list[str],
    workdir: Path | None,
    secrets: tuple[Path, ...],
    readonly_files: tuple[Path, ...],
) -> None:
    try:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)  # nothing we mount reaches the host
        hidden = 0
        for secret in secrets:
            if workdir is not None and secret.is_relative_to(workdir):
                continue  # covered with the work directory
            if secret.is_file():
                _cover_file(str(secret))
                hidden += 1
            elif secret.is_dir():
                _cover_dir(str(secret))
                hidden += 1
        if workdir is not None:
            _hide_workdir(str(workdir), keep)
        state.ok("secrets", f"agent work directory (artifacts, results, token) and {hidden} other secret file(s) "
                 "hidden")
    except OSError as exc:
        state.fail("secrets", f"could not hide the agent's files: {exc}")
        return
    if READONLY in features:
        try:
            sc.make_tree_readonly("/")
            for path in keep:
                _writable(path)
            state.ok(READONLY, "every mount read-only but the job folder")
        except OSError as exc:
            state.fail(READONLY, f"filesystem left writable: {exc}")
    private = []
    for path in ("/dev/shm", "/tmp"):
        # Not where a kept folder lies: covering it would hide the job folder itself.
        if os.path.isdir(path) and not any(_under(k, path) for k in keep):
            try:
                sc.mount("tmpfs", path, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"{TMPFS_SIZE},mode=1777")
                private.append(path)
            except OSError as exc:
                state.fail("private-tmp", f"{path} not private: {exc}")
    if private:
        state.ok("private-tmp", " ".join(private))
    try:
        for file in readonly_files:
            if file.exists():
                _bind_readonly(str(file))
        state.ok("inputs-readonly", "model, companions and dataset read-only")
    except OSError as exc:
        state.fail("inputs-readonly", f"inputs writable: {exc}")
