"""Agents are untrusted input: fleet runs against scripted fake agents (real gRPC servers in this process)
that speak the wrong protocol, send malformed or hostile results, break streams or refuse jobs.

Every test drives the real coordinator path (start_run -> probe -> plan -> Dispatcher -> wire validation ->
SQLite store -> report) and checks what is stored, that nothing crashes, and that the run goes on.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator.dispatch.dispatcher import Dispatcher
from coordinator.fleet import probe
from coordinator.runs import resume_run, start_run
from coordinator.store.sqlite import Store
from coordinator.types import Device, JobRecord, JobStatus, MeasurementSettings, RunData
from protos.edgebench.agent.v1 import agent_pb2 as pb
from protos.version import CURRENT
from tests.fake_agent import FakeAgent, device_info, good_result, runtime, serve

QUICK = MeasurementSettings(
    min_iterations=1, min_duration_s=0.01, warmup_iterations=0, max_duration_s=1.0, wall_time_s=10.0
)
TOKEN = "fake-agent-token"
#: Two runtimes that both take ONNX, so each device gets two jobs, run in this order.
RUNTIMES = ("onnxruntime", "openvino")
TWO_RUNTIMES = [runtime("onnxruntime", pb.MODEL_FORMAT_ONNX), runtime("openvino", pb.MODEL_FORMAT_ONNX)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from coordinator.models.synthetic import build_mlp

    return build_mlp(tmp_path_factory.mktemp("model") / "mlp.onnx", features=8, hidden=8, num_classes=4)


def fake(**kwargs: Any) -> FakeAgent:
    kwargs.setdefault("info", device_info(runtimes=TWO_RUNTIMES))
    return FakeAgent(token=TOKEN, **kwargs)


@contextmanager
def fleet(tmp_path: Path, agents: dict[str, FakeAgent], *, token: str = TOKEN) -> Iterator[Store]:
    """Serve each fake agent, register it under its name (token file in tmp_path) in a fresh store."""
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    store = Store(tmp_path / "edgebench.db")
    with ExitStack() as stack:
        for name, agent in agents.items():
            address = stack.enter_context(serve(agent))
            store.add_device(Device(name=name, address=address, token_file=str(token_file)))
        yield store


def run_fleet(store: Store, model: Path, *, runtimes: tuple[str, ...] = RUNTIMES, **kwargs: Any) -> RunData:
    return start_run(store, model=model, dataset=None, devices="all", runtimes=list(runtimes), settings=QUICK, **kwargs)


def jobs_of(run: RunData) -> dict[tuple[str, str], JobRecord]:
    return {(j.device, j.runtime): j for j in run.jobs}


def assert_succeeded(job: JobRecord) -> None:
    assert job.status is JobStatus.SUCCEEDED, job.message
    assert job.result is not None and len(job.result.latencies_ns) == 50


# ---------------------------------------------------------------------------------------------- protocol


def test_incompatible_protocol_is_incompatible_and_the_run_goes_on(tmp_path: Path, model: Path) -> None:
    agents = {
        "future": fake(info=device_info(protocol=(CURRENT.major + 1, 0), runtimes=TWO_RUNTIMES)),
        "legacy": fake(info=device_info(protocol=(0, 0), runtimes=TWO_RUNTIMES)),
        "newer-minor": fake(info=device_info(protocol=(CURRENT.major, CURRENT.minor + 7), runtimes=TWO_RUNTIMES)),
        "pi": fake(),
    }
    with fleet(tmp_path, agents) as store:
        run = run_fleet(store, model)
        probes = {name: probe(store.device(name)) for name in agents}  # type: ignore[arg-type]
    jobs = jobs_of(run)
    for rt in RUNTIMES:
        future = jobs[("future", rt)]
        assert future.status is JobStatus.INCOMPATIBLE
        assert future.message == (
            f"device future: client speaks protocol {CURRENT}, agent speaks {CURRENT.major + 1}.0: "
            "incompatible majors; upgrade the coordinator"
        )
        assert future.result is None
        legacy = jobs[("legacy", rt)]
        assert legacy.status is JobStatus.INCOMPATIBLE
        assert "peer sent no protocol version" in legacy.message
        assert_succeeded(jobs[("newer-minor", rt)])
        assert_succeeded(jobs[("pi", rt)])
    # An incompatible agent is never sent anything past GetDeviceInfo.
    assert {rpc for rpc, _ in agents["future"].calls} == {"GetDeviceInfo"}
    assert {rpc for rpc, _ in agents["legacy"].calls} == {"GetDeviceInfo"}
    assert not run.finished_at_ns  # INCOMPATIBLE is redone by --resume, so the run is not finished

    assert probes["future"].online and not probes["future"].compatible
    assert probes["future"].protocol == f"{CURRENT.major + 1}.0"
    assert "incompatible majors; upgrade the coordinator" in probes["future"].compatibility
    assert not probes["legacy"].compatible and "no protocol version" in probes["legacy"].compatibility
    assert probes["newer-minor"].compatible and "the agent has features" in probes["newer-minor"].compatibility
    assert probes["pi"].compatible
    stored = {p.name: p for p in run.devices}
    assert not stored["future"].compatible and stored["pi"].compatible


def test_wrong_token_is_unreachable_with_a_hint(tmp_path: Path, model: Path) -> None:
    with fleet(tmp_path, {"locked": fake()}, token="not-the-token") as store:
        run = run_fleet(store, model)
    for job in run.jobs:
        assert job.status is JobStatus.UNREACHABLE
        assert "UNAUTHENTICATED" in job.message and "--token-file" in job.message


def test_oversized_device_strings_are_cut(tmp_path: Path, model: Path) -> None:
    info = device_info(
        runtimes=[runtime("onnxruntime", pb.MODEL_FORMAT_ONNX, 99, version="v" * 10_000)],
        hostname="h" * 100_000,
        cpu_model="c" * 100_000,
        architecture="a" * 10_000,
        gpus=[pb.GpuInfo(name="g" * 10_000)] * 100,
    )
    with fleet(tmp_path, {"chatty": fake(info=info)}) as store:
        found = probe(store.device("chatty"))  # type: ignore[arg-type]
        run = run_fleet(store, model, runtimes=("onnxruntime",))
    assert len(found.hostname) == 200 and len(found.cpu_model) == 200 and len(found.architecture) == 50
    assert len(found.gpus) == 16 and all(len(g) == 200 for g in found.gpus)
    assert found.runtimes[0].formats == ("onnx",)  # the unknown format 99 is dropped
    assert len(found.runtimes[0].version) == 50
    assert_succeeded(run.jobs[0])


# ---------------------------------------------------------------------------------------------- malformed


def _timing(latencies: list[int], wall: int | None = None) -> pb.TimingReport:
    return pb.TimingReport(latencies_ns=latencies, steady_wall_ns=sum(latencies) if wall is None else wall)


def _accuracy(**fields: Any) -> pb.AccuracyReport:
    return pb.AccuracyReport(samples=100, **fields)


def _bad_time(field: str, seconds: int, nanos: int = 0) -> Any:
    def craft(job: pb.BenchmarkJob) -> pb.BenchmarkResult:
        result = good_result(job)
        stamp = result.provenance.before.at if field == "provenance.before.at" else getattr(result, field)
        stamp.seconds, stamp.nanos = seconds, nanos
        return result

    return craft


def case(name: str, craft: Any, problem: str, *marks: Any) -> Any:
    return pytest.param(craft, problem, id=name, marks=marks)


MALFORMED = [
    case(
        "nan top1",
        lambda job: good_result(job, accuracy=_accuracy(has_labels=True, top1=math.nan, top5=0.5)),
        "accuracy.top1 = nan is outside [0.0, 1]",
    ),
    case(
        "top1 of 7",
        lambda job: good_result(job, accuracy=_accuracy(has_labels=True, top1=7.0, top5=0.9)),
        "accuracy.top1 = 7.0 is outside [0.0, 1]",
    ),
    case(
        "infinite cosine",
        lambda job: good_result(
            job, accuracy=_accuracy(has_reference=True, top1_agreement=1.0, cosine_similarity=math.inf)
        ),
        "accuracy.cosine_similarity = inf is outside [-1.0, 1]",
    ),
    case(
        "zero sample",
        lambda job: good_result(job, timing=_timing([100_000, 0, 100_000])),
        "a latency sample is zero or longer than an hour",
    ),
    case(
        "negative-looking sample",  # -1 as the agent's uint64
        lambda job: good_result(job, timing=_timing([100_000, 2**64 - 1], wall=2**63)),
        "a latency sample is zero or longer than an hour",
    ),
    case(
        "over a million samples",
        lambda job: good_result(job, timing=_timing([1_000] * 1_000_001)),
        "1000001 samples exceed the limit of 1000000",
    ),
    case(
        "succeeded without samples",
        lambda job: good_result(job, timing=_timing([])),
        "a succeeded result carries no latency samples",
    ),
    case(
        "wall time shorter than samples",
        lambda job: good_result(job, timing=_timing([100_000] * 10, wall=1)),
        "steady-state wall time is shorter than its samples",
    ),
    case(
        "phase out of range",
        lambda job: good_result(job, timing=pb.TimingReport(latencies_ns=[1_000], steady_wall_ns=1_000, load_ns=2**63)),
        f"timing.load_ns = {2**63} is out of range",
    ),
    case(
        "result for another job",
        lambda job: good_result(job, job_id="someone-else's-job"),
        'result is for job "someone-else\'s-job", not',
    ),
    case("unknown status 42", lambda job: good_result(job, status=42), "unknown status 42"),
    case(
        "100 KB message",
        lambda job: good_result(job, status=pb.BENCHMARK_STATUS_FAILED, message="x" * 102_400),
        "message of 102400 characters is over the limit",
    ),
    case(
        "100 KB provenance",
        lambda job: good_result(job, provenance=pb.Provenance(runtime_details={"blob": "y" * 102_400})),
        "provenance is over the size limit",
    ),
    case(
        "peak below baseline memory",
        lambda job: good_result(job, memory=pb.MemoryReport(rss_before_load_bytes=2**30, peak_rss_bytes=2**20)),
        "peak RSS is below the RSS before load",
    ),
    case(
        "exabyte memory",
        lambda job: good_result(job, memory=pb.MemoryReport(rss_before_load_bytes=2**62, peak_rss_bytes=2**63)),
        "memory.rss_before_load_bytes is out of range",
    ),
    case("started_at in year 10^11", _bad_time("started_at", 2**62), "started_at"),
    case("finished_at with negative nanos", _bad_time("finished_at", 1_700_000_000, -1), "finished_at"),
    case("provenance time out of range", _bad_time("provenance.before.at", -(2**62)), "provenance"),
]


@pytest.mark.parametrize(("craft", "problem"), MALFORMED)
def test_malformed_result_is_rejected_and_the_device_goes_on(
    tmp_path: Path, model: Path, craft: Any, problem: str
) -> None:
    def result(job: pb.BenchmarkJob) -> pb.BenchmarkResult:
        # The first job on the device gets the malformed result, the next one a good one.
        return craft(job) if job.runtime.name == "onnxruntime" else good_result(job)

    agent = fake(result=result)
    with fleet(tmp_path, {"liar": agent}) as store:
        run = run_fleet(store, model)
        db = store.path
    jobs = jobs_of(run)
    bad = jobs[("liar", "onnxruntime")]
    assert bad.status is JobStatus.REJECTED, bad.message
    assert bad.message.startswith("result rejected: ") and problem in bad.message, bad.message
    assert len(bad.message) < 300
    # Nothing of the rejected result is kept but its status and the reason.
    assert bad.result is not None and bad.result.status is JobStatus.REJECTED
    assert bad.result.latencies_ns == () and bad.result.provenance == {} and bad.result.diagnostics == ""
    assert bad.result.top1 is None and bad.result.load_ns == 0 and bad.result.peak_rss_bytes == 0
    with closing(sqlite3.connect(db)) as conn:
        samples, size = conn.execute(
            "SELECT n_samples, length(samples) + length(result_json) FROM results WHERE job_id = ?", (bad.job_id,)
        ).fetchone()
    assert samples == 0 and size < 2_000
    # The next job on the same device still ran, and the run is complete (REJECTED is final).
    assert agent.rpcs("RunBenchmark") == [bad.job_id, jobs[("liar", "openvino")].job_id]
    assert_succeeded(jobs[("liar", "openvino")])
    assert run.finished_at_ns


def test_oversized_diagnostics_are_cut_not_rejected(tmp_path: Path, model: Path) -> None:
    def result(job: pb.BenchmarkJob) -> pb.BenchmarkResult:
        return pb.BenchmarkResult(
            job_id=job.job_id, status=pb.BENCHMARK_STATUS_FAILED, message="crashed", diagnostics="z" * 200_000
        )

    with fleet(tmp_path, {"noisy": fake(result=result)}) as store:
        run = run_fleet(store, model, runtimes=("onnxruntime",))
    job = run.jobs[0]
    assert job.status is JobStatus.FAILED and job.message == "crashed"
    assert job.result is not None and job.result.diagnostics == "z" * 8_192


# ---------------------------------------------------------------------------------------------- markup

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
PIPE = "| pipe |"
MATH = "$\\alpha$"
EVIL = f"{SCRIPT} {IMG} {PIPE} {MATH} a\\|b"
#: A multi-line message that tries to add its own table row.
EVIL_MESSAGE = f"{EVIL}\n| injected | row | {SCRIPT} |\n"
EVIL_DIAGNOSTICS = f"Traceback:\n{EVIL}\n{IMG}"


def _evil_result(job: pb.BenchmarkJob) -> pb.BenchmarkResult:
    if job.runtime.name == "openvino":  # a failed job: the message is shown in the table
        return pb.BenchmarkResult(
            job_id=job.job_id, status=pb.BENCHMARK_STATUS_FAILED, message=EVIL_MESSAGE, diagnostics=EVIL_DIAGNOSTICS
        )
    result = good_result(job, message=EVIL, diagnostics=EVIL_DIAGNOSTICS)
    p = result.provenance
    p.device_id = p.agent_version = p.os = p.kernel = p.runtime_version = p.python_version = EVIL
    p.execution_providers[:] = [EVIL, IMG]
    p.runtime_details[EVIL] = EVIL
    return result


@pytest.fixture
def evil_report(tmp_path: Path, model: Path) -> Any:
    report_pkg = pytest.importorskip("coordinator.report")
    info = device_info(
        runtimes=[runtime(rt, pb.MODEL_FORMAT_ONNX, version=SCRIPT) for rt in RUNTIMES],
        hostname=EVIL,
        cpu_model=EVIL,
        os_name=EVIL,
        board_model=EVIL,
        agent_version=IMG,
        device_id=EVIL,
        gpus=[pb.GpuInfo(name=EVIL)],
    )
    with fleet(tmp_path, {"mallory": fake(info=info, result=_evil_result), "pi": fake()}) as store:
        run = run_fleet(store, model)
    jobs = jobs_of(run)
    assert jobs[("mallory", "onnxruntime")].status is JobStatus.SUCCEEDED
    assert jobs[("mallory", "openvino")].status is JobStatus.FAILED
    assert_succeeded(jobs[("pi", "onnxruntime")])
    return report_pkg, report_pkg.build_report(run)


def _split_row(line: str) -> list[str]:
    """A Markdown table row's cells, splitting only at pipes that no backslash escapes."""
    cells, cur, i = [], "", 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            cur += line[i : i + 2]
            i += 2
            continue
        if ch == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    cells.append(cur)
    return cells


