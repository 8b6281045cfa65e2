"""Tests of coordinator/store/sqlite.py: schema and migrations, devices, runs and jobs, idempotent results,
the samples codec, concurrent writers and durability across reopening."""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from coordinator.store.sqlite import SCHEMA_VERSION, Store, StoreError, decode_samples, encode_samples
from coordinator.types import (
    Artifact,
    Device,
    DeviceProbe,
    JobRecord,
    JobStatus,
    MeasurementSettings,
    ResultData,
    RunSpec,
    RuntimeStatus,
    Variant,
)

MS = 1_000_000


# ---------------------------------------------------------------------------------------------- builders


def make_spec(run_id: str = "run-1", *, created_at_ns: int = 1_700_000_000_000_000_000, **overrides: object) -> RunSpec:
    fields: dict[str, object] = {
        "run_id": run_id,
        "name": f"name of {run_id}",
        "model_path": "models/mlp.onnx",
        "dataset_path": "data/mlp.npz",
        "dataset_sha256": "d" * 64,
        "devices": ("pi5", "jetson"),
        "runtimes": ("onnxruntime", "openvino"),
        "variants": ("fp32", "int8"),
        "settings": MeasurementSettings(
            batch=4,
            threads=2,
            warmup_iterations=7,
            min_iterations=55,
            min_duration_s=0.25,
            max_duration_s=12.5,
            target_relative_ci=0.02,
            wall_time_s=90.0,
            memory_mb=512,
            accuracy=False,
        ),
        "created_at_ns": created_at_ns,
        "baseline": "fp32",
    }
    fields.update(overrides)
    return RunSpec(**fields)  # type: ignore[arg-type]


VARIANTS = (
    Variant(
        name="fp32",
        path="models/mlp.onnx",
        sha256="a" * 64,
        format="onnx",
        size_bytes=123_456,
        recipe="fp32",
        notes="the model as given",
    ),
    Variant(
        name="int8",
        path="models/mlp.int8.onnx",
        sha256="b" * 64,
        format="onnx",
        size_bytes=40_000,
        recipe="int8",
        parent_sha256="a" * 64,
        compressed_bytes=30_000,
        notes="quantized",
        # Converted forms and the reasons for formats not made survive the JSON round trip as tuples.
        others=(
            Artifact(
                "openvino_ir",
                "models/int8/model.xml",
                "c" * 64,
                900,
                companions=(("model.bin", "models/int8/model.bin", "d" * 64),),
                notes="OpenVINO IR, NNCF static INT8",
            ),
        ),
        unconverted=(("coreml", "no Core ML form of int8 in this version"),),
        precision="int8",
    ),
)


def make_jobs(run_id: str, cells: list[tuple[str, str, str]], status: JobStatus = JobStatus.PENDING) -> list[JobRecord]:
    return [
        JobRecord(
            job_id=f"{run_id}.{device}.{variant}.{runtime}.1",
            run_id=run_id,
            device=device,
            variant=variant,
            runtime=runtime,
            status=status,
        )
        for device, variant, runtime in cells
    ]


def grid(devices: tuple[str, ...] = ("pi5", "jetson")) -> list[tuple[str, str, str]]:
    return [(d, v, r) for d in devices for v in ("fp32", "int8") for r in ("onnxruntime", "openvino")]


def make_probe(name: str = "pi5") -> DeviceProbe:
    return DeviceProbe(
        name=name,
        address=f"{name}.local:50051",
        online=True,
        device_id=f"id-{name}",
        agent_version="0.1.0",
        protocol="1.0",
        compatible=True,
        compatibility="same protocol 1.0",
        hostname=name,
        os="Linux 6.6",
        architecture="aarch64",
        cpu_model="Cortex-A76",
        cpu_cores=4,
        memory_bytes=8 * 2**30,
        board="Raspberry Pi 5 Model B Rev 1.0",
        gpus=("VideoCore VII",),
        runtimes=(
            RuntimeStatus(
                name="onnxruntime",
                available=True,
                version="1.18.0",
                providers=("CPUExecutionProvider", "XnnpackExecutionProvider"),
                formats=("onnx",),
            ),
            RuntimeStatus(name="openvino", available=False, reason="not installed", formats=("onnx", "openvino_ir")),
        ),
        probed_at_ns=1_700_000_000_500_000_000,
    )


