"""Bad input and dying jobs against a real agent: each gets a clear status or error, and the agent serves
the next job normally (every test ends by running a healthy job on the same agent)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import grpc
import psutil
import pytest

from coordinator.dispatch.local import LocalAgent
from protos.edgebench.agent.v1 import agent_pb2 as pb
from tests.helpers import make_job, wait_for


@pytest.fixture(scope="module")
def shas(agent: LocalAgent, models: dict[str, Path]) -> dict[str, str]:
    with agent.client() as client:
        return {name: client.upload(path).sha256 for name, path in models.items()}


def assert_still_serving(agent: LocalAgent, shas: dict[str, str]) -> None:
    with agent.client() as client:
        result = client.run_to_result(make_job(shas["mlp"], min_iterations=5, min_ms=10))
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message


def run(agent: LocalAgent, job: pb.BenchmarkJob) -> pb.BenchmarkResult:
    with agent.client() as client:
        return client.run_to_result(job, timeout_s=120)


@pytest.mark.parametrize("name", ["garbage", "truncated"])
def test_corrupt_model_is_a_failed_result(agent: LocalAgent, shas: dict[str, str], name: str) -> None:
    result = run(agent, make_job(shas[name]))
    assert result.status == pb.BENCHMARK_STATUS_FAILED
    assert result.message.startswith("model did not load: onnxruntime could not load the model")
    assert_still_serving(agent, shas)


def test_dataset_that_does_not_fit_the_model(agent: LocalAgent, shas: dict[str, str]) -> None:
    # The MLP expects float32[?, 64]; the CNN's dataset is float32[N, 3, 16, 16].
    result = run(agent, make_job(shas["mlp"], dataset_sha=shas["cnn_data"]))
    assert result.status == pb.BENCHMARK_STATUS_FAILED
    assert "inputs do not fit the model" in result.message
    assert "'input'" in result.message and "float32[?, 64]" in result.message and "[1, 3, 16, 16]" in result.message
    assert result.timing.load_ns > 0 or not result.HasField("timing")  # the load phase may have completed
    assert_still_serving(agent, shas)


def test_fixed_batch_model_with_other_batch(
    agent: LocalAgent, shas: dict[str, str], models: dict[str, Path], tmp_path: Path
) -> None:
    from coordinator.models.synthetic import build_mlp

    fixed = build_mlp(tmp_path / "fixed.onnx", batch=1)
    with agent.client() as client:
        sha = client.upload(fixed).sha256
    result = run(agent, make_job(sha, batch=4))
    assert result.status == pb.BENCHMARK_STATUS_FAILED
    assert "axis 0 is 4, the model fixes it at 1" in result.message


def test_unknown_runtime_lists_valid_ones(agent: LocalAgent, shas: dict[str, str]) -> None:
    with pytest.raises(grpc.RpcError) as err:
        run(agent, make_job(shas["mlp"], runtime="tensorflow"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown runtime 'tensorflow'; valid runtimes: coreml, litert, null, onnxruntime" in (
        err.value.details() or ""
    )
    assert_still_serving(agent, shas)


def test_runtime_not_installed_is_unsupported(agent: LocalAgent, shas: dict[str, str]) -> None:
    result = run(agent, make_job(shas["mlp"], runtime="tensorrt"))
    assert result.status == pb.BENCHMARK_STATUS_UNSUPPORTED
    assert "tensorrt" in result.message and "unavailable" in result.message


def test_missing_execution_provider_is_unsupported(agent: LocalAgent, shas: dict[str, str]) -> None:
    job = make_job(shas["mlp"])
    job.runtime.execution_provider = "CUDAExecutionProvider"
    result = run(agent, job)
    assert result.status == pb.BENCHMARK_STATUS_UNSUPPORTED
    assert "'CUDAExecutionProvider' is not in this onnxruntime build" in result.message


def test_job_for_artifact_the_agent_lacks(agent: LocalAgent, shas: dict[str, str]) -> None:
    with pytest.raises(grpc.RpcError) as err:
        run(agent, make_job("ab" * 32))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "upload them first" in (err.value.details() or "")
    assert_still_serving(agent, shas)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda j: setattr(j.plan, "min_iterations", 0), "plan.min_iterations must be at least 1"),
        (lambda j: j.plan.min_duration.FromNanoseconds(-5), "plan.min_duration must not be negative"),
        (lambda j: j.plan.max_duration.FromNanoseconds(0), "plan.max_duration must be positive"),
        (lambda j: setattr(j.inputs, "batch_size", 0), "inputs.batch_size must be 1.."),
        (lambda j: setattr(j, "job_id", ""), "job_id must be"),
        (lambda j: j.ClearField("inputs"), "job.inputs: set either dataset_sha256 or generated"),
        (lambda j: setattr(j.model, "format", 0), "MODEL_FORMAT_UNSPECIFIED is not allowed"),
    ],
)
def test_malformed_job_is_invalid_argument(agent: LocalAgent, shas: dict[str, str], mutate, expected) -> None:  # type: ignore[no-untyped-def]
    job = make_job(shas["mlp"])
    mutate(job)
    with pytest.raises(grpc.RpcError) as err:
        run(agent, job)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (err.value.details() or "")
    assert_still_serving(agent, shas)


@pytest.mark.parametrize("where", ["load", "run"])
def test_runtime_crash_in_child_is_failed(agent: LocalAgent, shas: dict[str, str], where: str) -> None:
    result = run(agent, make_job(shas["null"], fmt=pb.MODEL_FORMAT_NULL, runtime="null", options={"crash": where}))
    assert result.status == pb.BENCHMARK_STATUS_FAILED
    assert "died from SIGABRT" in result.message and "aborted" in result.message
    assert_still_serving(agent, shas)


def _job_child(agent: LocalAgent) -> psutil.Process:
    children = [p for p in psutil.Process(agent.process.pid).children() if "agent.child" in " ".join(p.cmdline())]
    assert len(children) == 1
    return children[0]


def test_child_killed_from_outside(agent: LocalAgent, shas: dict[str, str]) -> None:
    job = make_job(shas["null"], fmt=pb.MODEL_FORMAT_NULL, runtime="null", min_ms=60_000, max_s=120)
    box: dict[str, pb.BenchmarkResult] = {}
    thread = threading.Thread(target=lambda: box.setdefault("r", run(agent, job)))
    thread.start()
    wait_for(lambda: any("agent.child" in " ".join(p.cmdline()) for p in psutil.Process(agent.process.pid).children()))
    wait_for(lambda: run_state(agent, job.job_id) == pb.JOB_STATE_RUNNING)
    os.kill(_job_child(agent).pid, signal.SIGKILL)
    thread.join(30)
    result = box["r"]
    assert result.status == pb.BENCHMARK_STATUS_FAILED
    assert "died from SIGKILL" in result.message and "from outside the agent" in result.message
    assert_still_serving(agent, shas)


def run_state(agent: LocalAgent, job_id: str) -> int:
    with agent.client() as client:
        return client.get_result(job_id).state  # type: ignore[no-any-return]


def test_job_over_its_time_limit(agent: LocalAgent, shas: dict[str, str]) -> None:
    job = make_job(shas["null"], fmt=pb.MODEL_FORMAT_NULL, runtime="null", options={"hang_s": "60"}, wall_s=2)
    result = run(agent, job)
    assert result.status == pb.BENCHMARK_STATUS_TIMEOUT
    assert "wall-time limit of 2 s during loading" in result.message
    assert_still_serving(agent, shas)


def test_onnx_job_over_its_time_limit(agent: LocalAgent, shas: dict[str, str]) -> None:
    job = make_job(shas["cnn"], min_ms=30_000, max_s=60, wall_s=3)
    result = run(agent, job)
    assert result.status == pb.BENCHMARK_STATUS_TIMEOUT
    assert "during measuring" in result.message


def test_job_over_its_memory_limit(agent: LocalAgent, shas: dict[str, str]) -> None:
    job = make_job(
        shas["null"], fmt=pb.MODEL_FORMAT_NULL, runtime="null", options={"allocate_mb": "400"}, memory_mb=200
    )
    result = run(agent, job)
    assert result.status == pb.BENCHMARK_STATUS_OUT_OF_MEMORY
    assert "over its memory limit of 200 MiB" in result.message
    assert_still_serving(agent, shas)


def test_onnx_model_over_memory_limit(agent: LocalAgent, tmp_path: Path) -> None:
    from coordinator.models.synthetic import build_big_initializer

    big = build_big_initializer(tmp_path / "big.onnx", megabytes=300)
    with agent.client() as client:
        sha = client.upload(big).sha256
    result = run(agent, make_job(sha, memory_mb=250))
    assert result.status == pb.BENCHMARK_STATUS_OUT_OF_MEMORY
    assert "during loading" in result.message


def test_cancel_running_and_queued(agent: LocalAgent, shas: dict[str, str]) -> None:
    long_job = make_job(shas["null"], fmt=pb.MODEL_FORMAT_NULL, runtime="null", min_ms=60_000, max_s=120)
    queued_job = make_job(shas["mlp"])
    results: dict[str, pb.BenchmarkResult] = {}
    queue_positions: list[int] = []

    def consume(job: pb.BenchmarkJob) -> None:
        with agent.client() as client:
            for event in client.run(job, timeout_s=120):
                if event.WhichOneof("event") == "accepted":
                    queue_positions.append(event.accepted.queue_position)
                if event.WhichOneof("event") == "result":
                    results[job.job_id] = event.result

    t1 = threading.Thread(target=consume, args=(long_job,))
    t1.start()
    wait_for(lambda: run_state(agent, long_job.job_id) == pb.JOB_STATE_RUNNING)
    t2 = threading.Thread(target=consume, args=(queued_job,))
    t2.start()
    wait_for(lambda: run_state(agent, queued_job.job_id) == pb.JOB_STATE_QUEUED)
    with agent.client() as client:
        cancelled = client.cancel(queued_job.job_id)
        assert cancelled.cancelled
        assert client.cancel(long_job.job_id).cancelled
    t1.join(30)
    t2.join(30)
    assert queue_positions == [0, 1]
    assert results[long_job.job_id].status == pb.BENCHMARK_STATUS_CANCELLED
    assert results[queued_job.job_id].status == pb.BENCHMARK_STATUS_CANCELLED
    with agent.client() as client:
        assert client.cancel(long_job.job_id).state == pb.JOB_STATE_FINISHED  # nothing left to cancel
        assert client.cancel("unknown-id").state == pb.JOB_STATE_UNKNOWN
    assert_still_serving(agent, shas)


def test_same_job_id_never_runs_twice(agent: LocalAgent, shas: dict[str, str]) -> None:
    job = make_job(shas["mlp"])
    first = run(agent, job)
    with agent.client() as client:
        events = list(client.run(job))
    assert events[0].accepted.reattached
    assert events[-1].result == first  # replayed, same timestamps: not re-run
    conflicting = make_job(shas["cnn"], job_id=job.job_id)
    with pytest.raises(grpc.RpcError) as err:
        run(agent, conflicting)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_lost_stream_loses_nothing(agent: LocalAgent, shas: dict[str, str]) -> None:
    job = make_job(shas["null"], fmt=pb.MODEL_FORMAT_NULL, runtime="null", min_ms=1500, max_s=10)
    with agent.client() as client:
        stream = client.run(job)
        next(stream)  # accepted
        stream.cancel()  # type: ignore[attr-defined]  # the coordinator's connection drops mid-job
        wait_for(lambda: client.get_result(job.job_id).state == pb.JOB_STATE_FINISHED, timeout=30)
        fetched = client.get_result(job.job_id).result
        assert fetched.status == pb.BENCHMARK_STATUS_SUCCEEDED
        # Re-sending the job re-attaches and replays the same result instead of running it again.
        assert client.run_to_result(job) == fetched


def test_results_survive_agent_restart(
    agent_factory,
    shas: dict[str, str],
    models: dict[str, Path],  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    first = agent_factory(workdir=tmp_path / "wd")
    with first.client() as client:
        sha = client.upload(models["mlp"]).sha256
        job = make_job(sha)
        result = client.run_to_result(job)
    first.stop()
    second = agent_factory(workdir=tmp_path / "wd")
    with second.client() as client:
        fetched = client.get_result(job.job_id)
        assert fetched.state == pb.JOB_STATE_FINISHED and fetched.result == result
        assert client.find_missing([sha]) == []


def test_external_data_via_companions_and_traversal(agent: LocalAgent, tmp_path: Path) -> None:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = np.arange(16, dtype=np.float32).reshape(4, 4)
    (tmp_path / "weights.bin").write_bytes(weights.tobytes())

    def model(location: str) -> Path:
        t = numpy_helper.from_array(weights, "w")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", str(weights.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["input", "w"], ["logits"])],
            "g",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
            [t],
        )
        path = tmp_path / f"m{abs(hash(location))}.onnx"
        path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
        return path

    with agent.client() as client:
        weights_sha = client.upload(tmp_path / "weights.bin").sha256
        good = client.upload(model("weights.bin")).sha256
        evil = client.upload(model("../../../../etc/passwd")).sha256
    job = make_job(good)
    job.model.companions.add(name="weights.bin", sha256=weights_sha)
    result = run(agent, job)
    assert result.status == pb.BENCHMARK_STATUS_SUCCEEDED, result.message
    result = run(agent, make_job(evil))
    assert result.status == pb.BENCHMARK_STATUS_FAILED
    assert "outside the model's own folder; refused before any runtime opened it" in result.message
    bad_name = make_job(good)
    bad_name.model.companions.add(name="../weights.bin", sha256=weights_sha)
    with pytest.raises(grpc.RpcError) as err:
        run(agent, bad_name)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be a plain file name" in (err.value.details() or "")