def test_markdown_report_escapes_agent_strings(evil_report: Any) -> None:
    pkg, report = evil_report
    text = pkg.render(report, "md")
    assert "<script" not in text and "<img" not in text and "$\\alpha$" not in text
    tables: list[list[str]] = []
    previous_was_row = False
    for line in text.splitlines():
        is_row = line.startswith("|")
        if is_row and not previous_was_row:
            tables.append([])
        if is_row:
            tables[-1].append(line)
        previous_was_row = is_row
    assert len(tables) >= 3
    for table in tables:
        widths = [len(_split_row(row)) for row in table]
        assert len(set(widths)) == 1, (widths, table)
    rows = [row for table in tables for row in table]
    assert any("\\| pipe \\|" in row for row in rows)  # the agent's pipes are in a cell, escaped
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in row for row in rows)
    assert not any("injected" in row and row.startswith("| injected") for row in rows)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_json_report_keeps_agent_strings_verbatim(evil_report: Any) -> None:
    pkg, report = evil_report
    data = json.loads(pkg.render(report, "json"))
    cells = {(c["device"], c["runtime"]): c for c in data["cells"]}
    good, failed = cells[("mallory", "onnxruntime")], cells[("mallory", "openvino")]
    assert good["message"] == EVIL
    assert good["diagnostics"] == EVIL_DIAGNOSTICS
    assert good["provenance"]["runtime_version"] == EVIL
    assert good["provenance"]["device_id"] == EVIL
    assert good["provenance"]["execution_providers"] == [EVIL, IMG]
    assert [EVIL, EVIL] in good["provenance"]["runtime_details"]
    assert failed["message"] == EVIL_MESSAGE and failed["diagnostics"] == EVIL_DIAGNOSTICS
    info = next(d["info"] for d in data["devices"] if d["device"] == "mallory")
    assert info["hostname"] == EVIL and info["cpu_model"] == EVIL and info["board"] == EVIL
    assert info["gpus"] == [EVIL] and info["agent_version"] == IMG
    everything = set(_strings(data))
    for payload in (SCRIPT, IMG, PIPE, MATH):
        assert any(payload in s for s in everything), payload


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_report_escapes_agent_strings(evil_report: Any) -> None:
    pytest.importorskip("coordinator.report.render_html", reason="the HTML renderer is not written yet")
    pkg, report = evil_report
    text = pkg.render(report, "html")
    assert "<script>alert(1)" not in text
    assert "<img src=x onerror" not in text and '<img src="x"' not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    parser = _Tags()
    parser.feed(text)
    parser.close()
    for tag, attrs in parser.tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, attrs)
            assert "alert(1)" not in (value or "") or tag not in ("img", "script", "a", "iframe"), (tag, attrs)
        assert not (tag == "img" and ("src", "x") in attrs), (tag, attrs)
    # The payloads survive as visible text (decoded), not as markup.
    visible = "".join(parser.text)
    assert SCRIPT in visible and IMG in visible


