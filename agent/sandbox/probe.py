"""Which sandbox steps this machine allows: tried for real, once, in a throwaway process at agent start.

`python -m agent.sandbox.probe FOLDER` builds a miniature job folder below FOLDER, enters every namespace
and applies every confinement step exactly as a job process would (agent.sandbox.jobside), then checks
the result from inside: a hidden file reads as empty, a write outside the job folder fails, a write inside
works, no network is reachable. It prints one JSON object: {"enforced": {step: how}, "missing": {step:
why}, "checks": {check: passed}}. A step counts as available only if it was applied and its check passed;
the agent asks job processes for exactly those steps.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
from pathlib import Path

from agent.sandbox import jobside


def _checks(folder: Path, outside: Path, secret: Path, state: jobside.Confinement) -> dict[str, bool]:
    checks: dict[str, bool] = {}
    if "secrets" in state.enforced:
        try:
            checks["secrets"] = secret.read_bytes() == b""
        except OSError:
            checks["secrets"] = True
    if jobside.READONLY in state.enforced or jobside.LANDLOCK in state.enforced:
        try:
            (outside / "written-by-job").write_text("x")
            checks["readonly"] = False
        except OSError:
            checks["readonly"] = True
        try:
            (folder / "scratch").write_text("x")
            checks["job-folder-writable"] = True
        except OSError:
            checks["job-folder-writable"] = False
    if jobside.NETNS in state.enforced:
        with socket.socket() as s:
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", 1))
                checks["netns"] = False
            except OSError as exc:
                # Loopback is down in a fresh network namespace (ENETUNREACH); ECONNREFUSED means it is up.
                checks["netns"] = exc.errno != errno.ECONNREFUSED
    return checks


def main(argv: list[str]) -> int:
    base = Path(argv[0]).absolute()
    workdir = base / "workdir"
    folder = workdir / "jobs" / "probe"
    folder.mkdir(parents=True, exist_ok=True)
    secret = workdir / "token"
    secret.write_text("not for jobs")
    outside = base / "outside"
    outside.mkdir(exist_ok=True)
    (folder / "model.bin").write_bytes(b"model")
    state = jobside.Confinement()
    features = frozenset(jobside.ALL_FEATURES)
    jobside.enter(features, state)
    jobside.confine(
        features,
        state,
        job_folder=folder,
        workdir=workdir,
        secrets=(secret,),
        readonly_files=(folder / "model.bin",),
    )
    checks = _checks(folder, outside, secret, state)
    if not checks.get("job-folder-writable", True):
        state.fail(jobside.READONLY, "the job folder itself became read-only")
        state.enforced.pop(jobside.READONLY, None)
    for name, passed in checks.items():
        if not passed and name in state.enforced:
            state.fail(name, f"applied, but the check from inside failed ({name})")
            state.enforced.pop(name)
    print(json.dumps({"enforced": state.enforced, "missing": state.missing, "checks": checks}), flush=True)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
