"""What a run killed and resumed must look like afterwards: read with sqlite3, compared with the agents.

`verify` fills a RunCheck with what it finds:
- lost: a planned cell without a stored result (no job row, a job that did not succeed, no result row), a run
  not marked finished, a result row that was seen after some coordinator process and is gone later, a job the
  agent has no finished result for;
- duplicated: a cell with more than one job row, an unplanned cell, a job id stored twice or in two runs, a job
  with more than one result row, a result row without its job, a cell measured twice on an agent (another job id
  of the run in the agent's kept results: a resume ran it again instead of re-attaching or fetching its result);
- altered: a result row that changed after it was first seen, or a stored result that is not the agent's own
  kept result for that job id (GetBenchmarkResult, converted as the coordinator converts results).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.dispatch.local import LocalAgent
from coordinator.dispatch.wire import result_from_pb
from coordinator.store.sqlite import Store
from protos.edgebench.agent.v1 import agent_pb2 as pb

Rows = dict[str, tuple[bytes, str]]  # job id -> (samples blob, result JSON) as stored


@dataclass
class RunCheck:
    run_id: str = ""
    cells: int = 0
    results: int = 0
    cycles: int = 0  # coordinator processes the run took
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # crashed resumes, runs that never complete

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.altered or self.errors)

    def problems(self) -> list[str]:
        return [f"{what}: {m}" for what in ("lost", "duplicated", "altered", "errors") for m in getattr(self, what)]


def rows(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    """A short-lived read (WAL: never blocks the coordinator's writes)."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, params).fetchall()


def one(db: Path, sql: str, params: tuple[object, ...] = ()) -> int:
    return int(rows(db, sql, params)[0][0] or 0)


def result_rows(db: Path, run_id: str) -> Rows:
    found = rows(db, "SELECT r.job_id, r.samples, r.result_json FROM results r JOIN jobs j ON j.job_id = r.job_id "
                     "WHERE j.run_id = ?", (run_id,))  # fmt: skip
    return {r["job_id"]: (bytes(r["samples"]), r["result_json"]) for r in found}


def verify(db: Path, agents: dict[str, LocalAgent], check: RunCheck, snapshots: Rows) -> None:
    """Check run `check.run_id` of the null-runtime model on device names `agents` (module docstring).
    `snapshots`: every result row seen after any coordinator process of the run, as first seen."""
    run_id = check.run_id
    planned = {(name, "fp32", "null") for name in agents}
    check.cells = len(planned)
    if not one(db, "SELECT finished_at_ns FROM runs WHERE run_id = ?", (run_id,)):
        check.lost.append("the run is not marked finished")
    jobs = rows(db, "SELECT job_id, device, variant, runtime, status FROM jobs WHERE run_id = ?", (run_id,))
    cells: dict[tuple[str, str, str], list[str]] = {}
    for j in jobs:
        cells.setdefault((j["device"], j["variant"], j["runtime"]), []).append(j["job_id"])
    check.duplicated += [f"cell {c} has job rows {ids}" for c, ids in cells.items() if len(ids) > 1]
    check.duplicated += [f"unplanned cell {c}" for c in sorted(set(cells) - planned)]
    check.lost += [f"planned cell {c} has no job row" for c in sorted(planned - set(cells))]
    check.lost += [f"job {j['job_id']} ended {j['status']}" for j in jobs if j["status"] != "succeeded"]
    ids = [j["job_id"] for j in jobs]
    check.duplicated += [f"job id {i} stored {ids.count(i)} times" for i in set(ids) if ids.count(i) > 1]
    for r in rows(db, "SELECT job_id, run_id FROM jobs WHERE run_id != ? AND job_id IN "
                      "(SELECT job_id FROM jobs WHERE run_id = ?)", (run_id, run_id)):  # fmt: skip
        check.duplicated.append(f"job id {r['job_id']} also in run {r['run_id']}")
    counts = {r["job_id"]: r["n"] for r in rows(
        db, "SELECT job_id, COUNT(*) AS n FROM results WHERE job_id IN (SELECT job_id FROM jobs WHERE run_id = ?) "
            "GROUP BY job_id", (run_id,))}  # fmt: skip
    check.results = sum(counts.values())
    check.duplicated += [f"job {i} has {n} result rows" for i, n in counts.items() if n > 1]
    check.lost += [f"job {i} has no result row" for i in ids if i not in counts]
    orphans = rows(db, "SELECT job_id FROM results WHERE job_id NOT IN (SELECT job_id FROM jobs)")
    check.duplicated += [f"result row {r['job_id']} without its job" for r in orphans]
    final = result_rows(db, run_id)
    for job_id, row in snapshots.items():
        if job_id not in final:
            check.lost.append(f"result of {job_id}, stored during the run, is gone")
        elif final[job_id] != row:
            check.altered.append(f"result of {job_id} changed after it was first stored")
    _against_agents(db, agents, check, set(ids))


def _against_agents(db: Path, agents: dict[str, LocalAgent], check: RunCheck, ids: set[str]) -> None:
    store = Store(db)
    try:
        stored = {j.job_id: (j.device, j.result) for j in store.jobs(check.run_id)}
    finally:
        store.close()
    for job_id, (device, mine) in stored.items():
        if mine is None:
            continue  # counted as lost above
        with agents[device].client(timeout_s=30.0) as client:
            known = client.get_result(job_id)
        if known.state != pb.JOB_STATE_FINISHED:
            check.lost.append(f"the agent has no finished result for {job_id}")
        elif result_from_pb(known.result, job_id) != mine:
            check.altered.append(f"stored result of {job_id} is not the agent's")
    for agent in {a.address: a for a in agents.values()}.values():
        for path in (agent.workdir / "results").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                job_id = json.loads(path.read_text())["job"]["job_id"]
                if job_id.startswith(check.run_id + ".") and job_id not in ids:
                    check.duplicated.append(f"agent {agent.address} also measured {job_id}")
