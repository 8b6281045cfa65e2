"""Crash points: SIGKILL the coordinator at many moments of real fleet runs, resume each time, count the damage.

The procedure is `_kill_resume/` (shared with tests/integration/test_crash_points.py): real agents on
loopback, each registered under several device names with `edgebench fleet add`; `edgebench run` of a
null-runtime model (padded to --model-mib so that a kill can land inside the upload) as a child process;
SIGKILL of its process group at a moment, then `edgebench run --resume RUN_ID`, killed again, ... until a
resume completes; new runs until --points kills were made. Moments: planned (run committed, nothing sent),
upload (the model's part file growing on an agent), running (an agent reports a job RUNNING),
unstored-result (an agent reports a job FINISHED, the store has no result for it yet), result (right after a
result row is committed), last-result (after the run's last result, before the run is finished), then random
delays within the estimated time left (seeded), while jobs are left.

Each run is then checked with sqlite3 on the store and GetBenchmarkResult on the agents. Targets: every kill
point survived; 0 results lost (a planned cell without its result, a result seen after a kill and gone
later), 0 duplicated (a second job or result row for a cell, a result without its job, a cell measured twice
on an agent), 0 altered (a result row changed after it was first seen, or not equal to the agent's own kept
result for that job id).

Run: .venv/bin/python benchmarks/crash_points.py [--points 20] [--quick] [--seed S] [--device-concurrency C]
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from _common import Row, print_header, print_table, print_verdict
from _kill_resume import TARGETED, CrashFigures, CrashPlan, run_campaign


def rows(figures: CrashFigures, plan: CrashPlan) -> list[Row]:
    kills = figures.kills
    cells = plan.agents * plan.names_per_agent
    moments = Counter(k.moment for k in kills)
    randoms = [k for k in kills if k.moment == "random"]
    phases = Counter(
        f"{'no' if k.results == 0 else 'all' if k.results == cells else 'some'} results stored"
        if k.stored
        else "run not stored yet"
        for k in randoms
    )
    processes = sum(r.cycles for r in figures.runs)
    return [
        Row("kill points tried", str(len(kills)), f"{plan.points}", len(kills) == plan.points),
        Row("  targeted", ", ".join(f"{m} {moments[m]}" for m in TARGETED if moments[m]) or "-"),
        Row("  random, by results stored at the kill", ", ".join(f"{n} {p}" for p, n in phases.items()) or "-"),
        Row("kill points survived", f"{figures.survived}/{len(kills)}", "all", figures.survived == len(kills) > 0),
        Row("results lost", str(figures.count("lost")), "0", figures.count("lost") == 0),
        Row("results duplicated", str(figures.count("duplicated")), "0", figures.count("duplicated") == 0),
        Row("results altered", str(figures.count("altered")), "0", figures.count("altered") == 0),
        Row("runs that crashed or never completed", str(figures.count("errors")), "0", figures.count("errors") == 0),
        Row("runs completed (each verified)", f"{sum(r.clean for r in figures.runs)}/{len(figures.runs)}"),
        Row("results verified against the agents", str(sum(r.results for r in figures.runs))),
        Row("coordinator processes started", str(processes)),
        Row("targeted moments a process ended before", str(len(figures.missed))),
        Row("wall time (runs, kills, checks; agents started before)", f"{figures.wall_s:.1f} s"),
        Row("seed", str(figures.seed)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=20, help="kill points (default 20)")
    parser.add_argument("--quick", action="store_true", help="short run: 7 kill points")
    parser.add_argument("--seed", type=int, default=None, help="replay a seed (default: a fresh one, printed)")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--names-per-agent", type=int, default=6, help="device names registered per agent")
    parser.add_argument("--model-mib", type=int, default=24, help="size of the padded null-runtime model")
    parser.add_argument(
        "--device-concurrency", type=int, default=1, help="`run --device-concurrency` (0 = all devices at once)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs of every process)")
    args = parser.parse_args()
    plan = CrashPlan(
        points=7 if args.quick else args.points,
        seed=random.SystemRandom().randrange(1_000_000) if args.seed is None else args.seed,
        agents=args.agents,
        names_per_agent=args.names_per_agent,
        model_mib=args.model_mib,
        device_concurrency=args.device_concurrency,
    )
    print_header(
        "coordinator crash points (SIGKILL + run --resume)",
        {
            "points": plan.points,
            "seed": plan.seed,
            "agents": plan.agents,
            "device names per agent": plan.names_per_agent,
            "jobs per run": plan.agents * plan.names_per_agent,
            "model": f"null runtime, {plan.model_mib} MiB",
            "device concurrency": plan.device_concurrency,
        },
    )
    work = Path(tempfile.mkdtemp(prefix="edgebench-bench-crash-"))
    try:
        figures = run_campaign(work, plan)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    table = rows(figures, plan)
    print_table("crash points", table)
    for problem in figures.problems():
        print(f"  {problem}")
    print_verdict(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