def test_extreme_but_valid_timestamps_render_in_every_format(tmp_path: Path, model: Path) -> None:
    pkg = pytest.importorskip("coordinator.report")

    def result(job: pb.BenchmarkJob) -> pb.BenchmarkResult:
        r = good_result(job)
        r.started_at.seconds, r.started_at.nanos = -62_135_596_800, 0  # 0001-01-01T00:00:00Z
        r.finished_at.seconds, r.finished_at.nanos = 253_402_300_799, 999_999_999  # 9999-12-31T23:59:59.999999999Z
        return r

    with fleet(tmp_path, {"time-traveller": fake(result=result)}) as store:
        run = run_fleet(store, model, runtimes=("onnxruntime",))
    # Accepting them (they are valid Timestamps) or rejecting them as implausible are both fine; crashing is not.
    assert run.jobs[0].status in (JobStatus.SUCCEEDED, JobStatus.REJECTED)
    report = pkg.build_report(run)
    for fmt in pkg.FORMATS:
        assert pkg.render(report, fmt)


# ---------------------------------------------------------------------------------------------- streams


def test_broken_stream_ends_unreachable_then_resume_redoes_it(tmp_path: Path, model: Path) -> None:
    flaky = fake(break_stream=(grpc.StatusCode.UNAVAILABLE, "connection reset by the fake agent"))
    steady = fake()
    with fleet(tmp_path, {"flaky": flaky, "steady": steady}) as store:
        started = time.monotonic()
        run = run_fleet(store, model, dispatcher=Dispatcher(store, reconnect_s=1.0))
        elapsed = time.monotonic() - started
        jobs = jobs_of(run)
        first, second = jobs[("flaky", "onnxruntime")], jobs[("flaky", "openvino")]
        assert elapsed < 10, elapsed
        assert first.status is JobStatus.UNREACHABLE
        assert "agent became unreachable during the job" in first.message
        assert "UNAVAILABLE: connection reset by the fake agent" in first.message
        assert "--resume redoes it" in first.message
        assert second.status is JobStatus.UNREACHABLE
        assert "became unreachable during an earlier job" in second.message
        # It re-attached by the same id while the window was open, and never sent the second job.
        sent = flaky.rpcs("RunBenchmark")
        assert len(sent) >= 2 and set(sent) == {first.job_id}
        for rt in RUNTIMES:
            assert_succeeded(jobs[("steady", rt)])
        assert not run.finished_at_ns

        # The agent heals; --resume asks it for the lost job (it does not know it) and runs both.
        flaky.break_stream = None
        resumed = resume_run(store, run.spec.run_id, dispatcher=Dispatcher(store, reconnect_s=1.0))
    after = jobs_of(resumed)
    assert set(flaky.rpcs("GetBenchmarkResult")) == {first.job_id, second.job_id}
    for key in jobs:
        assert_succeeded(after[key])
    assert after[("flaky", "onnxruntime")].job_id == first.job_id  # same id: the agent never ran it
    assert after[("steady", "onnxruntime")].result == jobs[("steady", "onnxruntime")].result  # kept as it was
    assert resumed.finished_at_ns


