"""The coordinator's side of the trust boundary, attacked through agents that are real gRPC servers on
127.0.0.1 (scripted fakes from tests/fake_agent.py, and a real `edgebench-agent serve`), driving the real
`edgebench` CLI in a child process where what a user sees is the point.

F10  agent strings are data in every output: no markup, no terminal control, no bidi override.
F14  a progress flood leaves the coordinator's memory flat and the run finishes.
F16  an upload the agent rejects as corrupt (DATA_LOSS) is sent again from offset 0; if it stays corrupt,
     the jobs stay redoable by `run --resume`, which completes them once the agent is healthy.
F17  processes opening the same fresh store at the same instant all succeed; the schema is applied once.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from coordinator.dispatch.client import sha256_file
from coordinator.dispatch.local import LocalAgent
from coordinator.runs import start_run
from coordinator.store.sqlite import Store
from coordinator.types import Device, JobStatus, MeasurementSettings, RunData
from protos.edgebench.agent.v1 import agent_pb2 as pb
from tests.fake_agent import FakeAgent, device_info, good_result, runtime, serve

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "attack-test-token-0123456789"
RUNTIMES = ("onnxruntime", "openvino")
TWO_RUNTIMES = [runtime("onnxruntime", pb.MODEL_FORMAT_ONNX), runtime("openvino", pb.MODEL_FORMAT_ONNX)]
QUICK = MeasurementSettings(
    min_iterations=1, min_duration_s=0.01, warmup_iterations=0, max_duration_s=1.0, wall_time_s=30.0
)
QUICK_FLAGS = ("--warmup", "0", "--min-iterations", "1", "--min-duration", "0", "--max-duration", "1")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from coordinator.models.synthetic import build_mlp

    return build_mlp(tmp_path_factory.mktemp("model") / "mlp.onnx", features=8, hidden=8, num_classes=4)


def fake(**kwargs: Any) -> FakeAgent:
    kwargs.setdefault("info", device_info(runtimes=TWO_RUNTIMES))
    return FakeAgent(token=TOKEN, **kwargs)


@contextmanager
def fleet(tmp_path: Path, agents: dict[str, FakeAgent]) -> Iterator[Store]:
    """Serve each fake agent and register it under its name in a fresh store at tmp_path/edgebench.db."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    store = Store(tmp_path / "edgebench.db")
    with ExitStack() as stack:
        for name, agent in agents.items():
            address = stack.enter_context(serve(agent))
            store.add_device(Device(name=name, address=address, token_file=str(token_file)))
        yield store
    store.close()


def edgebench(db: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.Popen[bytes]:
    """The real CLI in a child process, 80 columns wide, not a terminal unless `env` says so."""
    environ = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR")}
    environ.update({"COLUMNS": "80", "LINES": "50", "PYTHONIOENCODING": "utf-8", **(env or {})})
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "--db", str(db), *args],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 90) -> tuple[int, bytes, bytes]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"edgebench did not finish in {timeout} s: {out[-2000:]!r} {err[-2000:]!r}") from None
    return proc.returncode, out, err