def make_result(status: JobStatus = JobStatus.SUCCEEDED, n: int = 50, seed: int = 0, **overrides: object) -> ResultData:
    rng = random.Random(seed)
    samples = tuple(rng.randint(4 * MS, 6 * MS) for _ in range(n))
    fields: dict[str, object] = {
        "status": status,
        "message": "" if status is JobStatus.SUCCEEDED else f"{status.value} because of reasons",
        "latencies_ns": samples,
        "load_ns": 120 * MS,
        "first_inference_ns": 9 * MS,
        "warmup_iterations": 10,
        "warmup_ns": 55 * MS,
        "steady_wall_ns": sum(samples) + 1_000,
        "stop_reason": "minimums_met",
        "rss_before_load_bytes": 50 * 2**20,
        "rss_after_load_bytes": 80 * 2**20,
        "peak_rss_bytes": 95 * 2**20,
        "has_memory": True,
        "accuracy_samples": 64,
        "top1": 0.875,
        "top5": 0.984375,
        "top1_agreement": 0.96875,
        "cosine_similarity": 0.9990234375,
        "max_abs_error": 0.0125,
        "snr_db": 41.5,
        "provenance": {"device_id": "id-pi5", "execution_providers": ["CPUExecutionProvider"], "intra_op_threads": 2},
        "started_at_ns": 1_700_000_001_000_000_000,
        "finished_at_ns": 1_700_000_002_000_000_000,
        "diagnostics": "",
    }
    fields.update(overrides)
    return ResultData(**fields)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "edgebench.db"


@pytest.fixture
def store(db: Path) -> Store:
    return Store(db)


def new_run(
    store: Store, run_id: str = "run-1", cells: list[tuple[str, str, str]] | None = None, **kw: object
) -> list[JobRecord]:
    jobs = make_jobs(run_id, grid() if cells is None else cells)
    store.create_run(make_spec(run_id, **kw), VARIANTS, jobs)  # type: ignore[arg-type]
    return jobs


def job_by_id(store: Store, run_id: str, job_id: str) -> JobRecord:
    found = [j for j in store.jobs(run_id) if j.job_id == job_id]
    assert len(found) == 1, f"job {job_id} not found exactly once"
    return found[0]


# ---------------------------------------------------------------------------------------------- schema


def test_fresh_file_gets_current_schema_in_wal_mode(db: Path) -> None:
    store = Store(db)  # the parent folder does not exist yet: the store creates it
    assert db.is_file()
    store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert {"devices", "runs", "run_variants", "run_devices", "jobs", "results"} <= tables


def test_reopening_is_a_no_op(db: Path) -> None:
    store = Store(db)
    store.add_device(Device(name="pi5", address="pi5.local:50051"))
    new_run(store)
    store.close()
    again = Store(db)  # migrations must not run twice (they would fail on CREATE TABLE) nor lose data
    assert [d.name for d in again.devices()] == ["pi5"]
    assert again.latest_run_id() == "run-1"
    again.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_only_the_first_open_applies_the_schema(db: Path) -> None:
    first = Store(db)
    second = Store(db)
    assert first.applied == [1] and second.applied == []  # the F17 test counts these across processes
    first.close()
    second.close()


