"""Hostile model files against a real agent: the guards that check a model before a runtime opens it.

F2: a `.pt2` polyglot. A legitimate archive is appended to a hostile one whose program carries
`guards_code` (Python that `program.module()` compiles and runs; here it copies the agent's token file to
a marker file). The end records point at the hostile directory, which is where torch's zip reader (miniz)
looks; Python's `zipfile` finds the legitimate directory instead and shifts every offset, so a check
made through `zipfile` saw a clean program. A control run with plain torch shows the payload really runs
and really reads the token; through the agent the job FAILS with the guard's message and the marker is
never written. A legitimate `.pt2` still runs (torch is given a fresh copy of the checked bytes).

F11: an ONNX initializer with two `location` entries, the first a benign companion file and the last
`../../token` (runtimes read the last; the check read the first), and an unparseable file that mentions
external data (the check used to let it through). Both FAIL with the guard's own message, so no runtime
opened them: a runtime's refusal would read differently ("onnxruntime could not load the model", or
OpenVINO's path error). Every test ends with a healthy job on the same agent.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from coordinator.dispatch.local import LocalAgent
from protos.edgebench.agent.v1 import agent_pb2 as pb
from tests.helpers import make_job

torch = pytest.importorskip("torch")

from tests.runtime_models import build_pt2, sample_input  # noqa: E402

GUARD_REFUSAL = "refused before torch opened the file"


@pytest.fixture(scope="module")
def guarded(agent_factory: Callable[..., LocalAgent]) -> LocalAgent:
    return agent_factory()


def _run(agent: LocalAgent, job: pb.BenchmarkJob) -> pb.BenchmarkResult:
    with agent.client() as client:
        return client.run_to_result(job, timeout_s=180)


def _upload(agent: LocalAgent, path: Path) -> str:
    with agent.client() as client:
        return client.upload(path).sha256


def _torch_job(sha: str) -> pb.BenchmarkJob:
    return make_job(sha, fmt=pb.MODEL_FORMAT_TORCH_EXPORT, runtime="torch", min_iterations=5, min_ms=10)


# ---------------------------------------------------------------------------------------------- F2: .pt2 polyglot


def _end_records(data: bytes) -> tuple[int, int | None, int, int, int]:
    """(end record offset, zip64 end record offset or None, entries, directory size, directory offset)."""
    eocd = data.rindex(b"PK\x05\x06")
    entries, size, offset = struct.unpack_from("<HII", data, eocd + 10)
    zip64 = eocd - 20 - 56 if data[eocd - 20 : eocd - 16] == b"PK\x06\x07" else None
    return eocd, zip64, entries, size, offset


def _hostile_twin(legit: bytes, guards: list[str]) -> bytes:
    """The legitimate archive's members, its program carrying `guards` and padded with JSON whitespace so
    that the hostile directory lies past the legitimate one's offset (the polyglot's offsets need that)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(legit)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/models/model.json"):
                program = json.loads(data)
                program["guards_code"] = guards
                data = json.dumps(program).encode() + b" " * len(legit)
            dst.writestr(info.filename, data)
    return out.getvalue()


def build_polyglot(legit: bytes, hostile: bytes) -> bytes:
    """`hostile`'s members and directory, then `legit` whole, with `legit`'s end records pointing at the
    hostile directory (miniz reads that one) and its directory's member offsets lowered by the shift
    zipfile will add when it finds the directory just before the end records (zipfile reads `legit`)."""
    _, _, h_entries, h_size, h_offset = _end_records(hostile)
    eocd, zip64, entries, size, offset = _end_records(legit)
    assert (h_entries, h_size) == (entries, size), "the two directories must hold as many entries and bytes"
    head = hostile[: h_offset + h_size]
    shift = len(head) + offset - h_offset  # what zipfile adds to every recorded offset
    body = bytearray(legit)
    pos = offset
    while pos < offset + size:
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", body, pos + 28)
        local = struct.unpack_from("<I", body, pos + 42)[0]
        struct.pack_into("<I", body, pos + 42, len(head) + local - shift)
        pos += 46 + name_len + extra_len + comment_len
    struct.pack_into("<I", body, eocd + 16, h_offset)
    if zip64 is not None:
        struct.pack_into("<Q", body, zip64 + 48, h_offset)
        struct.pack_into("<Q", body, zip64 + 56 + 8, len(head) + zip64)  # the locator, to the moved record
    return head + bytes(body)


CONTROL = """
import sys, torch
module = torch.export.load(sys.argv[1]).module()
module(torch.zeros(1, 3, 8, 8))
"""


@pytest.fixture(scope="module")
def legit_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pt2(tmp_path_factory.mktemp("pt2") / "model.pt2")