def cli(db: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> tuple[int, bytes, bytes]:
    return finish(edgebench(db, *args, env=env), timeout)


# ---------------------------------------------------------------------------------------------- F10

#: rich markup: "[/x]" made rich raise (the CLI crashed); the others restyle, link or substitute.
MARKUP = ("[/x]", "[link=http://evil]click[/link]", "[bold red]loud[/]", ":skull:")
#: Terminal controls and bidi overrides: each acts on a terminal if it reaches it raw.
CONTROLS = (
    "\x1b[2J\x1b[31mred\x1b[0m",  # clear the screen, colour
    "\x1b]8;;http://evil\x1b\\osc8\x1b]8;;\x1b\\",  # OSC 8 hyperlink
    "\x1b]52;c;ZXZpbA==\x07",  # OSC 52: write the clipboard
    "ring\x07",  # BEL
    "XXXX\x08\x08\x08\x08",  # backspaces erase what came before
    "AAAA\rBBBB",  # CR: overwrite the line
    "\x9b31mC1",  # C1 CSI
    "del\x7f",
    "\u202eevil\u202c",  # right-to-left override
    "\u2066iso\u2069",  # bidi isolate
)
EVIL = " ".join(MARKUP + CONTROLS)
#: What the test, independently of the code under test, calls unsafe on a terminal.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: Box-drawing and spacing rich puts around and inside table cells.
_LAYOUT = re.compile(r"[\s\u2500-\u257f|]")


def assert_inert(raw: bytes, what: str, *, allow_crlf: bool = False) -> str:
    """`raw` is valid UTF-8 without one control or bidi character (newlines apart); returns it decoded."""
    text = raw.decode("utf-8")
    if allow_crlf:
        text = text.replace("\r\n", "\n")
    found = sorted({repr(c) for c in UNSAFE.findall(text.replace("\n", "").replace("\t", ""))})
    assert not found, f"{what}: control characters reached the output: {found}"
    assert "💀" not in text, f"{what}: an emoji code was substituted"
    return text


def squashed(text: str) -> str:
    """The output without table layout, so a cell folded over several lines reads as one string."""
    return _LAYOUT.sub("", text)


def _hostile_result(job: pb.BenchmarkJob) -> pb.BenchmarkResult:
    if job.runtime.name == "openvino":  # a failed job: its message is the last column of the summary
        return pb.BenchmarkResult(job_id=job.job_id, status=pb.BENCHMARK_STATUS_FAILED, message=EVIL, diagnostics=EVIL)
    return good_result(job, message=EVIL, diagnostics=EVIL)


def _hostile_progress(job: pb.BenchmarkJob) -> Iterator[pb.JobProgress]:
    for i in range(3):  # spaced so the live table (4 redraws per second) shows each note
        yield pb.JobProgress(phase=pb.JOB_PHASE_MEASURING, iterations_done=i + 1, message=EVIL)
        time.sleep(0.3)


def hostile_agents() -> dict[str, FakeAgent]:
    info = device_info(
        runtimes=[
            *(runtime(rt, pb.MODEL_FORMAT_ONNX, version=EVIL) for rt in RUNTIMES),
            pb.RuntimeInfo(name="tensorrt", available=False, unavailable_reason=EVIL),
        ],
        hostname=EVIL,
        cpu_model=EVIL,
        os_name=EVIL,
        board_model=EVIL,
        agent_version=EVIL,
        device_id=EVIL,
        gpus=[pb.GpuInfo(name=EVIL)],
    )
    return {
        "mallory": fake(info=info, result=_hostile_result, progress=_hostile_progress),
        # gRPC error details are the agent's text too: they become the job's message.
        "grumpy": fake(refuse=(grpc.StatusCode.INVALID_ARGUMENT, EVIL)),
    }


def test_f10_agent_strings_are_data_in_run_summary_and_progress(tmp_path: Path, model: Path) -> None:
    """`edgebench run` against agents whose every string is hostile, without a terminal (plain log lines
    and the summary table) and on a forced terminal (rich Live progress table). Before: "[/x]" made the
    CLI crash with a MarkupError; escape sequences, OSC 8 links, BEL, CR and U+202E reached the terminal
    raw; "[link=...]" became a clickable link. Now: exit code 4 (jobs failed, no crash, no traceback), no
    control byte of the agent's in the output, the brackets shown literally, the controls visibly escaped."""
    with fleet(tmp_path, hostile_agents()) as store:
        db = store.path
        flags = ("run", str(model), "--runtimes", ",".join(RUNTIMES), *QUICK_FLAGS, "--name", "[/x] \x1b[31mred")
        code, out, err = cli(db, *flags, timeout=120)
        assert code == 4, (out[-3000:], err[-3000:])  # 4: the run finished, some jobs did not succeed
        assert b"Traceback" not in err and b"MarkupError" not in err, err[-3000:]
        text = assert_inert(out, "run (plain)")
        assert_inert(err, "run (plain, stderr)")
        # One log line per job, literal: the failed job's message shows every markup payload as sent.
        line = next(ln for ln in text.splitlines() if ln.startswith("[mallory] fp32/openvino failed: "))
        for payload in MARKUP:
            assert payload in line, (payload, line)
        assert "\\x1b[2J" in line and "AAAA\\x0dBBBB" in line  # the controls are visible, not acted on
        flat = squashed(text)
        assert flat.count("[/x]") >= 3 and "[link=http://evil]click[/link]" in flat
        assert "INVALID_ARGUMENT" in text  # grumpy's refusal, its details escaped the same way

        # The same run on a terminal: the live table draws agent notes while jobs run.
        code, out, err = cli(db, *flags, env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}, timeout=120)
    assert code == 4, (out[-3000:], err[-3000:])
    assert b"Traceback" not in err, err[-3000:]
    term = out.decode("utf-8")
    assert "iterations" in term  # the live table was drawn
    # rich styles with its own CSI sequences; nothing else of the kind may appear.
    for raw in ("\x1b[2J", "\x1b]", "\x07", "\x08", "AAAA\rBBBB", "\x9b", "\x7f", "\u202e", "\u2066", "💀"):
        assert raw not in term, repr(raw)
    assert "\\x1b]8;;http://evil" in squashed(term)
    assert "[link=http://evil]click[/link]" in squashed(term)


