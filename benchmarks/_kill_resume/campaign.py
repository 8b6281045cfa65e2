"""Kill the coordinator at many points of fleet runs, resume each time, then check the store against the agents.

The procedure:

1. Start `agents` real agents on 127.0.0.1:0 and register each under `names_per_agent` device names in a
   fresh store with the real CLI (`edgebench --db DB fleet add`). Each name is a device to the coordinator
   (its own job list and upload); the agent queues their jobs and measures one at a time.
2. Start `edgebench --db DB run MODEL --runtimes null ...` as a child process in its own process group.
   MODEL is a null-runtime model padded to `model_mib` MiB (a fresh nonce per run, so every run uploads it,
   long enough for a kill to land inside the upload). One run = agents x names_per_agent quick jobs.
3. SIGKILL the whole process group at a moment, then `edgebench --db DB run --resume RUN_ID`, killed again,
   and so on until a resume ends by itself. Moments: first, once each on purpose, those of TARGETED; then
   "random" (a seeded uniform delay within the estimated time left). A run that completes before enough
   kills were made is followed by a new one.
4. Each run is checked with sqlite3 on the store and GetBenchmarkResult on the agents (`checks.verify`):
   nothing lost, nothing duplicated, nothing altered.

Seeded, and every kill is logged with its moment and time, so a failure can be replayed (timing on a loaded
machine varies; the sequence of moments and random delays does not).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.dispatch.client import sha256_file
from coordinator.dispatch.local import LocalAgent, start_agent
from protos.edgebench.agent.v1 import agent_pb2 as pb

from .checks import Rows, RunCheck, one, result_rows, rows, verify

#: planned: the run is committed, nothing sent yet; upload: the model's part file grows on an agent;
#: running: an agent reports a job of the run RUNNING; unstored-result: an agent reports a job FINISHED (its
#: result sent or being sent) and the store has no result for it yet; result: a new result row was just
#: committed; last-result: the run's last result was just committed (before the run is marked finished).
TARGETED = ("planned", "upload", "running", "unstored-result", "result", "last-result")
#: Quick null-runtime jobs: a few tenths of a second each, the job process's start included.
RUN_FLAGS = ("--runtimes", "null", "--warmup", "1", "--min-iterations", "5", "--min-duration", "0.05",
             "--max-duration", "5", "--timeout", "120")  # fmt: skip
POLL_S = 0.003


@dataclass(frozen=True)
class CrashPlan:
    """What to try: `points` kills in all (TARGETED first, then random ones)."""

    points: int = 7
    seed: int = 0
    agents: int = 2
    names_per_agent: int = 6
    model_mib: int = 24
    #: `run --device-concurrency`. 1 by default: the agents share this host (the flag's documented use), and
    #: with 1 no two coordinator threads upload the same artifact to one agent at once.
    device_concurrency: int = 1
    #: A process that is not killed must end by itself within this (a resume that never completes fails).
    cycle_timeout_s: float = 240.0


@dataclass
class KillPoint:
    run_id: str
    cycle: int
    moment: str
    after_s: float  # from the coordinator's start to the kill
    note: str = ""
    results: int = 0  # the run's results stored at the kill
    stored: bool = True  # whether the run was stored at the kill


@dataclass
class CrashFigures:
    seed: int
    kills: list[KillPoint] = field(default_factory=list)
    runs: list[RunCheck] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)  # targeted moments a process ended before reaching
    wall_s: float = 0.0

    @property
    def survived(self) -> int:
        """Kill points whose run then completed with nothing lost, duplicated or altered."""
        clean = {r.run_id for r in self.runs if r.clean}
        return sum(k.run_id in clean for k in self.kills)

    def count(self, what: str) -> int:
        return sum(len(getattr(r, what)) for r in self.runs)

    def problems(self) -> list[str]:
        return [f"run {r.run_id}: {p}" for r in self.runs for p in r.problems()]


# ---------------------------------------------------------------------------------------------- fleet


def cli(db: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "coordinator.cli", "--db", str(db), *args]


def _env(db: Path) -> dict[str, str]:
    return {**os.environ, "EDGEBENCH_HOME": str(db.parent), "COLUMNS": "200"}


@contextlib.contextmanager
def fleet(
    workdir: Path, plan: CrashPlan, start: Callable[[Path], LocalAgent] = start_agent
) -> Iterator[tuple[Path, dict[str, LocalAgent]]]:
    """Agents started (`start(workdir)`) and registered with the CLI; yields (store path, device name -> its
    agent). Names sort so that agents alternate (d00-a0, d00-a1, d01-a0, ...): with a device concurrency of
    up to `agents`, the devices in flight at once start on different agents."""
    db = workdir / "home" / "edgebench.db"
    agents: list[LocalAgent] = []
    try:
        for i in range(plan.agents):
            agents.append(start(workdir / f"agent-{i}"))
        by_name = {f"d{j:02d}-a{i}": a for j in range(plan.names_per_agent) for i, a in enumerate(agents)}
        for name, agent in by_name.items():
            token = str(agent.workdir / "token")
            done = subprocess.run(cli(db, "fleet", "add", name, agent.address, "--token-file", token),
                                  env=_env(db), capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"edgebench fleet add {name} failed: {done.stderr[-2000:]}")
        yield db, by_name
    finally:
        for agent in agents:
            agent.stop()


def padded_null_model(path: Path, mib: int, nonce: str) -> Path:
    """A null-runtime model (JSON) padded with whitespace to `mib` MiB; `nonce` gives it a new digest."""
    spec = {"inputs": [{"name": "input", "shape": [1, 16], "dtype": "float32"}], "num_classes": 10, "nonce": nonce}
    text = json.dumps(spec)
    path.write_text(text + " " * max(0, mib * 2**20 - len(text)))
    return path


# ---------------------------------------------------------------------------------------------- campaign


@dataclass
class _Watch:
    """What the watcher knows about the coordinator process it may kill."""

    db: Path
    run_id: str
    cells: int
    spawn_ns: int
    parts: dict[Path, int]  # the model's part file on each agent -> its size when the process started
    results_before: int = 0
    known_runs: set[str] = field(default_factory=set)

    def results(self) -> int:
        if not self.run_id:
            return 0
        return one(self.db, "SELECT COUNT(*) FROM results r JOIN jobs j ON j.job_id = r.job_id WHERE j.run_id = ?",
                    (self.run_id,))  # fmt: skip

    def find_run(self) -> str:
        fresh = [r["run_id"] for r in rows(self.db, "SELECT run_id FROM runs") if r["run_id"] not in self.known_runs]
        return str(fresh[0]) if fresh else ""

    def running(self) -> list[tuple[str, str]]:
        """(job id, device) of the jobs this process marked RUNNING that have no result row yet."""
        found = rows(self.db, "SELECT job_id, device FROM jobs j WHERE run_id = ? AND status = 'running' AND "
                              "updated_at_ns >= ? AND NOT EXISTS (SELECT 1 FROM results r WHERE r.job_id = j.job_id)",
                     (self.run_id, self.spawn_ns))  # fmt: skip
        return [(r["job_id"], r["device"]) for r in found]

    def stored(self, job_id: str) -> bool:
        return bool(rows(self.db, "SELECT 1 FROM results WHERE job_id = ?", (job_id,)))


class Campaign:
    def __init__(self, workdir: Path, db: Path, agents: dict[str, LocalAgent], plan: CrashPlan,
                 log: Callable[[str], None]) -> None:  # fmt: skip
        self.workdir, self.db, self.agents, self.plan, self.log = workdir, db, agents, plan, log
        self.hosts = list({a.address: a for a in agents.values()}.values())
        self.rng = random.Random(plan.seed)
        self.figures = CrashFigures(seed=plan.seed)
        self.pending = list(TARGETED)
        self.startup_s: list[float] = []  # process start -> its first write (run stored, or a job started)
        self.job_s: list[float] = []  # seconds per job of one device slot
        self.cycle_no = 0

    def _left(self, run_id: str) -> int:
        """Jobs of the run without a stored result (all of them before it is stored)."""
        if not run_id:
            return len(self.agents)
        return one(self.db, "SELECT COUNT(*) FROM jobs j WHERE run_id = ? AND NOT EXISTS "
                             "(SELECT 1 FROM results r WHERE r.job_id = j.job_id)", (run_id,))  # fmt: skip

    def _choose(self, run_id: str, sha: str) -> str:
        """The next moment ("" = let the process end). Targeted moments first, each in a process where it can
        still happen: "planned" in a fresh run, "upload" while an agent lacks the model, the others while jobs
        are left. Then random ones, while jobs are left (once every result is stored, only the run's finish is
        left: "last-result" kills there once; more random kills there would spend the points on one state)."""
        if len(self.figures.kills) >= self.plan.points:
            return ""
        left = self._left(run_id)
        uploaded = all((a.workdir / "artifacts" / "blobs" / sha).exists() for a in self.hosts)
        for moment in self.pending:
            if (moment == "planned" and run_id) or (moment == "upload" and uploaded) or left == 0:
                continue
            return moment
        return "random" if left else ""

    def _random_delay(self, run_id: str) -> float:
        """Uniform within the estimated time the process needs: its start-up, then the jobs left per slot."""
        slots = min(self.plan.device_concurrency or len(self.agents), len(self.hosts))
        startup = statistics.median(self.startup_s) if self.startup_s else 1.5
        job = statistics.median(self.job_s) if self.job_s else 0.5
        return self.rng.uniform(0.0, startup + job * math.ceil(self._left(run_id) / slots))

    def _fired(self, moment: str, w: _Watch, elapsed: float, delay: float, results: int) -> str:
        """Why to kill now ("" = not yet)."""
        if moment == "planned" and w.run_id:
            return "run stored" + (", nothing sent yet" if results == 0 else "")
        if moment == "upload" and any(p.exists() and p.stat().st_size > n for p, n in w.parts.items()):
            return "the model's part file is growing on an agent"
        if moment == "result" and results > w.results_before:
            return f"result {results}/{w.cells} just committed"
        if moment == "last-result" and results == w.cells:
            return "the run's last result just committed"
        if moment == "random" and elapsed >= delay:
            return f"random delay {delay:.3f} s"
        if moment in ("running", "unstored-result") and w.run_id:
            for job_id, device in w.running():
                with contextlib.suppress(Exception), self.agents[device].client(timeout_s=5.0) as client:
                    state = client.get_result(job_id).state
                    if moment == "running" and state == pb.JOB_STATE_RUNNING:
                        return f"the agent reports {job_id} RUNNING"
                    if moment == "unstored-result" and state == pb.JOB_STATE_FINISHED and not w.stored(job_id):
                        return f"the agent has finished {job_id}; its result is not stored yet"
        return ""

    def cycle(self, model: Path, sha: str, run_id: str, moment: str) -> tuple[str, int | None, str]:
        """One coordinator process, killed at `moment` ("" = let it end). Returns (run id, exit code or None if
        killed, its output's tail)."""
        self.cycle_no += 1
        args = ["run", "--resume", run_id] if run_id else ["run", str(model), *RUN_FLAGS]
        args += ["--device-concurrency", str(self.plan.device_concurrency)]
        parts = [a.workdir / "artifacts" / "partial" / f"{sha}.part" for a in self.hosts]
        w = _Watch(self.db, run_id, len(self.agents), time.time_ns(), {p: p.stat().st_size if p.exists() else -1
                                                                        for p in parts})  # fmt: skip
        w.results_before = w.results()
        w.known_runs = {r["run_id"] for r in rows(self.db, "SELECT run_id FROM runs")}
        delay = self._random_delay(run_id) if moment == "random" else 0.0
        out = self.workdir / f"cycle-{self.cycle_no:03d}.log"
        why, first_write, seen, first_t, last_t = "", 0.0, w.results_before, 0.0, 0.0
        with out.open("w") as sink:
            start = time.monotonic()
            proc = subprocess.Popen(cli(self.db, *args), env=_env(self.db), stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
            while proc.poll() is None and time.monotonic() - start < self.plan.cycle_timeout_s:
                now = time.monotonic() - start
                w.run_id = w.run_id or w.find_run()
                if not first_write and w.run_id and (not run_id or w.running()):
                    first_write = now
                if (n := w.results()) > seen:
                    first_t, last_t, seen = first_t or now, now, n
                if moment and (why := self._fired(moment, w, now, delay, n)):
                    break
                time.sleep(POLL_S)
            killed = proc.poll() is None
            if killed:  # the whole group: the coordinator and anything it started
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            elapsed = time.monotonic() - start
        run_id = run_id or w.run_id or w.find_run()
        if first_write:
            self.startup_s.append(first_write)
        if seen - w.results_before >= 2:
            slots = min(self.plan.device_concurrency or len(self.agents), len(self.hosts))
            self.job_s.append((last_t - first_t) / (seen - w.results_before - 1) * slots)
        if killed and not why:
            return run_id, -1, f"did not end within {self.plan.cycle_timeout_s:.0f} s"
        if killed:
            self.figures.kills.append(KillPoint(run_id, self.cycle_no, moment, elapsed, why, seen, bool(w.run_id)))
            if moment in self.pending:
                self.pending.remove(moment)
            self.log(f"cycle {self.cycle_no}: SIGKILL at {elapsed:.3f} s ({moment}: {why}); "
                     f"run {run_id or '(not stored yet)'}, {seen} results stored")  # fmt: skip
            return run_id, None, ""
        if moment and moment != "random":
            self.figures.missed.append(f"cycle {self.cycle_no}: {moment}")
        self.log(f"cycle {self.cycle_no}: ended by itself, exit code {code}, after {elapsed:.3f} s"
                 f"{' (before its ' + moment + ' moment)' if moment else ''}; run {run_id}")  # fmt: skip
        return run_id, code, out.read_text()[-3000:]

    def run_once(self, index: int) -> RunCheck:
        """One run, killed and resumed until a process ends by itself; then verified."""
        model = padded_null_model(self.workdir / f"null-{index}.json", self.plan.model_mib,
                                  f"{self.plan.seed}-{index}-{time.time_ns()}")  # fmt: skip
        sha, first_kill, check = sha256_file(model), len(self.figures.kills), RunCheck()
        snapshots: Rows = {}
        for n in range(self.plan.points + 10):
            check.run_id, code, tail = self.cycle(model, sha, check.run_id, self._choose(check.run_id, sha))
            check.cycles = n + 1
            if check.run_id:
                self._snapshot(check, snapshots)
            if code is None:
                continue  # killed: resume it (or start again if the run was not stored yet)
            if code != 0:
                check.errors.append(f"cycle {self.cycle_no} exited with {code}: {tail}")
            if not check.run_id or one(self.db, "SELECT finished_at_ns FROM runs WHERE run_id = ?", (check.run_id,)):
                break
            if code == 0 or len(check.errors) >= 3:
                check.errors.append(f"the run is not finished after cycle {self.cycle_no}")
                break
        else:
            check.errors.append(f"did not complete within {self.plan.points + 10} coordinator processes")
        for kill in self.figures.kills[first_kill:]:
            kill.run_id = check.run_id  # kills before the run was stored belong to it too
        if check.run_id:
            verify(self.db, self.agents, check, snapshots)
        return check

    def _snapshot(self, check: RunCheck, snapshots: Rows) -> None:
        """A result row, once seen, must stay exactly as it is."""
        for job_id, row in result_rows(self.db, check.run_id).items():
            if snapshots.setdefault(job_id, row) != row:
                check.altered.append(f"result of {job_id} changed in cycle {self.cycle_no}")

    def run_all(self) -> CrashFigures:
        """Runs, each killed and resumed until it completes and verified, until `points` kills were made."""
        started = time.monotonic()
        plan = self.plan
        self.log(f"crash points: seed {plan.seed}, {plan.points} kill points, {plan.agents} agents x "
                 f"{plan.names_per_agent} device names, model {plan.model_mib} MiB, device concurrency "
                 f"{plan.device_concurrency}")  # fmt: skip
        for index in range(plan.points + 5):
            if len(self.figures.kills) >= plan.points:
                break
            check = self.run_once(index)
            self.figures.runs.append(check)
            verdict = "clean" if check.clean else "PROBLEMS:\n  " + "\n  ".join(check.problems())
            self.log(f"run {check.run_id}: {check.results}/{check.cells} results, {check.cycles} processes; {verdict}")
            if check.errors:
                break  # a run that cannot complete: later runs would only repeat it
        self.figures.wall_s += time.monotonic() - started
        return self.figures


def run_campaign(workdir: Path, plan: CrashPlan, log: Callable[[str], None] = print) -> CrashFigures:
    """The whole procedure (module docstring) with its own agents. Reports what it finds instead of raising."""
    with fleet(workdir, plan) as (db, agents):
        return Campaign(workdir, db, agents, plan, log).run_all()