def test_a_held_write_lock_is_reported_as_busy_not_as_damage(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holding the write lock past the busy timeout: the message says to retry, not to
    restore the file from a backup (which is what any database error used to say)."""
    import coordinator.store.sqlite as sqlite_store

    Store(db).close()
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    store = Store(db)  # current schema: opening needs no write lock
    try:
        with pytest.raises(StoreError, match="is busy: another process held its write lock") as info:
            store.add_device(Device(name="pi5", address="pi5.local:50051"))
        assert "backup" not in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.add_device(Device(name="pi5", address="pi5.local:50051"))  # released: it works again
    store.close()


def test_newer_schema_is_refused_with_upgrade_advice(db: Path) -> None:
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(StoreError, match="upgrade edgebench") as info:
        Store(db)
    assert f"schema {SCHEMA_VERSION + 5}" in str(info.value)


@pytest.mark.parametrize("content", ["random", "sqlite_header_then_random", "text"])
def test_corrupt_file_raises_store_error(db: Path, content: str) -> None:
    rng = random.Random(1234)
    data = {
        "random": rng.randbytes(8192),
        "sqlite_header_then_random": b"SQLite format 3\x00" + rng.randbytes(4080),
        "text": b"this is a text file, not a database\n" * 100,
    }[content]
    db.parent.mkdir(parents=True)
    db.write_bytes(data)
    with pytest.raises(StoreError, match="cannot open the store"):
        Store(db)
    assert db.read_bytes() == data  # never overwritten


def test_store_with_corrupt_pages_raises_store_error(db: Path) -> None:
    store = Store(db)
    for i in range(60):
        store.add_device(Device(name=f"device-{i:03d}-" + "x" * 60, address=f"10.0.0.{i}:50051"))
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(db.read_bytes())
    assert len(data) > 3 * 4096
    data[4096:] = random.Random(7).randbytes(len(data) - 4096)  # keep page 1 (header + schema), garble the rest
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError):
        Store(db).devices()


# ---------------------------------------------------------------------------------------------- devices


def test_devices_add_list_get_remove(store: Store) -> None:
    full = Device(
        name="pi5",
        address="pi5.local:50051",
        token_file="secrets/pi5.token",
        tls_ca="certs/ca.pem",
        tls_cert="certs/client.pem",
        tls_key="certs/client.key",
        tls_server_name="pi5.example",
        added_at_ns=1_700_000_000_000_000_000,
    )
    store.add_device(full)
    store.add_device(Device(name="jetson", address="10.0.0.7:50051"))
    assert [d.name for d in store.devices()] == ["jetson", "pi5"]  # sorted by name
    assert store.device("pi5") == full
    jetson = store.device("jetson")
    assert jetson is not None and jetson.address == "10.0.0.7:50051"
    assert jetson.added_at_ns > 0  # stamped when not given
    assert store.device("nope") is None
    assert store.remove_device("pi5") is True
    assert store.remove_device("pi5") is False
    assert store.device("pi5") is None
    assert [d.name for d in store.devices()] == ["jetson"]


def test_duplicate_device_name_needs_replace(store: Store) -> None:
    store.add_device(Device(name="pi5", address="old:1", added_at_ns=1))
    with pytest.raises(StoreError, match="already registered"):
        store.add_device(Device(name="pi5", address="new:2", added_at_ns=2))
    assert store.device("pi5") == Device(name="pi5", address="old:1", added_at_ns=1)  # unchanged
    store.add_device(Device(name="pi5", address="new:2", added_at_ns=2), replace=True)
    assert store.device("pi5") == Device(name="pi5", address="new:2", added_at_ns=2)
    assert len(store.devices()) == 1


# ---------------------------------------------------------------------------------------------- runs


def test_create_run_and_load_run_round_trip(store: Store) -> None:
    spec = make_spec("run-1")
    jobs = make_jobs("run-1", grid())
    jobs[3] = JobRecord(
        job_id=jobs[3].job_id,
        run_id="run-1",
        device=jobs[3].device,
        variant=jobs[3].variant,
        runtime=jobs[3].runtime,
        status=JobStatus.SKIPPED,
        message="openvino unavailable on pi5: not installed",
        attempt=2,
    )
    store.create_run(spec, VARIANTS, jobs)
    store.record_probe("run-1", make_probe("pi5"))
    offline = DeviceProbe(name="jetson", address="10.0.0.7:50051", online=False, error="connection refused")
    store.record_probe("run-1", offline)

    run = store.load_run("run-1")
    assert run.spec == spec
    assert run.spec.settings == spec.settings
    assert isinstance(run.spec.devices, tuple) and isinstance(run.spec.runtimes, tuple)
    assert run.variants == VARIANTS  # in the order given
    assert run.devices == (offline, make_probe("pi5"))  # ordered by device name, tuples restored
    assert run.devices[1].runtime("onnxruntime") == make_probe().runtimes[0]
    assert run.finished_at_ns == 0
    assert [(j.job_id, j.device, j.variant, j.runtime) for j in run.jobs] == [
        (j.job_id, j.device, j.variant, j.runtime) for j in jobs
    ]  # position order
    assert run.jobs[3].status is JobStatus.SKIPPED
    assert run.jobs[3].message == "openvino unavailable on pi5: not installed"
    assert run.jobs[3].attempt == 2
    assert all(j.result is None and j.updated_at_ns > 0 for j in run.jobs)

    store.finish_run("run-1")
    assert store.load_run("run-1").finished_at_ns > 0


def test_record_probe_replaces_the_previous_probe(store: Store) -> None:
    new_run(store)
    store.record_probe("run-1", DeviceProbe(name="pi5", address="a:1", online=False, error="timeout"))
    store.record_probe("run-1", make_probe("pi5"))
    assert store.load_run("run-1").devices == (make_probe("pi5"),)


def test_load_unknown_run_lists_recent_runs(store: Store) -> None:
    with pytest.raises(StoreError, match="recent runs: none yet"):
        store.load_run("nope")
    for i in range(7):
        new_run(store, f"run-{i}", created_at_ns=1_000 + i)
    with pytest.raises(StoreError) as info:
        store.load_run("run-99")
    message = str(info.value)
    assert "'run-99'" in message
    assert "recent runs: run-6, run-5, run-4, run-3, run-2" in message  # newest five
    assert "run-1," not in message and "run-0" not in message


def test_runs_summary_counts_per_status_newest_first(store: Store) -> None:
    assert store.runs() == []
    assert store.latest_run_id() is None
    old = new_run(store, "old", created_at_ns=1_000)
    store.create_run(make_spec("empty", created_at_ns=2_000), VARIANTS, [])
    new_run(store, "new", cells=grid(("pi5",)), created_at_ns=3_000)
    store.save_result(old[0].job_id, make_result())
    store.save_result(old[1].job_id, make_result(JobStatus.FAILED))
    store.set_job_status(old[2].job_id, JobStatus.SKIPPED, "no")
    store.finish_run("old")

    summary = store.runs()
    assert [r["run_id"] for r in summary] == ["new", "empty", "old"]
    by_id = {r["run_id"]: r for r in summary}
    assert by_id["old"]["jobs"] == {"succeeded": 1, "failed": 1, "skipped": 1, "pending": 5}
    assert by_id["new"]["jobs"] == {"pending": 4}
    assert by_id["empty"]["jobs"] == {}
    assert by_id["old"]["name"] == "name of old"
    assert by_id["old"]["created_at_ns"] == 1_000
    assert by_id["old"]["finished_at_ns"] > 0
    assert by_id["new"]["finished_at_ns"] is None
    assert store.latest_run_id() == "new"


# ---------------------------------------------------------------------------------------------- results


def test_save_result_round_trips_and_is_idempotent(store: Store) -> None:
    jobs = new_run(store)
    first = make_result(seed=1)
    assert store.save_result(jobs[0].job_id, first) is True
    stored = job_by_id(store, "run-1", jobs[0].job_id)
    assert stored.status is JobStatus.SUCCEEDED
    assert stored.result == first
    before = store.load_run("run-1")

    # A re-delivered result (even a different one) changes nothing.
    again = make_result(JobStatus.FAILED, seed=2, message="second delivery")
    assert store.save_result(jobs[0].job_id, again) is False
    assert store.save_result(jobs[0].job_id, first) is False
    assert store.load_run("run-1") == before


def test_result_without_optional_fields_round_trips(store: Store) -> None:
    jobs = new_run(store)
    bare = ResultData(status=JobStatus.REJECTED, message="result rejected: top1 = 1.5 is outside [0.0, 1]")
    assert store.save_result(jobs[1].job_id, bare)
    stored = job_by_id(store, "run-1", jobs[1].job_id)
    assert stored.result == bare
    assert stored.result is not None and stored.result.top1 is None and stored.result.latencies_ns == ()
    assert stored.status is JobStatus.REJECTED
    assert stored.message == bare.message


def test_set_job_status_never_overwrites_a_stored_result(store: Store) -> None:
    jobs = new_run(store)
    store.set_job_status(jobs[0].job_id, JobStatus.RUNNING)
    assert job_by_id(store, "run-1", jobs[0].job_id).status is JobStatus.RUNNING
    store.save_result(jobs[0].job_id, make_result())
    store.set_job_status(jobs[0].job_id, JobStatus.UNREACHABLE, "device went away")
    job = job_by_id(store, "run-1", jobs[0].job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert job.message == ""
    # A job without a result moves freely.
    store.set_job_status(jobs[1].job_id, JobStatus.UNREACHABLE, "device went away")
    other = job_by_id(store, "run-1", jobs[1].job_id)
    assert (other.status, other.message) == (JobStatus.UNREACHABLE, "device went away")


def test_new_attempt_renews_a_cancelled_job_and_drops_its_result(store: Store) -> None:
    jobs = new_run(store)
    old_id = jobs[2].job_id
    assert store.save_result(old_id, make_result(JobStatus.CANCELLED, n=3))
    assert job_by_id(store, "run-1", old_id).status is JobStatus.CANCELLED

    store.new_attempt(old_id, "run-1.renewed.2", 2)
    ids = [j.job_id for j in store.jobs("run-1")]
    assert old_id not in ids
    assert ids[2] == "run-1.renewed.2"  # keeps its place in the run
    renewed = store.jobs("run-1")[2]
    assert (renewed.device, renewed.variant, renewed.runtime) == (jobs[2].device, jobs[2].variant, jobs[2].runtime)
    assert renewed.attempt == 2
    assert renewed.status is JobStatus.PENDING
    assert renewed.message == ""
    assert renewed.result is None
    # The new attempt can store its own result.
    assert store.save_result("run-1.renewed.2", make_result())
    assert store.jobs("run-1")[2].status is JobStatus.SUCCEEDED


def test_new_attempt_of_a_job_without_result_keeps_its_place(store: Store) -> None:
    jobs = new_run(store)
    store.set_job_status(jobs[0].job_id, JobStatus.UNREACHABLE, "gone")
    store.new_attempt(jobs[0].job_id, "fresh.2", 2)
    first = store.jobs("run-1")[0]
    assert (first.job_id, first.attempt, first.status) == ("fresh.2", 2, JobStatus.PENDING)


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.REJECTED])
def test_new_attempt_refuses_a_final_job(store: Store, final: JobStatus) -> None:
    jobs = new_run(store)
    store.save_result(jobs[0].job_id, make_result(final))
    before = store.load_run("run-1")
    store.new_attempt(jobs[0].job_id, "should-not-exist.2", 2)
    assert store.load_run("run-1") == before
    store.set_job_status(jobs[1].job_id, JobStatus.SKIPPED, "not runnable")  # final without a result
    before = store.load_run("run-1")
    store.new_attempt(jobs[1].job_id, "should-not-exist.3", 2)
    store.new_attempt("no-such-job", "should-not-exist.4", 2)
    assert store.load_run("run-1") == before


def test_results_and_runs_survive_reopening(db: Path) -> None:
    store = Store(db)
    store.add_device(Device(name="pi5", address="pi5.local:50051", added_at_ns=5))
    jobs = new_run(store)
    store.record_probe("run-1", make_probe())
    result = make_result(n=2_000, seed=9)
    store.save_result(jobs[0].job_id, result)
    store.set_job_status(jobs[1].job_id, JobStatus.UNREACHABLE, "gone")
    store.finish_run("run-1")
    expected = store.load_run("run-1")
    store.close()

    reopened = Store(db)
    assert reopened.load_run("run-1") == expected
    assert reopened.jobs("run-1")[0].result == result
    assert reopened.device("pi5") == Device(name="pi5", address="pi5.local:50051", added_at_ns=5)
    assert reopened.save_result(jobs[0].job_id, make_result(JobStatus.FAILED)) is False  # still idempotent
    reopened.close()


def test_a_second_store_on_the_same_file_sees_committed_writes(db: Path) -> None:
    writer = Store(db)
    reader = Store(db)
    jobs = new_run(writer)
    writer.save_result(jobs[0].job_id, make_result())
    # No close: committed means visible to another connection (e.g. `edgebench report` during a run).
    assert reader.jobs("run-1")[0].result == make_result()
    writer.close()
    reader.close()


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "store-per-thread"])
def test_concurrent_writers_lose_nothing(db: Path, shared: bool) -> None:
    threads_n, per_thread = 8, 50
    cells = [(f"dev{t}", f"v{i}", "onnxruntime") for t in range(threads_n) for i in range(per_thread)]
    main = Store(db)
    jobs = new_run(main, cells=cells)
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        store = main if shared else Store(db)
        try:
            barrier.wait()
            for i in range(per_thread):
                job = jobs[t * per_thread + i]
                assert store.save_result(job.job_id, make_result(n=20, seed=t * 1000 + i))
                store.set_job_status(job.job_id, JobStatus.UNREACHABLE)  # refused: has a result
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            store.close()  # this thread's connection

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not errors, errors
    stored = main.jobs("run-1")
    assert len(stored) == threads_n * per_thread
    for index, job in enumerate(stored):
        assert job.status is JobStatus.SUCCEEDED
        assert job.result == make_result(n=20, seed=(index // per_thread) * 1000 + index % per_thread)
    assert main.runs()[0]["jobs"] == {"succeeded": threads_n * per_thread}
    main.close()


# ---------------------------------------------------------------------------------------------- samples codec


def test_samples_codec_round_trips_random_int64_exactly() -> None:
    rng = np.random.default_rng(42)
    info = np.iinfo(np.int64)
    cases = [
        [],
        [1],
        [info.max],
        [info.max, info.min, info.max, 0, info.min, -1, 1],  # deltas overflow int64: must still round-trip
        rng.integers(info.min, info.max, size=5_000, dtype=np.int64, endpoint=True).tolist(),
        rng.integers(1, 2**62, size=5_000, dtype=np.int64).tolist(),
        rng.integers(1, 3_600 * 10**9, size=5_000, dtype=np.int64).tolist(),
    ]
    for samples in cases:
        decoded = decode_samples(encode_samples(samples))
        assert decoded == tuple(samples)
        assert all(type(x) is int for x in decoded)


def test_samples_codec_is_compact() -> None:
    rng = np.random.default_rng(7)
    n = 100_000
    # Typical steady-state latencies: ~5 ms with ~1% jitter and a few outliers.
    samples = (5 * MS + rng.normal(0, 50_000, n)).astype(np.int64)
    samples[rng.integers(0, n, 100)] += 20 * MS
    blob = encode_samples(samples.tolist())
    per_sample = len(blob) / n
    assert per_sample < 4.0, f"{per_sample:.2f} bytes per sample"  # measured ~3.2; raw int64 would be 8
    assert decode_samples(blob) == tuple(samples.tolist())
    # Quantised timers (e.g. microsecond clocks) compress further still.
    coarse = (samples // 1_000 * 1_000).tolist()
    assert len(encode_samples(coarse)) / n < per_sample


def test_store_keeps_100k_samples_exactly(store: Store) -> None:
    jobs = new_run(store)
    samples = tuple(int(x) for x in np.random.default_rng(3).integers(1, 3_600 * 10**9, 100_000))
    store.save_result(jobs[0].job_id, make_result(latencies_ns=samples, steady_wall_ns=sum(samples)))
    stored = job_by_id(store, "run-1", jobs[0].job_id).result
    assert stored is not None and stored.latencies_ns == samples
