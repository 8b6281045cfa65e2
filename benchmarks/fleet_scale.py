"""The coordinator at fleet scale: N real agents on loopback, one null-runtime job per agent.

N agents (`python -m agent.cli serve`, each a real process with its own work directory and token, with
the agent's defaults: `--prestart`, i.e. one job process started in advance) are started concurrently from
a thread pool and registered in a fresh Store. Then fleet runs of a null-runtime model (`runtimes=["null"]`,
short plans: 2 warm-up iterations, >= 20 iterations and >= 0.1 s, accuracy off) are made with
`coordinator.runs.start_run`, each in its own coordinator process (this script re-invoked with
--coordinator-only), so that the coordinator's figures (peak RSS, CPU) are its own and not those of the code
that launches and watches the agents. Every run uses a fresh model file (a nonce in its JSON), so every run
uploads, as a real run of a new model does.

Each inference of the null runtime *sleeps* --sleep-ms (runtime option `sleep_ns`, passed with every job
through MeasurementSettings.runtime_options): a device whose accelerator does the work while its host CPU
waits. With a busy-waiting runtime, N simulated devices on a machine with a few cores measure the
simulation's CPU contention, not the coordinator.

Before the first run and between runs, the script waits until every agent's spare job process has started
and finished its imports (it sleeps, blocked reading its job, with its CPU time still): the agent starts it
right after a job ends, so without the wait the next run would share the CPU with N spares starting up.
The time this takes after an N-agent run is shown ("spares ready"); it is not part of any run's wall time.

Runs alternate: 1 agent, N agents, 1 agent, ..., 1 agent (the single-agent case first and last; medians).

(1) all jobs complete: every job of every run SUCCEEDED (counts per status printed).
(2) coordinator overhead per job = (stored_at - dispatched_at) - (agent_finished - agent_started), from the
    dispatcher's "result" events of the N-agent runs. All four are time.time_ns() on this machine (the
    agent's pair from the job's child process). Median <= 25 ms. It is broken down with the arrival times of
    the stream's events, taken in the coordinator by a client subclass passed as the dispatcher's
    `connect_fn`: dispatch -> accepted, dispatch -> the child's start (gRPC, the agent's queue, handing the
    job to the spare job process, or starting one if none is ready), the child's end -> result received
    (pipe, the job process's exit, agent, gRPC), result received -> stored (validation, SQLite commit).
    Shown beside it: the coordinator's CPU time per job, i.e. the coordinator process's user+sys CPU
    (rusage, from its exec to its exit, interpreter start and imports included) / jobs in the run, and the
    part of it spent inside start_run.
(3) wall time of `start_run` for N agents / for 1 agent (medians). Target <= 5x. Shown beside it: the CPU
    floor of the N-agent run, (CPU used during the run by the agents and their job processes, live or
    reaped, + the coordinator's) / usable cores, i.e. the shortest wall time this machine allows for that
    work. The agents' share is split per job into the agent processes' own CPU, the job processes' (from
    being taken for a job to their exit) and the start-up of the spares started during the run; the idle
    fleet's CPU use (over --idle-s before the first run) is shown for scale.
(4) coordinator peak RSS: the coordinator process's VmHWM (/proc/self/status, read at its end), largest over
    the N-agent runs. Target <= 300 MB (MB = 10^6 bytes). Its ru_maxrss (wait4) is shown too but is not
    the figure: on Linux it carries over fork+exec the RSS of the process that started it (this launcher).
Also: time to start N agents, to probe them (first probe, which waits for each agent's runtime probe, then
a warm one), probes within a run, spread of job starts across devices, and that no agent is left running.

The coordinator process wraps `coordinator.runs.probe_all` and the dispatcher's probe function only to
time them; it changes nothing else.

Run: .venv/bin/python benchmarks/fleet_scale.py [--quick] [--agents N] [--rounds R] [--sleep-ms MS]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MB = 1e6
OVERHEAD_TARGET_NS = 25_000_000
RATIO_TARGET = 5.0
RSS_TARGET_BYTES = 300 * MB
SINGLE = "agent-000"
PLAN = {"warmup_iterations": 2, "min_iterations": 20, "min_duration_s": 0.1}
PLAN_TEXT = "warmup 2, >=20 it, >=0.1 s, accuracy off"

# ============================================================================================ coordinator
# Runs in its own process (`--coordinator-only`): one start_run, figures written as JSON to --out.


def coordinator_main(args: argparse.Namespace) -> int:
    import resource

    from coordinator import runs
    from coordinator.dispatch.client import AgentClient
    from coordinator.dispatch.dispatcher import Dispatcher, DispatchEvent
    from coordinator.fleet import credentials
    from coordinator.fleet import probe as fleet_probe
    from coordinator.store.sqlite import Store
    from coordinator.types import Device, DeviceProbe, MeasurementSettings

    first_event: dict[str, int] = {}
    result_recv: dict[str, int] = {}
    arrivals: dict[tuple[str, str], int] = {}  # (job id, phase) -> first arrival
    results: list[dict[str, Any]] = []
    device_probe: dict[str, tuple[int, int]] = {}
    probe_all_ns: list[int] = []

    class TimedClient(AgentClient):
        """AgentClient that notes when the stream's first event and its result arrive."""

        def run(self, job: Any, timeout_s: float | None = None) -> Iterator[Any]:
            stream = super().run(job, timeout_s)
            job_id = job.job_id

            def timed() -> Iterator[Any]:
                for event in stream:
                    now = time.time_ns()
                    first_event.setdefault(job_id, now)
                    if event.WhichOneof("event") == "result":
                        result_recv[job_id] = now
                    yield event

            return timed()

    def connect(device: Device) -> AgentClient:
        return TimedClient(device.address, credentials(device), timeout_s=30.0)

    def probe(device: Device) -> DeviceProbe:
        t0 = time.time_ns()
        found = fleet_probe(device)
        device_probe[device.name] = (t0, time.time_ns())
        return found

    original_probe_all = runs.probe_all

    def probe_all(devices: Sequence[Device], *a: Any, **kw: Any) -> dict[str, DeviceProbe]:
        t0 = time.perf_counter_ns()
        found = original_probe_all(devices, *a, **kw)
        probe_all_ns.append(time.perf_counter_ns() - t0)
        return found

    runs.probe_all = probe_all  # type: ignore[assignment]

    def on_event(e: DispatchEvent) -> None:
        now = time.time_ns()
        if e.kind == "progress" and e.phase:
            arrivals.setdefault((e.job_id, e.phase), now)
        elif e.kind == "result":
            results.append(
                {
                    "device": e.device,
                    "job_id": e.job_id,
                    "status": e.status.value if e.status else "",
                    "dispatched": e.dispatched_at_ns,
                    "stored": e.stored_at_ns,
                    "agent_started": e.agent_started_at_ns,
                    "agent_finished": e.agent_finished_at_ns,
                }
            )

    store_ns: dict[str, list[int]] = {"record_probe": [], "set_job_status": [], "save_result": []}

    class TimedStore(Store):
        """Store that notes how long each write the dispatcher makes takes (lock waits included)."""

        def record_probe(self, *a: Any, **kw: Any) -> None:
            t0 = time.perf_counter_ns()
            super().record_probe(*a, **kw)
            store_ns["record_probe"].append(time.perf_counter_ns() - t0)

        def set_job_status(self, *a: Any, **kw: Any) -> None:
            t0 = time.perf_counter_ns()
            super().set_job_status(*a, **kw)
            store_ns["set_job_status"].append(time.perf_counter_ns() - t0)

        def save_result(self, *a: Any, **kw: Any) -> bool:
            t0 = time.perf_counter_ns()
            saved = super().save_result(*a, **kw)
            store_ns["save_result"].append(time.perf_counter_ns() - t0)
            return saved

    store = TimedStore(Path(args.store))
    settings = MeasurementSettings(
        **PLAN,
        max_duration_s=5.0,
        wall_time_s=300.0,
        accuracy=False,
        runtime_options=(("sleep_ns", str(round(args.sleep_ms * 1e6))),),
    )
    dispatcher = Dispatcher(store, on_event=on_event, connect_fn=connect, probe_fn=probe)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    start_ns = time.time_ns()
    t0 = time.perf_counter_ns()
    run = runs.start_run(
        store,
        model=Path(args.model),
        dataset=None,
        devices=args.devices,
        runtimes=["null"],
        settings=settings,
        name="fleet-scale",
        dispatcher=dispatcher,
    )
    wall_ns = time.perf_counter_ns() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    for r in results:
        r["first_event"] = first_event.get(r["job_id"], 0)
        r["result_recv"] = result_recv.get(r["job_id"], 0)
        r["starting"] = arrivals.get((r["job_id"], "starting"), 0)
        r["loading"] = arrivals.get((r["job_id"], "loading"), 0)
        r["probe"] = device_probe.get(r["device"], (0, 0))
    vm_hwm_kib = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            vm_hwm_kib = int(line.split()[1])
    out = {
        "run_id": run.spec.run_id,
        "devices": len(run.spec.devices),
        "start_ns": start_ns,
        "wall_ns": wall_ns,
        "probe_all_ns": probe_all_ns,
        "cpu_s": (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime),
        "statuses": dict(Counter(j.status.value for j in run.jobs)),
        "results": results,
        "vm_hwm_kib": vm_hwm_kib,
        "store_ns": store_ns,
        "samples": [len(j.result.latencies_ns) for j in run.jobs if j.result is not None],
    }
    Path(args.out).write_text(json.dumps(out))
    store.close()
    return 0


