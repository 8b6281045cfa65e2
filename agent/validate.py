"""Contract checks on a job before it is accepted: a pure function returning every problem found.

A job that fails these is rejected with INVALID_ARGUMENT (it breaks the contract); it never occupies the
queue. Whether the device can *run* a valid job (runtime installed, model loads) is decided in the job
process and reported as a result.
"""

from __future__ import annotations

import re

from agent.artifacts import SHA256_RE
from agent.runner import MODEL_SUFFIX
from agent.runtimes import REGISTRY
from agent.runtimes.coreml import PACKAGE_DIRNAME
from agent.types import BenchmarkJob, CompanionFile

JOB_ID_RE = re.compile(r"^[A-Za-z0-9._:@/-]{1,200}$")
COMPANION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,200}$")
MAX_ITERATIONS = 1_000_000
MAX_BATCH = 65_536
MAX_GENERATED_BATCHES = 256
#: Names the job folder already uses, whatever the model's format: the model file (`model<suffix>`) and the
#: folder a Core ML package is unpacked to. A companion under one of them would be linked over the model.
RESERVED_NAMES = frozenset({f"model{suffix}" for suffix in MODEL_SUFFIX.values()} | {PACKAGE_DIRNAME})


def _name_key(name: str) -> str:
    """The name as a case-insensitive filesystem (macOS, Windows) sees it; Windows also drops trailing dots."""
    return name.lower().rstrip(".")


def companion_problems(companions: tuple[CompanionFile, ...]) -> list[str]:
    """Companion names must be plain file names, distinct from each other and from the model file's name,
    also when compared case-insensitively (two names for one file on macOS or Windows)."""
    problems: list[str] = []
    reserved = {_name_key(n) for n in RESERVED_NAMES}
    seen: dict[str, str] = {}
    for c in companions:
        if not COMPANION_RE.fullmatch(c.name) or ".." in c.name:
            problems.append(f"companion file name {c.name[:60]!r} must be a plain file name (no directories, no '..')")
        elif _name_key(c.name) in reserved:
            problems.append(
                f"companion file name {c.name[:60]!r} is reserved for the model itself in the job's folder "
                f"({', '.join(sorted(RESERVED_NAMES))}, in any letter case); rename the companion"
            )
        elif (first := seen.get(_name_key(c.name))) is not None:
            what = (
                f"file name {c.name[:60]!r} is declared twice"
                if first == c.name
                else f"file names {first[:60]!r} and {c.name[:60]!r} are one file on a case-insensitive filesystem"
            )
            problems.append(f"companion {what}; give each companion its own name")
        else:
            seen[_name_key(c.name)] = c.name
        if not SHA256_RE.fullmatch(c.sha256):
            problems.append(f"companion {c.name[:60]!r} sha256 is not a sha256 digest")
    return problems


def validate_job(job: BenchmarkJob) -> list[str]:
    problems: list[str] = []
    if not JOB_ID_RE.fullmatch(job.job_id):
        problems.append("job_id must be 1-200 characters of letters, digits and ._:@/-")
    if not SHA256_RE.fullmatch(job.model.sha256):
        problems.append("model.sha256 must be a sha256 digest (64 lowercase hex characters)")
    problems += companion_problems(job.model.companions)
    if job.runtime.name not in REGISTRY:
        problems.append(f"unknown runtime {job.runtime.name!r}; valid runtimes: {', '.join(sorted(REGISTRY))}")
    if job.runtime.intra_op_threads > 1024 or job.runtime.inter_op_threads > 1024:
        problems.append("thread counts above 1024 are not plausible")
    spec = job.inputs
    if not 1 <= spec.batch_size <= MAX_BATCH:
        problems.append(f"inputs.batch_size must be 1..{MAX_BATCH}, got {spec.batch_size}")
    if spec.dataset_sha256:
        if not SHA256_RE.fullmatch(spec.dataset_sha256):
            problems.append("inputs.dataset_sha256 must be a sha256 digest")
    elif not 1 <= spec.num_batches <= MAX_GENERATED_BATCHES:
        problems.append(f"inputs.generated.num_batches must be 1..{MAX_GENERATED_BATCHES}, got {spec.num_batches}")
    p = job.plan
    if p.min_iterations < 1:
        problems.append(f"plan.min_iterations must be at least 1, got {p.min_iterations}")
    for name in ("warmup_duration_ns", "min_duration_ns", "max_duration_ns"):
        if getattr(p, name) < 0:
            problems.append(f"plan.{name.removesuffix('_ns')} must not be negative")
    if p.max_duration_ns <= 0:
        problems.append("plan.max_duration must be positive")
    elif p.max_duration_ns < p.min_duration_ns:
        problems.append("plan.max_duration must be at least plan.min_duration")
    if not p.min_iterations <= p.max_iterations <= MAX_ITERATIONS:
        problems.append(
            f"plan.max_iterations must be between min_iterations and {MAX_ITERATIONS}, got {p.max_iterations}"
        )
    if not 0 <= p.target_relative_ci < 1:
        problems.append(f"plan.target_relative_ci must be in [0, 1), got {p.target_relative_ci}")
    if job.limits.wall_time_ns < 0:
        problems.append("limits.wall_time must not be negative")
    if job.accuracy_pass and not spec.dataset_sha256:
        problems.append("accuracy_pass needs a dataset (inputs.dataset_sha256); generated inputs have no labels")
    return problems
