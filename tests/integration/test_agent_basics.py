"""A real agent process on loopback: auth, health, device info, artifacts, successful benchmarks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.dispatch.client import AgentClient, Credentials, sha256_file
from coordinator.dispatch.local import LocalAgent
from protos.edgebench.agent.v1 import agent_pb2 as pb
from protos.stats import summarize
from protos.version import CURRENT
from tests.helpers import make_job


def test_health_needs_no_token_but_everything_else_does(agent: LocalAgent) -> None:
    channel = grpc.insecure_channel(agent.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "edgebench.agent.v1.AgentService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    for creds in (Credentials(), Credentials(token="wrong-token-of-enough-length")):
        with AgentClient(agent.address, creds) as client, pytest.raises(grpc.RpcError) as err:
            client.device_info()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token" in (err.value.details() or "")
    # Streaming RPCs are guarded too.
    with AgentClient(agent.address, Credentials()) as client, pytest.raises(grpc.RpcError) as err:
        client.run_to_result(make_job("0" * 64))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_device_info_describes_device_and_runtimes(agent: LocalAgent) -> None:
    with agent.client() as client:
        info = client.device_info()
        again = client.device_info()
    assert (info.protocol.major, info.protocol.minor) == (CURRENT.major, CURRENT.minor)
    assert info.device_id and info.device_id == again.device_id
    assert info.cpu_logical_cores >= 1 and info.memory_total_bytes > 0 and info.architecture
    runtimes = {r.name: r for r in info.runtimes}
    assert set(runtimes) >= {"onnxruntime", "openvino", "litert", "tensorrt", "coreml", "torch", "null"}
    assert runtimes["onnxruntime"].available and "CPUExecutionProvider" in runtimes["onnxruntime"].execution_providers
    assert not runtimes["tensorrt"].available and runtimes["tensorrt"].unavailable_reason


def test_device_id_survives_restart(agent_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = agent_factory(workdir=tmp_path / "wd")
    with first.client() as c:
        device_id = c.device_info().device_id
    assert first.stop() == 0  # graceful SIGTERM shutdown
    second = agent_factory(workdir=tmp_path / "wd")
    with second.client() as c:
        assert c.device_info().device_id == device_id


def test_upload_is_content_addressed_and_resumable(agent: LocalAgent, tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(hashlib.sha256(b"seed").digest() * 200_000)  # 6.4 MB
    digest = sha256_file(blob)
    with agent.client() as client:
        assert client.find_missing([digest]) == [digest]
        with pytest.raises(Exception):  # noqa: B017 - the client-side iterator raises; gRPC wraps it
            client.upload(blob, chunk_bytes=256 * 1024, stop_after_bytes=2 * 2**20)
        status = client.upload_status(digest)
        # What the agent had durably written when the stream broke: some, but at most what was sent.
        assert not status.complete and 0 < status.committed_offset_bytes <= 2 * 2**20 + 256 * 1024
        report = client.upload(blob, chunk_bytes=256 * 1024)
        assert report.resumed_from == status.committed_offset_bytes
        assert report.sent_bytes == blob.stat().st_size - report.resumed_from
        assert client.find_missing([digest]) == []
        repeat = client.upload(blob)
        assert repeat.already_present and repeat.sent_bytes == 0
    stored = next((agent.workdir / "artifacts" / "blobs").glob(digest))
    assert sha256_file(stored) == digest


def test_wrong_digest_stores_nothing(agent: LocalAgent, tmp_path: Path) -> None:
    blob = tmp_path / "x.bin"
    blob.write_bytes(b"real content" * 1000)
    claimed = hashlib.sha256(b"something else").hexdigest()
    with agent.client() as client:
        with pytest.raises(grpc.RpcError) as err:
            client.upload(blob, digest=claimed)
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        assert "nothing was stored" in (err.value.details() or "")
        assert client.find_missing([claimed]) == [claimed]
        assert client.upload_status(claimed).committed_offset_bytes == 0
        with pytest.raises(grpc.RpcError) as err:
            client.find_missing(["not-a-digest"])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_upload_over_cap_is_refused(agent_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    small = agent_factory(env={"EDGEBENCH_AGENT_MAX_ARTIFACT_BYTES": str(64 * 1024)})
    blob = tmp_path / "big.bin"
    blob.write_bytes(b"\x01" * (65 * 1024))
    with small.client() as client:
        with pytest.raises(grpc.RpcError) as err:
            client.upload(blob)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "cap" in (err.value.details() or "")
        blob.write_bytes(b"\x01" * 1024)
        assert not client.upload(blob).already_present  # the agent still serves


def test_onnx_benchmark_with_dataset_reports_everything(agent: LocalAgent, models: dict[str, Path]) -> None:
    with agent.client() as client:
        model = client.upload(models["cnn"]).sha256
        data = client.upload(models["cnn_data"]).sha256
        job = make_job(model, dataset_sha=data, batch=4, accuracy=True, min_iterations=50)
        events = list(client.run(job))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "result" and kinds.count("result") == 1
    phases = [e.progress.phase for e in events if e.WhichOneof("event") == "progress"]
    for phase in (
        pb.JOB_PHASE_LOADING,
        pb.JOB_PHASE_FIRST_INFERENCE,
        pb.JOB_PHASE_WARMUP,
        pb.JOB_PHASE_MEASURING,
        pb.JOB_PHASE_ACCURACY,
        pb.JOB_PHASE_FINISHED,
    ):
        assert phase in phases
    result = events[-1].result
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message
    t = result.timing
    assert len(t.latencies_ns) >= 50 and all(x > 0 for x in t.latencies_ns)
    assert t.load_ns > 0 and t.first_inference_ns > 0 and t.warmup_iterations >= 3
    assert t.steady_wall_ns >= sum(t.latencies_ns)
    assert t.stop_reason == pb.STOP_REASON_MINIMUMS_MET
    assert summarize(list(t.latencies_ns)).median > 0
    m = result.memory
    assert 0 < m.rss_before_load_bytes <= m.rss_after_load_bytes <= m.peak_rss_bytes
    a = result.accuracy
    assert a.samples == 32 and a.has_labels and a.has_reference
    assert 0.7 <= a.top1 <= 1.0 and a.top5 >= a.top1
    assert a.top1_agreement == 1.0 and a.cosine_similarity > 0.9999 and a.max_abs_error < 1e-4
    p = result.provenance
    assert p.runtime_name == "onnxruntime" and p.runtime_version and p.execution_providers == ["CPUExecutionProvider"]
    assert p.model_sha256 == model and p.dataset_sha256 == data and p.batch_size == 4
    assert p.device_id and p.agent_version and p.kernel and p.intra_op_threads == 1
    assert p.inputs[0].name == "input" and p.outputs[0].name == "logits"
    assert p.before.HasField("at") and p.after.HasField("at")
    assert result.started_at.ToNanoseconds() < result.finished_at.ToNanoseconds()


def test_generated_inputs_and_adaptive_stop(agent: LocalAgent, models: dict[str, Path]) -> None:
    with agent.client() as client:
        model = client.upload(models["mlp"]).sha256
        job = make_job(model, batch=8, min_iterations=30, min_ms=50, max_s=5)
        job.plan.target_relative_ci = 0.5  # loose: converges quickly
        result = client.run_to_result(job)
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message
    assert result.timing.stop_reason == pb.STOP_REASON_CI_CONVERGED
    assert result.provenance.inputs[0].shape[0] == -1  # symbolic batch, fed with 8


def test_unknown_job_state_and_fetch_by_id(agent: LocalAgent, models: dict[str, Path]) -> None:
    with agent.client() as client:
        assert client.get_result("never-sent").state == pb.JOB_STATE_UNKNOWN
        model = client.upload(models["null"]).sha256
        job = make_job(model, fmt=pb.MODEL_FORMAT_NULL, runtime="null")
        first = client.run_to_result(job)
        fetched = client.get_result(job.job_id)
    assert fetched.state == pb.JOB_STATE_FINISHED and fetched.result == first


def test_concurrent_uploads_of_one_artifact_send_it_once(agent: LocalAgent, tmp_path: Path) -> None:
    import os
    import threading

    blob = tmp_path / "shared.bin"
    blob.write_bytes(os.urandom(24 * 2**20))
    reports = []

    def upload() -> None:
        with agent.client() as client:
            reports.append(client.upload(blob, chunk_bytes=256 * 1024))

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(reports) == 4
    assert sum(r.sent_bytes for r in reports) == blob.stat().st_size  # sent once, the others waited
    assert sum(not r.already_present for r in reports) == 1


def test_an_agent_with_a_relative_work_dir_runs_jobs(
    tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`edgebench demo -o edgebench-demo` starts agents with a relative --workdir; job processes run inside their
    job folder, so the agent must resolve it (it once handed them paths that did not exist from there)."""
    from coordinator.dispatch.local import start_agent

    monkeypatch.chdir(tmp_path)
    agent = start_agent(Path("relative-agent"))
    try:
        with agent.client() as client:
            model = client.upload(models["null"]).sha256
            result = client.run_to_result(make_job(model, fmt=pb.MODEL_FORMAT_NULL, runtime="null"))
    finally:
        agent.stop()
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message