# ============================================================================================ launcher


def pct(values: Sequence[float], q: float) -> float:
    """Percentile q (0..100), linear interpolation between closest ranks."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms(ns: float) -> str:
    return f"{ns / 1e6:.1f} ms"


class Fleet:
    """N local agents; `stop` ends every one of them (SIGTERM, then SIGKILL of its process group)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._started: dict[int, Any] = {}  # index -> LocalAgent, filled from the pool's threads
        self._lock = threading.Lock()
        self.start_s: list[float] = []

    def start(self, n: int, workers: int) -> None:
        from coordinator.dispatch.local import start_agent

        def one(i: int) -> None:
            t0 = time.perf_counter()
            agent = start_agent(self.root / f"a{i:03d}", timeout_s=600.0)
            with self._lock:
                self._started[i] = agent
                self.start_s.append(time.perf_counter() - t0)

        pool = ThreadPoolExecutor(max_workers=max(1, min(workers, n)))
        try:
            for f in [pool.submit(one, i) for i in range(n)]:
                f.result()
        finally:  # on a failure or Ctrl-C, start no more agents (those started are stopped by `stop`)
            pool.shutdown(wait=True, cancel_futures=True)

    @property
    def agents(self) -> list[Any]:
        with self._lock:
            return [self._started[i] for i in sorted(self._started)]

    def pids(self) -> list[int]:
        return [a.process.pid for a in self.agents]

    def stop(self, grace_s: float = 20.0) -> None:
        agents = self.agents
        for a in agents:
            if a.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    a.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for a in agents:
            with contextlib.suppress(subprocess.TimeoutExpired):
                a.process.wait(max(0.0, deadline - time.monotonic()))
        for a in agents:
            # The agent is its own process group (start_new_session): its runtime probe goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(a.process.pid, signal.SIGKILL)
            if a.process.poll() is None:
                a.process.kill()
            a.process.wait()
            if a.process.stdout is not None:
                a.process.stdout.close()

    def leftovers(self) -> list[int]:
        """Processes still alive whose command line or working directory lies under this fleet's folder."""
        import psutil

        root = str(self.root)
        left = []
        for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
            with contextlib.suppress(psutil.Error):
                cmd = " ".join(p.info["cmdline"] or ())
                inside = root in cmd or (p.info["cwd"] or "").startswith(root)
                if inside and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p.pid)
        return left