def test_pt2_polyglot_is_refused_and_its_code_never_runs(guarded: LocalAgent, legit_pt2: Path, tmp_path: Path) -> None:
    """F2. Without the layout check and the fresh copy, the agent's torch backend would have loaded the
    hostile program: its zipfile-based check saw the legitimate one."""
    marker = tmp_path / "stolen-token"
    token = guarded.workdir / "token"
    guards = [f"__import__('pathlib').Path({str(marker)!r}).write_bytes(open({str(token)!r}, 'rb').read()) > 0"]
    legit = legit_pt2.read_bytes()
    polyglot = tmp_path / "polyglot.pt2"
    polyglot.write_bytes(build_polyglot(legit, _hostile_twin(legit, guards)))

    # What a zipfile-based check sees: the legitimate program, no guards_code.
    with zipfile.ZipFile(polyglot) as zf:
        program = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("/models/model.json"))))
    assert program["guards_code"] == []
    # What torch runs: the hostile program. Control, in a plain process (no agent, no guard).
    control = subprocess.run(
        [sys.executable, "-c", CONTROL, str(polyglot)], capture_output=True, text=True, timeout=300, check=False
    )
    assert marker.read_text() == guarded.token, f"control: the payload should run under torch ({control.stderr})"
    marker.unlink()

    result = _run(guarded, _torch_job(_upload(guarded, polyglot)))
    assert result.status == pb.BENCHMARK_STATUS_FAILED, result.message
    assert GUARD_REFUSAL in result.message and "data was prepended" in result.message, result.message
    # Had the payload run in the job, it would have left the marker (no job sandbox) or, where a sandbox
    # hides the token, failed reading it with the token's path in the result: either shows it ran.
    assert not marker.exists(), "the polyglot's guards_code ran inside the agent's job"
    assert str(token) not in result.message + result.diagnostics, "the polyglot's guards_code ran in the job"
    assert "torch_version" not in dict(result.provenance.runtime_details)  # torch never loaded anything

    result = _run(guarded, _torch_job(_upload(guarded, legit_pt2)))
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message


def test_legitimate_pt2_runs_from_the_checked_copy(guarded: LocalAgent, legit_pt2: Path) -> None:
    """The rewrite path end to end: torch loads the fresh archive and the job measures as before."""
    result = _run(guarded, _torch_job(_upload(guarded, legit_pt2)))
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message
    details = dict(result.provenance.runtime_details)
    assert "torch read a fresh copy of the checked bytes" in details["load_guard"]
    assert len(result.timing.latencies_ns) >= 5
    assert [tuple(t.shape) for t in result.provenance.inputs] == [sample_input().shape]


# ---------------------------------------------------------------------------------------------- F11: ONNX external data


def _external_model(path: Path, locations: list[str]) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    weights = np.arange(16, dtype=np.float32).reshape(4, 4)
    t = numpy_helper.from_array(weights, "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    entries = [("location", loc) for loc in locations] + [("offset", "0"), ("length", str(weights.nbytes))]
    for key, value in entries:
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [t],
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.fixture(scope="module")
def companion(guarded: LocalAgent, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The benign external-data file, uploaded: (sha256, a model that uses it properly)."""
    folder = tmp_path_factory.mktemp("onnx")
    (folder / "weights.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    return _upload(guarded, folder / "weights.bin"), _external_model(folder / "good.onnx", ["weights.bin"])


def _onnx_job(sha: str, weights_sha: str, runtime: str) -> pb.BenchmarkJob:
    job = make_job(sha, runtime=runtime, min_iterations=5, min_ms=10)
    job.model.companions.add(name="weights.bin", sha256=weights_sha)
    return job


RUNTIMES = ["onnxruntime", "openvino"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_onnx_second_location_entry_is_refused(
    guarded: LocalAgent, companion: tuple[str, Path], runtime: str, tmp_path: Path
) -> None:
    """F11: first entry `weights.bin` (what the check used to read), last `../../token` (what runtimes
    read: job folders are <workdir>/jobs/<id>, so that is the agent's token file)."""
    pytest.importorskip(runtime)
    weights_sha, good = companion
    hostile = _upload(guarded, _external_model(tmp_path / "m.onnx", ["weights.bin", "../../token"]))
    result = _run(guarded, _onnx_job(hostile, weights_sha, runtime))
    assert result.status == pb.BENCHMARK_STATUS_FAILED, result.message
    assert result.message.startswith("model did not load: tensor 'w' has 2 external-data location entries"), (
        result.message
    )
    assert "'../../token'" in result.message and "Refused before any runtime opened the model" in result.message
    result = _run(guarded, _onnx_job(_upload(guarded, good), weights_sha, runtime))
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message


def test_unparseable_onnx_mentioning_external_data_is_refused(
    guarded: LocalAgent, companion: tuple[str, Path], tmp_path: Path
) -> None:
    """F11, fail closed: the check used to give up on a file it could not parse and let the runtime open it."""
    weights_sha, good = companion
    whole = good.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(whole[: whole.index(b"weights.bin") + 3])  # ends inside the location string
    result = _run(guarded, _onnx_job(_upload(guarded, cut), weights_sha, "onnxruntime"))
    assert result.status == pb.BENCHMARK_STATUS_FAILED, result.message
    assert result.message.startswith("model did not load: the model file is not a valid ONNX protobuf"), result.message
    assert "onnx.checker.check_model" in result.message
    result = _run(guarded, _onnx_job(_upload(guarded, good), weights_sha, "onnxruntime"))
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message