def test_f10_agent_strings_are_data_in_fleet_runs_and_reports(tmp_path: Path, model: Path) -> None:
    """`fleet list`, `fleet show`, `runs` and `report` in every format over a run with hostile agents.
    Before: `fleet list` rendered agent strings as markup (a "[/x]" hostname crashed it) and `fleet show`
    and the reports passed C1 controls and bidi overrides through. Now: every command exits 0, the
    terminal formats hold no control character, the brackets are literal, and JSON keeps the strings
    verbatim (escaped as \\uXXXX, decoding to exactly what the agent sent)."""
    with fleet(tmp_path, hostile_agents()) as store:
        run = start_run(store, model=model, dataset=None, runtimes=list(RUNTIMES), settings=QUICK, name=EVIL)
        db = store.path
        outputs = {
            "fleet list": cli(db, "fleet", "list"),
            "fleet show": cli(db, "fleet", "show", "mallory"),
        }
    outputs["runs"] = cli(db, "runs")
    for fmt in ("table", "md", "csv", "html", "json"):
        outputs[f"report {fmt}"] = cli(db, "report", run.spec.run_id, "--format", fmt)
    texts = {}
    for what, (code, out, err) in outputs.items():
        assert code == 0, (what, out[-2000:], err[-2000:])
        texts[what] = assert_inert(out, what, allow_crlf=what == "report csv")
        assert_inert(err, what)
    for what in ("fleet list", "fleet show", "runs", "report table"):
        assert "[/x]" in squashed(texts[what]), what
    assert "[link=http://evil]click[/link]" in squashed(texts["fleet list"])
    assert "unavailable: [/x] [link=http://evil]click[/link]" in texts["fleet show"]
    data = json.loads(texts["report json"])
    cells = {(c["device"], c["runtime"]): c for c in data["cells"]}
    assert cells[("mallory", "openvino")]["message"] == EVIL
    assert cells[("mallory", "onnxruntime")]["diagnostics"] == EVIL
    assert data["run"]["name"] == EVIL


# ---------------------------------------------------------------------------------------------- F14

FLOOD_EVENTS = 1_000_000
FLOOD_S = 10.0
#: Events sent before the baseline is taken (gRPC buffers and the first redraw are warm by then).
WARM_EVENTS = 5_000
#: The coordinator's allowed RSS growth during the flood. Keeping every event (as it did) cost ~0.5 KB
#: each: 48 MiB for 97k events; coalesced, the growth measured 2 MiB.
MAX_GROWTH_BYTES = 16 * 2**20
#: Fewer events than this and the flood proves nothing (at 0.5 KB each they would fit under the bound).
MIN_EVENTS = 50_000