def agents_rss(pids: Sequence[int]) -> int:
    import psutil

    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


def spares_rss(pids: Sequence[int]) -> int:
    """RSS of the agents' live job processes (their spares, between runs)."""
    import psutil
    from _common import job_processes

    total = 0
    for pid in pids:
        for p in job_processes(pid):
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
    return total


def write_model(path: Path, nonce: int) -> Path:
    """A null-runtime model; the nonce gives each run a fresh digest, so every run uploads."""
    spec = {"inputs": [{"name": "input", "shape": [1, 16], "dtype": "float32"}], "num_classes": 10, "nonce": nonce}
    path.write_text(json.dumps(spec))
    return path


def coordinator_run(
    work: Path, store: Path, model: Path, devices: str, timeout_s: float, sleep_ms: float
) -> dict[str, Any]:
    """One start_run in a fresh coordinator process; its JSON plus its own rusage (wait4)."""
    out = work / f"{model.stem}.out.json"
    log = work / f"{model.stem}.log"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--coordinator-only",
        "--store",
        str(store),
        "--model",
        str(model),
        "--devices",
        devices,
        "--out",
        str(out),
        "--sleep-ms",
        str(sleep_ms),
    ]
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    process_s = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"coordinator exited {proc.returncode}:\n{log.read_text()[-4000:]}")
    data: dict[str, Any] = json.loads(out.read_text())
    data["ru_maxrss_bytes"] = usage.ru_maxrss * 1024  # KiB on Linux
    data["process_cpu_s"] = usage.ru_utime + usage.ru_stime
    data["process_s"] = process_s
    return data


