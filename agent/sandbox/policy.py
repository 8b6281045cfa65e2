"""What contains a job on this agent: decided once at start from what the OS really allows, and reported.

`prepare` runs the probe (agent.sandbox.probe) in a throwaway process, sets up job cgroups and the
subreaper, and returns a `Sandbox` that says which steps job processes apply and which controls are in
force. The controls go into `GetDeviceInfo` (shown by `edgebench fleet show`) and, per job, into the
result's provenance, built from what the job process reported *before* it opened anything a client sent.

Modes: `auto` uses whatever works and says what does not; `required` refuses to start an agent that cannot
contain a job (no process containment, network, hidden secrets, read-only filesystem or dropped
privileges); `off` applies none of the namespace, filesystem or cgroup steps (the process-group kill, the
subreaper and the RSS watchdog stay: they are the agent's own robustness, not a policy).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import agent
from agent.sandbox import jobside
from agent.sandbox.cgroup import CgroupManager
from agent.types import SandboxControl

MODES = ("auto", "required", "off")
PROBE_TIMEOUT_S = 30.0
#: Processes (not threads) one job may have; the kernel enforces it with pids.max where delegated.
MAX_JOB_PROCESSES = 256
#: Threads count against pids.max too: runtimes start one per core, and a few helpers each.
PIDS_MAX = 4096
WATCH_INTERVAL_MS = 20


class SandboxError(RuntimeError):
    """`--sandbox required` on a machine that cannot contain a job; the message lists what is missing."""


def memory_cgroup_reason(controllers: frozenset[str]) -> str:
    """Why the kernel does not enforce a job's memory limit here ("" when it does)."""
    if "memory" in controllers:
        return ""
    try:
        for line in Path("/proc/cgroups").read_text().splitlines():
            parts = line.split()
            if parts and parts[0] == "memory" and len(parts) >= 4:
                if parts[3] == "0":
                    return (
                        "the kernel has the memory cgroup disabled (Raspberry Pi OS does by default: add "
                        "cgroup_enable=memory to the kernel command line, /boot/firmware/cmdline.txt)"
                    )
                if parts[1] != "0":
                    return "the memory controller is held by a cgroup v1 hierarchy on this machine"
    except OSError:
        pass
    return "the memory controller is not delegated to the agent's cgroup (systemd: Delegate=yes)"


def _probe(scratch: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(enforced, missing) from a real run of every step in a throwaway process."""
    root = str(Path(agent.__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="sandbox-probe-") as tmp:
        try:
            out = subprocess.run(
                [sys.executable, "-m", "agent.sandbox.probe", tmp],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                check=True,
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": root, "PYTHONDONTWRITEBYTECODE": "1"},
            )
            report = json.loads(out.stdout)
            return dict(report["enforced"]), dict(report["missing"])
        except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            why = f"sandbox probe failed: {str(detail).strip()[-300:]}"
            return {}, {name: why for name in jobside.ALL_FEATURES}


@dataclass
class Sandbox:
    mode: str
    #: Steps every job process applies (agent.sandbox.jobside feature names).
    features: frozenset[str] = frozenset()
    enforced: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    cgroups: CgroupManager | None = None
    cgroup_reason: str = ""
    subreaper: str = ""
    max_processes: int = MAX_JOB_PROCESSES

    def controls(self, job: dict[str, str] | None = None, missing: dict[str, str] | None = None) -> tuple[
        SandboxControl, ...
    ]:
        """The controls in force: the agent's (job=None), or one job's from its own sandbox report."""
        on = self.enforced if job is None else job
        off = self.missing if missing is None else missing
        controllers = self.cgroups.controllers if self.cgroups else frozenset()
        mem_why = memory_cgroup_reason(controllers) if self.cgroups else self.cgroup_reason
        containers = [on[jobside.PIDNS]] if jobside.PIDNS in on else []
        if self.cgroups:
            containers.append(self.cgroups.describe())
        if self.subreaper:
            containers.append(self.subreaper)
        fs = [on[k] for k in (jobside.READONLY, jobside.LANDLOCK) if k in on]
        why_not = "; ".join(off.get(k, "") for k in (jobside.READONLY, jobside.LANDLOCK) if off.get(k))
        watchdog = f"RSS of every process of the job checked every {WATCH_INTERVAL_MS} ms"
        rows = [
            ("processes", bool(containers), "; ".join(containers) or "only the process group: none of a PID "
             "namespace, a cgroup or a subreaper is available"),
            ("memory", True, f"kernel limit memory.max + {watchdog}" if "memory" in controllers else
             f"{watchdog} (no kernel limit: {mem_why})"),
            ("process count", True, f"kernel limit pids.max={PIDS_MAX}" if "pids" in controllers else
             f"watchdog: more than {self.max_processes} processes kill the job (--max-job-processes)"),
            ("network", jobside.NETNS in on, on.get(jobside.NETNS) or off.get(jobside.NETNS, "not isolated")),
            ("filesystem", bool(fs), "; ".join(fs) or why_not or "writable wherever the agent's user can write"),
            ("secrets", "secrets" in on, on.get("secrets") or off.get("secrets", "not hidden: no mount namespace")),
            ("privileges", jobside.NOCAPS in on, on.get(jobside.NOCAPS) or off.get(jobside.NOCAPS, "kept")),
            ("environment", True, "minimal: only PATH, locale, library and GPU-selection variables pass"),
        ]
        return tuple(SandboxControl(name, enforced, detail) for name, enforced, detail in rows)

    def lacking(self) -> list[SandboxControl]:
        """The controls that are not in force (what `--sandbox required` refuses to run without)."""
        return [c for c in self.controls() if not c.enforced]

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.close()


def prepare(
    mode: str, scratch: Path, cgroup_root: Path | None, subreaper: str, max_processes: int = MAX_JOB_PROCESSES
) -> Sandbox:
    """Probe and set up the sandbox for `mode`; raises SandboxError when `required` cannot be met."""
    if mode not in MODES:
        raise SandboxError(f"--sandbox must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off" or not sys.platform.startswith("linux"):
        why = "--sandbox off" if mode == "off" else f"no job sandbox on {sys.platform} yet (Linux only)"
        return Sandbox(mode, missing={name: why for name in jobside.ALL_FEATURES}, cgroup_reason=why,
                       subreaper=subreaper, max_processes=max_processes)
    enforced, missing = _probe(scratch)
    features = frozenset(name for name in jobside.ALL_FEATURES if name in enforced)
    cgroups, cgroup_reason = CgroupManager.detect(cgroup_root)
    sandbox = Sandbox(mode, features, enforced, missing, cgroups, cgroup_reason, subreaper, max_processes)
    if mode == "required":
        lacking = sandbox.lacking()
        if lacking:
            sandbox.close()
            raise SandboxError(
                "--sandbox required, but this machine cannot contain a job: "
                + "; ".join(f"{c.name}: {c.detail}" for c in lacking)
                + ". Fix those (see the README's security model) or run with --sandbox auto"
            )
    return sandbox
