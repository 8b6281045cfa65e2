"""Fleet runs against real agents when things die: what each failure leaves, and what --resume does."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from coordinator.dispatch.dispatcher import Dispatcher, DispatchEvent
from coordinator.dispatch.local import LocalAgent
from coordinator.runs import resume_run, start_run
from coordinator.store.sqlite import Store
from coordinator.types import Device, JobStatus, MeasurementSettings
from tests.helpers import wait_for

QUICK = MeasurementSettings(min_iterations=5, min_duration_s=0.05, warmup_iterations=1, max_duration_s=10)


def register(store: Store, name: str, agent: LocalAgent) -> None:
    store.add_device(Device(name=name, address=agent.address, token_file=str(agent.workdir / "token")), replace=True)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "edgebench.db")


def statuses(run_jobs: tuple) -> dict[str, JobStatus]:  # type: ignore[type-arg]
    return {j.device: j.status for j in run_jobs}


def test_unreachable_device_at_start_then_resume(agent_factory, store: Store, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    good = agent_factory()
    register(store, "good", good)
    store.add_device(Device(name="ghost", address="127.0.0.1:1", token_file=str(good.workdir / "token")))
    # One runtime: these tests are about faults, one job per device keeps them readable.
    run = start_run(store, model=models["mlp"], dataset=models["mlp_data"], settings=QUICK, runtimes=["onnxruntime"])
    jobs = {j.device: j for j in run.jobs}
    assert jobs["good"].status is JobStatus.SUCCEEDED
    assert jobs["ghost"].status is JobStatus.UNREACHABLE
    assert "ghost unreachable" in jobs["ghost"].message and "is the agent running" in jobs["ghost"].message
    assert not run.finished_at_ns  # not finished: one job has no final result
    # The device comes back (at a new address); --resume runs only its job.
    back = agent_factory()
    register(store, "ghost", back)
    resumed = resume_run(store, run.spec.run_id)
    assert statuses(resumed.jobs) == {"good": JobStatus.SUCCEEDED, "ghost": JobStatus.SUCCEEDED}
    assert resumed.finished_at_ns
    good_before = jobs["good"].result
    assert good_before is not None and {j.device: j for j in resumed.jobs}["good"].result == good_before


def test_agent_killed_mid_job(agent_factory, store: Store, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    steady, victim = agent_factory(), agent_factory()
    register(store, "steady", steady)
    register(store, "victim", victim)
    running = threading.Event()

    def on_event(event: DispatchEvent) -> None:
        if event.device == "victim" and event.phase == "measuring":
            running.set()

    def kill_when_running() -> None:
        running.wait(30)
        victim.process.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    slow = MeasurementSettings(min_iterations=5, min_duration_s=3.0, warmup_iterations=1, max_duration_s=10)
    run = start_run(
        store,
        model=models["mlp"],
        dataset=None,
        settings=slow,
        runtimes=["onnxruntime"],
        dispatcher=Dispatcher(store, on_event=on_event, reconnect_s=2.0),
    )
    killer.join()
    jobs = {j.device: j for j in run.jobs}
    assert jobs["steady"].status is JobStatus.SUCCEEDED
    assert jobs["victim"].status is JobStatus.UNREACHABLE
    assert "agent became unreachable during the job" in jobs["victim"].message
    assert "--resume" in jobs["victim"].message
    # The dead agent's job process notices (its event pipe breaks) and exits instead of running on.
    wait_for(
        lambda: (
            not [
                p
                for p in psutil.process_iter(["cmdline"])
                if "agent.child" in " ".join(p.info["cmdline"] or [])
                and str(victim.workdir) in " ".join(p.info["cmdline"] or []) + str(_cwd(p))
            ]
        ),
        timeout=10,
    )
    replacement = agent_factory(workdir=victim.workdir)  # same device restarted
    register(store, "victim", replacement)
    resumed = resume_run(store, run.spec.run_id)
    assert {j.device: j.status for j in resumed.jobs} == {"steady": JobStatus.SUCCEEDED, "victim": JobStatus.SUCCEEDED}


def _cwd(p: psutil.Process) -> str:
    try:
        return p.cwd()
    except psutil.Error:
        return ""


def _results(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def test_coordinator_killed_mid_run_loses_nothing_and_reruns_nothing(
    agent_factory,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    models: dict[str, Path],
) -> None:
    agent = agent_factory()
    db = tmp_path / "edgebench.db"
    store = Store(db)
    for name in ("a", "b", "c"):  # three names for one agent: its three jobs queue there, one at a time
        register(store, name, agent)
    store.close()
    env = {**os.environ, "EDGEBENCH_HOME": str(tmp_path)}
    cmd = [
        sys.executable,
        "-m",
        "coordinator.cli",
        "run",
        str(models["mlp"]),
        "--runtimes",
        "onnxruntime",
        "--min-duration",
        "1.0",
        "--min-iterations",
        "5",
        "--warmup",
        "1",
    ]
    coordinator = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: db.exists() and _results(db) >= 1, timeout=60)
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait(10)
    stored_before = _results(db)
    assert 1 <= stored_before < 3
    with sqlite3.connect(db) as conn:
        run_id = conn.execute("SELECT run_id FROM runs").fetchone()[0]
        kept = dict(conn.execute("SELECT job_id, result_json FROM results").fetchall())
    done = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "run", "--resume", run_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with sqlite3.connect(db) as conn:
        after = dict(conn.execute("SELECT job_id, result_json FROM results").fetchall())
        statuses_after = [r[0] for r in conn.execute("SELECT status FROM jobs")]
    assert statuses_after == ["succeeded"] * 3
    assert len(after) == 3 and all(after[k] == v for k, v in kept.items())  # stored results untouched
    # Every job ran exactly once on the agent: the resumed ones were fetched or re-attached, not re-run.
    agent_results = list((agent.workdir / "results").glob("*.json"))
    assert len(agent_results) == 3
    agent_started = {json.loads(p.read_text())["result"]["started_at_ns"] for p in agent_results}
    assert {json.loads(v)["started_at_ns"] for v in after.values()} == agent_started