def overheads(results: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Per job: the overhead and its parts (ns)."""
    parts: dict[str, list[float]] = {
        k: [] for k in ("overhead", "to_accepted", "to_child", "child_start", "from_child", "store")
    }
    for r in results:
        if not (r["dispatched"] and r["stored"] and r["agent_started"] and r["agent_finished"]):
            continue
        parts["overhead"].append((r["stored"] - r["dispatched"]) - (r["agent_finished"] - r["agent_started"]))
        parts["to_child"].append(r["agent_started"] - r["dispatched"])
        if r["first_event"]:
            parts["to_accepted"].append(r["first_event"] - r["dispatched"])
        if r["starting"] and r["loading"]:
            parts["child_start"].append(r["loading"] - r["starting"])
        if r["result_recv"]:
            parts["from_child"].append(r["result_recv"] - r["agent_finished"])
            parts["store"].append(r["stored"] - r["result_recv"])
    return parts


def launcher_main(args: argparse.Namespace) -> int:
    import psutil
    from _common import (
        Row,
        cpu_parts,
        cpu_snapshot,
        median,
        print_header,
        print_table,
        print_verdict,
        temp_dir,
        wait_spare_job_processes,
    )

    from coordinator.fleet import probe_all
    from coordinator.store.sqlite import Store
    from coordinator.types import Device

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    print_header(
        "fleet scale",
        {
            "agents": args.agents,
            "rounds (N-agent runs)": args.rounds,
            "start_workers": args.start_workers,
            "plan": PLAN_TEXT,
            "null runtime": f"sleep {args.sleep_ms:g} ms per inference (sleep_ns)",
            "agent options": "defaults (--prestart)",
            "quick": args.quick,
        },
    )
    mem = psutil.virtual_memory()
    need = args.agents * 100 * MB  # agent + its spare job process
    print(f"memory: {mem.available / 2**30:.1f} GiB available; {args.agents} agents need about {need / 2**30:.1f} GiB")
    if need > mem.available * 0.8:
        print("warning: the agents may not fit in memory; lower --agents")
    print()

    single: list[dict[str, Any]] = []
    fleet_runs: list[dict[str, Any]] = []
    with temp_dir("fleet") as work:
        fleet = Fleet(work / "agents")
        try:
            t0 = time.perf_counter()
            fleet.start(args.agents, args.start_workers)
            start_wall = time.perf_counter() - t0
            pids = fleet.pids()
            print(f"started {len(pids)} agents in {start_wall:.1f} s")
            t0 = time.perf_counter()
            spares0 = wait_spare_job_processes(pids, timeout_s=args.run_timeout)
            spare_wait0 = time.perf_counter() - t0
            print(f"spare job processes ready: {spares0}/{len(pids)} ({spare_wait0:.1f} s more)")
            store_path = work / "store" / "edgebench.db"
            store = Store(store_path)
            devices = [
                Device(name=f"agent-{i:03d}", address=a.address, token_file=str(a.workdir / "token"))
                for i, a in enumerate(fleet.agents)
            ]
            for d in devices:
                store.add_device(d)
            store.close()
            t0 = time.perf_counter()
            first = probe_all(devices, timeout_s=300.0)
            probe_cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            warm = probe_all(devices)
            probe_warm = time.perf_counter() - t0
            online = sum(p.online for p in warm.values())
            print(
                f"probed {len(devices)} agents: first {probe_cold:.2f} s ({sum(p.online for p in first.values())} "
                f"online), warm {probe_warm * 1000:.0f} ms ({online} online)"
            )
            idle_rss = agents_rss(pids)
            snap0 = cpu_snapshot(pids)
            time.sleep(args.idle_s)
            idle_cpu = cpu_snapshot(pids).total - snap0.total
            idle_spare_rss = spares_rss(pids)
            print()
            print(
                f"{'run':>4}  {'agents':>6}  {'spares':>7}  {'wall':>8}  {'probe_all':>9}  {'jobs ok':>8}  "
                f"{'overhead med':>12}  {'p90':>9}  {'coord CPU':>9}  {'/job':>8}  {'agents CPU':>10}  "
                f"{'CPU floor':>9}  {'coord peak RSS':>14}  {'spares ready after':>18}"
            )
            order = [SINGLE]
            for _ in range(args.rounds):
                order += ["all", SINGLE]
            spares = spares0
            for k, selection in enumerate(order):
                model = write_model(work / f"run{k:02d}.json", k)
                snap0 = cpu_snapshot(pids)
                data = coordinator_run(work, store_path, model, selection, args.run_timeout, args.sleep_ms)
                snap1 = cpu_snapshot(pids)
                data["agents_cpu"] = cpu_parts(snap0, snap1)
                data["agents_cpu_s"] = data["agents_cpu"]["total"]
                data["floor_s"] = (data["agents_cpu_s"] + data["cpu_s"]) / cores
                data["spares_before"] = spares
                # The agents start their next spares as their jobs end: wait for them (outside any run's wall).
                t0 = time.perf_counter()
                spares = wait_spare_job_processes(pids, timeout_s=args.run_timeout)
                data["spare_wait_s"] = time.perf_counter() - t0
                data["spare_cpu_s"] = cpu_snapshot(pids).total - snap1.total
                (single if selection == SINGLE else fleet_runs).append(data)
                o = overheads(data["results"])["overhead"]
                ok = data["statuses"].get("succeeded", 0)
                jobs = max(1, sum(data["statuses"].values()))
                print(
                    f"{k + 1:>4}  {data['devices']:>6}  {data['spares_before']:>7}  {data['wall_ns'] / 1e9:>7.2f}s  "
                    f"{sum(data['probe_all_ns']) / 1e6:>7.0f}ms  {ok:>3}/{sum(data['statuses'].values()):<4}  "
                    f"{ms(median(o)) if o else '-':>12}  {ms(pct(o, 90)) if o else '-':>9}  "
                    f"{data['process_cpu_s']:>8.2f}s  {data['process_cpu_s'] / jobs * 1000:>5.0f} ms  "
                    f"{data['agents_cpu_s']:>9.2f}s  {data['floor_s']:>8.2f}s  "
                    f"{data['vm_hwm_kib'] * 1024 / MB:>11.1f} MB  {data['spare_wait_s']:>17.1f}s"
                )
            busy_rss = agents_rss(pids)
            busy_spare_rss = spares_rss(pids)
        finally:
            t0 = time.perf_counter()
            fleet.stop()
            stop_s = time.perf_counter() - t0
            left = fleet.leftovers()
            for pid in left:  # not expected; ends only processes of this fleet (found under its folder)
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
    print()

    # ------------------------------------------------------------------ figures
    statuses: Counter[str] = Counter()
    for d in single + fleet_runs:
        statuses.update(d["statuses"])
    expected = args.agents * len(fleet_runs) + len(single)
    all_ok = statuses.get("succeeded", 0) == expected and sum(statuses.values()) == expected
    f_parts = overheads([r for d in fleet_runs for r in d["results"]])
    s_parts = overheads([r for d in single for r in d["results"]])
    ov = f_parts["overhead"]
    ov_med = median(ov)
    f_wall = median([d["wall_ns"] / 1e9 for d in fleet_runs])
    s_wall = median([d["wall_ns"] / 1e9 for d in single])
    ratio = f_wall / s_wall
    floor = median([d["floor_s"] for d in fleet_runs])
    peak = max(d["vm_hwm_kib"] * 1024 for d in fleet_runs)
    ru_peak = max(d["ru_maxrss_bytes"] for d in fleet_runs)
    spreads = []
    agent_spreads = []
    first_dispatch = []
    for d in fleet_runs:
        disp = [r["dispatched"] for r in d["results"] if r["dispatched"]]
        began = [r["agent_started"] for r in d["results"] if r["agent_started"]]
        spreads.append(max(disp) - min(disp))
        agent_spreads.append(max(began) - min(began))
        first_dispatch.append(min(disp) - d["start_ns"])
    tails = [d["start_ns"] + d["wall_ns"] - max(r["stored"] for r in d["results"]) for d in fleet_runs]
    pre_dispatch = [r["dispatched"] - r["probe"][0] for d in fleet_runs for r in d["results"] if r["probe"][0]]
    probe_starts = []
    for d in fleet_runs:
        began = [r["probe"][0] for r in d["results"] if r["probe"][0]]
        if began:  # the dispatcher probes a device only if the run's planning probe is missing
            probe_starts.append(max(began) - min(began))
    writes = {k: [x for d in fleet_runs for x in d["store_ns"][k]] for k in fleet_runs[0]["store_ns"]}
    in_run_probe = median([sum(d["probe_all_ns"]) for d in fleet_runs])
    dev_probe = [r["probe"][1] - r["probe"][0] for d in fleet_runs for r in d["results"] if r["probe"][0]]

    def dist(values: Sequence[float]) -> str:
        return f"{ms(median(values))} median, {ms(pct(values, 90))} p90" if values else "-"

    n = args.agents
    rows = [
        Row(f"agents started ({args.start_workers} at a time)", f"{n} in {start_wall:.1f} s"),
        Row(
            "  per-agent start-to-ready (median / max)",
            f"{median(fleet.start_s):.2f} s / {max(fleet.start_s):.2f} s",
        ),
        Row(f"first probe of {n} agents (waits for runtime probes)", f"{probe_cold:.2f} s"),
        Row(f"warm probe of {n} agents", f"{probe_warm * 1000:.0f} ms"),
        Row("(1) jobs per status, all runs", ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))),
        Row(
            "(1) every job SUCCEEDED",
            f"{statuses.get('succeeded', 0)}/{expected}",
            f"{expected}/{expected}",
            all_ok,
        ),
        Row(
            f"(2) coordinator overhead per job (dispatch to stored), {n} agents (median)",
            ms(ov_med),
            f"<= {ms(OVERHEAD_TARGET_NS)}",
            ov_med <= OVERHEAD_TARGET_NS,
        ),
        Row("(2) overhead p90 / max", f"{ms(pct(ov, 90))} / {ms(max(ov))}"),
        Row(
            f"(2) coordinator CPU per job, {n} agents (median of runs)",
            f"{median([d['process_cpu_s'] / n for d in fleet_runs]) * 1000:.1f} ms whole process "
            f"({median([d['cpu_s'] / n for d in fleet_runs]) * 1000:.1f} ms inside start_run)",
        ),
        Row(
            "(2) coordinator CPU per job, 1 agent (median of runs)",
            f"{median([d['process_cpu_s'] for d in single]) * 1000:.0f} ms whole process "
            f"({median([d['cpu_s'] for d in single]) * 1000:.0f} ms inside start_run)",
        ),
        Row("(2)   dispatch -> accepted event received", dist(f_parts["to_accepted"])),
        Row("(2)   dispatch -> job process started (child)", dist(f_parts["to_child"])),
        Row("(2)     of which job process start (starting->loading)", dist(f_parts["child_start"])),
        Row("(2)   job process finished -> result received", dist(f_parts["from_child"])),
        Row("(2)   result received -> stored (validate, commit)", dist(f_parts["store"])),
        Row("(2) overhead, 1 agent (median, p90)", dist(s_parts["overhead"])),
        Row("(2)   1 agent: dispatch -> job process started", dist(s_parts["to_child"])),
        Row("(2)   1 agent: of which job process start", dist(s_parts["child_start"])),
        Row("(2)   1 agent: job process finished -> result received", dist(s_parts["from_child"])),
        Row("(2)   1 agent: result received -> stored", dist(s_parts["store"])),
        Row(f"(3) run wall, {n} agents (median of {len(fleet_runs)})", f"{f_wall:.2f} s"),
        Row(f"(3) run wall, 1 agent (median of {len(single)})", f"{s_wall:.2f} s"),
        Row(f"(3) wall {n} agents / 1 agent", f"{ratio:.2f}x", f"<= {RATIO_TARGET:g}x", ratio <= RATIO_TARGET),
        Row(
            f"(3) CPU floor of the {n}-agent run ({cores} cores)",
            f"{floor:.2f} s = {floor / s_wall:.2f}x the 1-agent wall; wall/floor {f_wall / floor:.2f}",
        ),
        Row(
            "(3) CPU per job in the run: agent+job process / coordinator",
            f"{median([d['agents_cpu_s'] for d in fleet_runs]) / n * 1000:.0f} ms / "
            f"{median([d['cpu_s'] for d in fleet_runs]) / n * 1000:.1f} ms",
        ),
        Row(
            "(3)   of which per job: agent / job process (taken to exit) / next spare's start-up (median)",
            " / ".join(
                f"{median([d['agents_cpu'][k] for d in fleet_runs]) / n * 1000:.0f} ms"
                for k in ("agents", "jobs", "spares")
            ),
        ),
        Row(
            "(3)   1 agent: agent / job process / next spare's start-up (median)",
            " / ".join(
                f"{median([d['agents_cpu'][k] for d in single]) * 1000:.0f} ms" for k in ("agents", "jobs", "spares")
            ),
        ),
        Row(
            f"(3) {n} idle agents (and spares): CPU over {args.idle_s:g} s",
            f"{idle_cpu:.2f} s ({idle_cpu / args.idle_s * 100:.0f}% of one core)",
        ),
        Row(
            f"spares' start after a {n}-agent run: wait / CPU (median)",
            f"{median([d['spare_wait_s'] for d in fleet_runs]):.1f} s / "
            f"{median([d['spare_cpu_s'] for d in fleet_runs]):.1f} s "
            f"({median([d['spare_cpu_s'] for d in fleet_runs]) / n * 1000:.0f} ms per agent)",
        ),
        Row(
            "spare job processes ready before each run (min)",
            f"{min(d['spares_before'] for d in fleet_runs)}/{n} (N-agent runs), "
            f"{min(d['spares_before'] for d in single)}/{n} (1-agent runs)",
        ),
        Row(f"probe_all inside a run, {n} agents (median)", ms(in_run_probe)),
        Row("dispatcher's per-device probe (again) in a run", dist(dev_probe) if dev_probe else "none (reused)"),
        Row("run start -> first job dispatched (median)", ms(median(first_dispatch))),
        Row("job dispatch spread across devices (median)", ms(median(spreads))),
        *(
            [
                Row("  device threads' start spread (first probe call)", ms(median(probe_starts))),
                Row("  device thread: probe start -> job dispatched", dist(pre_dispatch)),
            ]
            if probe_starts
            else []
        ),
        *(Row(f"  Store.{k} wall time in a {n}-agent run (waits incl.)", dist(v)) for k, v in writes.items()),
        Row("job process start spread across devices (median)", ms(median(agent_spreads))),
        Row(
            f"(4) coordinator peak RSS, {n} agents (max of runs)",
            f"{peak / MB:.1f} MB (ru_maxrss {ru_peak / MB:.1f} MB)",
            f"<= {RSS_TARGET_BYTES / MB:.0f} MB",
            peak <= RSS_TARGET_BYTES,
        ),
        Row(
            "(4) coordinator peak RSS, 1 agent (max of runs)",
            f"{max(d['vm_hwm_kib'] * 1024 for d in single) / MB:.1f} MB",
        ),
        Row(
            "coordinator process: CPU / wall incl. start-up (median)",
            f"{median([d['process_cpu_s'] for d in fleet_runs]):.2f} s / "
            f"{median([d['process_s'] for d in fleet_runs]):.2f} s",
        ),
        Row("agents' RSS, all (idle / after runs)", f"{idle_rss / MB:.0f} MB / {busy_rss / MB:.0f} MB"),
        Row(
            "spare job processes' RSS, all (idle / after runs)",
            f"{idle_spare_rss / MB:.0f} MB / {busy_spare_rss / MB:.0f} MB",
        ),
        Row("last result stored -> start_run returned (median)", ms(median(tails))),
        Row(
            "latency samples per job (median, N-agent / 1-agent runs)",
            f"{median([x for d in fleet_runs for x in d['samples']]):.0f} / "
            f"{median([x for d in single for x in d['samples']]):.0f}",
        ),
        Row(f"stop {n} agents (SIGTERM, then kill)", f"{stop_s:.2f} s"),
        Row("agent processes left running after stop", str(len(left)), "0", not left),
    ]
    print_table("fleet scale", rows)
    print_verdict(rows)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=None, help="agents in the fleet (default 100; --quick 10)")
    parser.add_argument("--rounds", type=int, default=3, help="N-agent runs (1-agent runs: one more, around them)")
    parser.add_argument("--start-workers", type=int, default=32, help="agents started at a time")
    parser.add_argument("--run-timeout", type=float, default=600.0, help="seconds one coordinator run may take")
    parser.add_argument("--quick", action="store_true", help="short run: 10 agents, 2 N-agent runs")
    parser.add_argument("--idle-s", type=float, default=5.0, help="seconds to measure the idle fleet's CPU use")
    parser.add_argument(
        "--sleep-ms", type=float, default=2.0, help="null runtime: sleep per inference (ms), simulated accelerator"
    )
    parser.add_argument("--coordinator-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--devices", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.coordinator_only:
        return coordinator_main(args)
    if args.quick:
        args.rounds = min(args.rounds, 2)
    if args.agents is None:
        args.agents = 10 if args.quick else 100
    return launcher_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
