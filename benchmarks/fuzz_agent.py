"""Fuzz a real agent for longer: the suite tests/fuzz/test_fuzz_agent.py in long mode, with its figures.

Runs pytest on the suite as a child process with EDGEBENCH_FUZZ_EXAMPLES=N (N times the examples CI runs:
random job specs, random upload sequences, hostile job processes, then a restart of the agent), reads the
figures it writes (EDGEBENCH_FUZZ_REPORT) and prints them. Targets: the suite passes, 0 failures, 0
escaped processes (processes of finished jobs still alive after a 10 s grace), every stored result
returned unchanged.

Run: .venv/bin/python benchmarks/fuzz_agent.py [--examples 10] [--seed S] [--shrink] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import Row, print_header, print_table, print_verdict

ROOT = Path(__file__).resolve().parent.parent
SUITE = "tests/fuzz/test_fuzz_agent.py"


def rows(figures: dict[str, object], exit_code: int, wall_s: float) -> list[Row]:
    cases: dict[str, int] = figures.get("cases", {})  # type: ignore[assignment]
    outcomes: dict[str, int] = figures.get("outcomes", {})  # type: ignore[assignment]
    by_category: dict[str, Counter[str]] = {}
    for key, n in outcomes.items():
        category, _, outcome = key.partition(":")
        by_category.setdefault(category, Counter())[outcome] += n
    escaped = int(figures.get("escaped_processes", -1))  # type: ignore[call-overload]
    failures = int(figures.get("failures", -1))  # type: ignore[call-overload]
    kept, compared = figures.get("results_kept", 0), figures.get("results_compared", 0)
    table = [
        Row("suite passed (pytest exit status)", str(exit_code), "0", exit_code == 0),
        Row("fuzz cases run", str(figures.get("cases_total", 0))),
        *(Row(f"  {name}", str(n)) for name, n in sorted(cases.items())),
        Row("calls to the agent (checked against the contract)", str(figures.get("calls", 0))),
    ]
    for category, counter in sorted(by_category.items()):
        table.append(Row(f"  {category} answers", ", ".join(f"{k} {v}" for k, v in counter.most_common())))
    table += [
        Row("health/process/result checks", str(figures.get("checks", 0))),
        Row("failing examples", str(failures), "0", failures == 0),
        Row("escaped processes left", str(escaped), "0", escaped == 0),
        Row("stored results compared (kept)", f"{compared} ({kept})"),
        Row("wall time", f"{wall_s:.0f} s"),
        Row("seed", str(figures.get("seed", "?"))),
    ]
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10, help="times the CI examples (default 10)")
    parser.add_argument("--quick", action="store_true", help="the CI amount (--examples 1)")
    parser.add_argument("--seed", type=int, default=None, help="replay a seed (default: a fresh one, printed)")
    parser.add_argument("--shrink", action="store_true", help="let hypothesis shrink a failing example (slow)")
    args = parser.parse_args()
    multiplier = 1 if args.quick else max(1, args.examples)
    print_header("agent fuzz (hypothesis, real agent on loopback)", {"examples": f"x{multiplier}", "suite": SUITE})
    with tempfile.TemporaryDirectory(prefix="edgebench-bench-fuzz-") as tmp:
        report = Path(tmp) / "fuzz.json"
        env = {**os.environ, "EDGEBENCH_FUZZ_EXAMPLES": str(multiplier), "EDGEBENCH_FUZZ_REPORT": str(report)}
        if args.seed is not None:
            env["EDGEBENCH_FUZZ_SEED"] = str(args.seed)
        if args.shrink:
            env["EDGEBENCH_FUZZ_SHRINK"] = "1"
        started = time.monotonic()
        # No per-test timeout: the long mode's length is the point; every call inside is bounded.
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", SUITE, "-q", "-p", "no:cacheprovider", "-o", "timeout=0"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False,
        )
        wall = time.monotonic() - started
        figures = json.loads(report.read_text()) if report.exists() else {}
    if proc.returncode != 0 or not figures:
        print(proc.stdout[-6000:])
        print(proc.stderr[-2000:])
    table = rows(figures, proc.returncode, wall)
    print_table("agent fuzz", table)
    print_verdict(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