def test_stream_without_a_result_ends_unreachable(tmp_path: Path, model: Path) -> None:
    mute = fake(no_result=True)
    with fleet(tmp_path, {"mute": mute, "pi": fake()}) as store:
        run = run_fleet(store, model, runtimes=("onnxruntime",), dispatcher=Dispatcher(store, reconnect_s=1.0))
    jobs = jobs_of(run)
    job = jobs[("mute", "onnxruntime")]
    assert job.status is JobStatus.UNREACHABLE and job.result is None
    assert "the agent ended the stream without a result" in job.message and "--resume redoes it" in job.message
    assert_succeeded(jobs[("pi", "onnxruntime")])


def test_refused_job_is_failed_with_the_details(tmp_path: Path, model: Path) -> None:
    details = "unknown runtime 'onnxruntime'; valid runtimes: null"
    grumpy = fake(refuse=(grpc.StatusCode.INVALID_ARGUMENT, details))
    with fleet(tmp_path, {"grumpy": grumpy, "pi": fake()}) as store:
        run = run_fleet(store, model)
    jobs = jobs_of(run)
    for rt in RUNTIMES:
        job = jobs[("grumpy", rt)]
        assert job.status is JobStatus.FAILED and job.status.final
        assert job.message == f"agent refused the job: INVALID_ARGUMENT: {details}"
        assert job.result is not None and job.result.status is JobStatus.FAILED
        assert_succeeded(jobs[("pi", rt)])
    # One attempt per job: a refusal is an answer, not a dropped connection.
    assert len(grumpy.rpcs("RunBenchmark")) == 2
    assert run.finished_at_ns