def test_f14_progress_flood_keeps_coordinator_memory_flat(tmp_path: Path, model: Path) -> None:
    """An agent streams progress events as fast as gRPC carries them (up to a million, for FLOOD_S) with a
    4 KB message each, then the result. Before: the CLI appended every event to a list and redrew per
    event, so its memory grew by ~0.5 KB per event without bound. Now: the RSS of the `edgebench run` child,
    sampled every 20 ms, grows by less than MAX_GROWTH_BYTES, and the run finishes with the job done."""
    sent = 0
    warm = threading.Event()
    done = threading.Event()

    def flood(job: pb.BenchmarkJob) -> Iterator[pb.JobProgress]:
        nonlocal sent
        event = pb.JobProgress(phase=pb.JOB_PHASE_MEASURING, iterations_done=7, message="x" * 4096)
        deadline = time.monotonic() + FLOOD_S
        try:
            while sent < FLOOD_EVENTS and time.monotonic() < deadline:
                yield event
                sent += 1
                if sent == WARM_EVENTS:
                    warm.set()
        finally:
            done.set()

    with fleet(tmp_path, {"flood": fake(progress=flood)}) as store:
        proc = edgebench(store.path, "run", str(model), "--runtimes", "onnxruntime", *QUICK_FLAGS)
        child = psutil.Process(proc.pid)
        baseline = peak = 0
        stop = time.monotonic() + 60
        while not done.is_set() and proc.poll() is None and time.monotonic() < stop:
            try:
                rss = child.memory_info().rss
            except psutil.NoSuchProcess:
                break
            if warm.is_set():
                baseline = baseline or rss
                peak = max(peak, rss)
            time.sleep(0.02)
        code, out, err = finish(proc, timeout=60)
    assert code == 0, (out[-2000:], err[-2000:])
    assert "succeeded" in out.decode()
    assert sent >= MIN_EVENTS, f"only {sent} events were sent: the flood did not happen"
    assert baseline, "the flood never warmed up"
    growth = peak - baseline
    print(f"F14: {sent} progress events; coordinator RSS {baseline / 2**20:.1f} MiB -> peak {peak / 2**20:.1f} MiB")
    assert growth < MAX_GROWTH_BYTES, f"RSS grew by {growth / 2**20:.1f} MiB over {sent} events"


# ---------------------------------------------------------------------------------------------- F16


def _run(store: Store, model: Path) -> RunData:
    return start_run(store, model=model, dataset=None, runtimes=["onnxruntime"], settings=QUICK)


def test_f16_data_loss_on_a_resumed_upload_is_sent_again_from_offset_0(tmp_path: Path, model: Path) -> None:
    """The agent holds a damaged partial upload of the model, so resuming from its committed offset ends in
    DATA_LOSS (the agent discards the bytes). Before: the device's jobs became FAILED, which `--resume`
    never redoes. Now: the coordinator sends the whole file again from offset 0, once, and the job runs."""
    size = model.stat().st_size
    agent = fake(stored=set(), partial_bytes=size // 2)
    with fleet(tmp_path, {"pi": agent}) as store:
        run = _run(store, model)
    job = run.jobs[0]
    assert job.status is JobStatus.SUCCEEDED, job.message
    digest = sha256_file(model)
    assert agent.uploads == [(digest, size // 2, size - size // 2), (digest, 0, size)]
    assert run.finished_at_ns


def test_f16_persistent_data_loss_leaves_jobs_for_resume(tmp_path: Path, model: Path) -> None:
    """An agent that answers every upload with DATA_LOSS. Before: FAILED (final; `--resume` skipped them).
    Now: two uploads (the retry from 0, no loop), the jobs PENDING with a message that says what failed and
    how to resume, the run unfinished; `edgebench run --resume` against the healed agent completes them."""
    agent = fake(stored=set(), upload_faults=[(grpc.StatusCode.DATA_LOSS, "digest mismatch")] * 2)
    with fleet(tmp_path, {"pi": agent}) as store:
        run = start_run(store, model=model, dataset=None, runtimes=list(RUNTIMES), settings=QUICK)
        assert len(agent.uploads) == 2 and [offset for _d, offset, _n in agent.uploads] == [0, 0]
        assert not run.finished_at_ns
        for job in run.jobs:
            assert job.status is JobStatus.PENDING and not job.status.final
            assert "failed the agent's sha256 check twice (DATA_LOSS: digest mismatch)" in job.message
            assert "the agent received other bytes than were sent" in job.message
            assert f"edgebench run --resume {run.spec.run_id}" in job.message
        assert not agent.rpcs("RunBenchmark")  # nothing ran on a corrupt artifact
        # The agent heals; the user resumes from the CLI, as the message says.
        code, out, err = cli(store.path, "run", "--resume", run.spec.run_id)
        assert code == 0, (out[-2000:], err[-2000:])
        resumed = store.load_run(run.spec.run_id)
    assert all(j.status is JobStatus.SUCCEEDED for j in resumed.jobs), [j.message for j in resumed.jobs]
    assert resumed.finished_at_ns and len(agent.rpcs("RunBenchmark")) == 2


def test_f16_damaged_partial_on_a_real_agent(tmp_path: Path, agent_factory: Callable[..., LocalAgent]) -> None:
    """A real agent holds a partial upload of other bytes under the model's digest (what a damaged disk
    leaves behind). Before: resuming it failed the digest check and the job was FAILED for good.
    Now: the agent discards it, the coordinator sends the model again from offset 0, and the job succeeds."""
    from coordinator.models.synthetic import build_mlp

    model = build_mlp(tmp_path / "wide.onnx", features=256, hidden=256, num_classes=4)  # ~0.25 MB
    size, digest = model.stat().st_size, sha256_file(model)
    agent = agent_factory()
    # Half the size in zeros where the agent keeps the part of an interrupted upload of this digest.
    (agent.workdir / "artifacts" / "partial" / f"{digest}.part").write_bytes(bytes(size // 2))
    with agent.client() as client:
        assert client.upload_status(digest).committed_offset_bytes == size // 2
    token_file = tmp_path / "token"
    token_file.write_text(agent.token)
    store = Store(tmp_path / "edgebench.db")
    store.add_device(Device(name="real", address=agent.address, token_file=str(token_file)))
    try:
        run = _run(store, model)
    finally:
        store.close()
    assert run.jobs[0].status is JobStatus.SUCCEEDED, run.jobs[0].message
    with agent.client() as client:
        assert client.find_missing([digest]) == []


# ---------------------------------------------------------------------------------------------- F17

PROCESSES = 8
ROUNDS = 5


def _open_stores(paths: list[str], barrier: Any, results: Any) -> None:
    """Child process: for each fresh file, wait for the others, then open the store at the same instant."""
    for path in paths:
        barrier.wait(timeout=60)
        try:
            store = Store(Path(path))
            results.put((path, "ok", store.applied))
            store.close()
        except Exception as exc:
            results.put((path, "error", f"{type(exc).__name__}: {exc}"))


def test_f17_processes_opening_a_fresh_store_at_once_all_succeed(tmp_path: Path) -> None:
    """PROCESSES child processes open the same new file, released together by a barrier, on ROUNDS fresh
    files. Before: two of them read schema version 0, both applied migration 1, and the second failed with
    "table devices already exists; restore it from a backup" (in every round). Now: all succeed, exactly
    one applies the migration per file, and the file is at the current version with its tables."""
    ctx = multiprocessing.get_context("spawn")
    paths = [str(tmp_path / f"round{i}.db") for i in range(ROUNDS)]
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    children = [ctx.Process(target=_open_stores, args=(paths, barrier, results)) for _ in range(PROCESSES)]
    for child in children:
        child.start()
    try:
        outcomes = [results.get(timeout=120) for _ in range(PROCESSES * ROUNDS)]
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    errors = [detail for _path, kind, detail in outcomes if kind == "error"]
    assert not errors, errors
    for path in paths:
        applied = [n for p, _kind, numbers in outcomes if p == path for n in numbers]
        assert applied == [1], (path, applied)  # one process applied the schema, the others found it
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"devices", "runs", "jobs", "results"} <= tables


#: `edgebench` itself, imported first and then released at a given wall-clock time, so that the processes
#: reach the store together instead of spread over their start-up times.
_RELEASED_CLI = (
    "import sys, time\n"
    "from coordinator.cli import main\n"
    "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
    "sys.argv = ['edgebench', *sys.argv[2:]]\n"
    "main()\n"
)


def test_f17_cli_commands_on_a_fresh_store_at_once(tmp_path: Path) -> None:
    """The user's view: `edgebench --db same.db runs` in PROCESSES processes released at the same instant on
    a file that does not exist yet. Before: all but one typically failed with "table devices already
    exists; restore it from a backup". Now: every one exits 0 and says there are no runs."""
    db = tmp_path / "shared.db"
    start_at = time.time() + 3.0  # after every child has imported the CLI (a late one only runs later)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RELEASED_CLI, str(start_at), "--db", str(db), "runs"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        code, out, err = finish(proc, timeout=90)
        assert code == 0, err[-2000:]
        assert b"no runs yet" in out
