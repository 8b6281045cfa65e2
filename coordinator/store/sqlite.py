"""The coordinator's store: one SQLite file, WAL mode, numbered migrations (`PRAGMA user_version`).

Contract: a result is committed before the dispatcher moves on (nothing is lost if the coordinator is
killed afterwards); `save_result` is idempotent per job id (a re-delivered result changes nothing);
raw samples are kept losslessly but compactly (zlib of int64 deltas). Each thread uses its own
connection (`Store` is cheap to share: connections are per thread). Any number of processes may open the
same file at once, a fresh one included: the schema is read and migrated under SQLite's write lock, so
exactly one of them applies each migration and the others wait (up to BUSY_TIMEOUT_S) and then see it.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.types import (
    Device,
    DeviceProbe,
    JobRecord,
    JobStatus,
    MeasurementSettings,
    ResultData,
    RunData,
    RunSpec,
    RuntimeStatus,
    SandboxStatus,
    Variant,
    variant_from_json,
)

SCHEMA_VERSION = 1
#: How long a connection waits for another process's write lock before giving up (SQLite busy timeout).
BUSY_TIMEOUT_S = 30.0


class StoreError(Exception):
    """The store cannot be used (newer schema, unreadable file, name clash); the message says what to do."""


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("coordinator.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def encode_samples(samples: Sequence[int]) -> bytes:
    arr = np.asarray(samples, dtype="<i8")
    # Level 1: ~10x faster than the default for ~20% more bytes (still ~3-4 bytes per sample).
    return zlib.compress(np.diff(arr, prepend=np.int64(0)).astype("<i8").tobytes(), 1)


def decode_samples(blob: bytes) -> tuple[int, ...]:
    deltas = np.frombuffer(zlib.decompress(blob), dtype="<i8")
    return tuple(np.cumsum(deltas).tolist())


def _dump(obj: Any) -> str:
    return json.dumps(dataclasses.asdict(obj), default=lambda o: o.value if hasattr(o, "value") else str(o))


def _probe_from(data: dict[str, Any]) -> DeviceProbe:
    data = dict(data)
    data["gpus"] = tuple(data.get("gpus", ()))
    data["runtimes"] = tuple(
        RuntimeStatus(**{**r, "providers": tuple(r.get("providers", ())), "formats": tuple(r.get("formats", ()))})
        for r in data.get("runtimes", ())
    )
    data["sandbox"] = tuple(SandboxStatus(**c) for c in data.get("sandbox", ()))
    return DeviceProbe(**data)


def _spec_from(data: dict[str, Any]) -> RunSpec:
    data = dict(data)
    settings = dict(data["settings"])
    # JSON turns the tuple of pairs into a list of lists.
    settings["runtime_options"] = tuple((str(k), str(v)) for k, v in settings.get("runtime_options", ()))
    data["settings"] = MeasurementSettings(**settings)
    for key in ("devices", "runtimes", "variants"):
        data[key] = tuple(data[key])
    return RunSpec(**data)


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, waiting for other processes. Switching a fresh file needs its exclusive lock, and
    SQLite answers "database is locked" at once, without the busy timeout, while another connection is
    switching the same file; so retry until BUSY_TIMEOUT_S has passed."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        # One writer at a time inside this process: SQLite's own busy handler backs off by sleeping (up to
        # 100 ms) and is unfair, so a burst of results from many device threads would wait far longer.
        self._write_lock = threading.Lock()
        #: The migrations this open applied (empty when the file was already current).
        self.applied: list[int] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # ------------------------------------------------------------------ connection

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
                _enable_wal(conn)
                # FULL: a committed result survives power loss too, not only a killed coordinator.
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot open the store {self.path}: {exc}") from None
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        with self._write_lock, self._database_errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _database_errors(self) -> Iterator[None]:
        """A damaged file (torn write, disk error) surfaces as StoreError with what to do, not a traceback."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreError(
                    f"the store {self.path} is busy: another process held its write lock for over "
                    f"{BUSY_TIMEOUT_S:.0f} s; retry when it is done"
                ) from None
            raise StoreError(
                f"the store {self.path} cannot be used: {exc}; restore it from a backup or point --db at a new file"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"the store {self.path} cannot be used: {exc}; restore it from a backup or point --db at a new file"
            ) from None

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._database_errors():
            return self._conn().execute(sql, params).fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _migrate(self) -> None:
        latest = _migrations()
        newest = latest[-1][0]
        if self._query("PRAGMA user_version")[0][0] == newest:
            return  # the common case: current already, no write lock needed
        # Read the version again under the write lock (BEGIN IMMEDIATE): two processes opening a fresh file
        # at once would otherwise both see 0 and both apply migration 1, and the second would fail on
        # "table already exists". The second one waits here, then finds the version the first one set.
        with self._tx() as tx:
            version = tx.execute("PRAGMA user_version").fetchone()[0]
            if version > newest:
                raise StoreError(
                    f"the store {self.path} has schema {version}, newer than this edgebench understands "
                    f"({newest}); upgrade edgebench or point --db elsewhere"
                )
            for number, sql in latest:
                if number > version:
                    for statement in sql.split(";\n"):
                        if statement.strip():
                            tx.execute(statement)
                    tx.execute(f"PRAGMA user_version = {number}")
                    self.applied.append(number)

    # ------------------------------------------------------------------ devices

    def add_device(self, device: Device, *, replace: bool = False) -> None:
        with self._tx() as tx:
            exists = tx.execute("SELECT 1 FROM devices WHERE name = ?", (device.name,)).fetchone()
            if exists and not replace:
                raise StoreError(
                    f"a device named {device.name!r} is already registered; remove it first or pick another name"
                )
            tx.execute(
                "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    device.name,
                    device.address,
                    device.token_file,
                    device.tls_ca,
                    device.tls_cert,
                    device.tls_key,
                    device.tls_server_name,
                    device.added_at_ns or time.time_ns(),
                ),
            )

    def remove_device(self, name: str) -> bool:
        with self._tx() as tx:
            return tx.execute("DELETE FROM devices WHERE name = ?", (name,)).rowcount > 0

    def devices(self) -> list[Device]:
        rows = self._query("SELECT * FROM devices ORDER BY name")
        return [Device(**dict(r)) for r in rows]

    def device(self, name: str) -> Device | None:
        rows = self._query("SELECT * FROM devices WHERE name = ?", (name,))
        return Device(**dict(rows[0])) if rows else None

    # ------------------------------------------------------------------ runs

    def create_run(self, spec: RunSpec, variants: Sequence[Variant], jobs: Sequence[JobRecord]) -> None:
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, NULL)", (spec.run_id, spec.name, _dump(spec), spec.created_at_ns)
            )
            tx.executemany(
                "INSERT INTO run_variants VALUES (?, ?, ?)",
                [(spec.run_id, i, _dump(v)) for i, v in enumerate(variants)],
            )
            tx.executemany(
                "INSERT INTO jobs (job_id, run_id, position, device, variant, runtime, attempt, status, message, "
                "updated_at_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        j.job_id,
                        j.run_id,
                        i,
                        j.device,
                        j.variant,
                        j.runtime,
                        j.attempt,
                        j.status.value,
                        j.message,
                        time.time_ns(),
                    )
                    for i, j in enumerate(jobs)
                ],
            )

    def record_probe(self, run_id: str, probe: DeviceProbe) -> None:
        with self._tx() as tx:
            tx.execute("INSERT OR REPLACE INTO run_devices VALUES (?, ?, ?)", (run_id, probe.name, _dump(probe)))

    def set_job_status(self, job_id: str, status: JobStatus, message: str = "") -> None:
        """Move a job that has no stored result to `status` (a stored result is never overwritten)."""
        with self._tx() as tx:
            tx.execute(
                "UPDATE jobs SET status = ?, message = ?, updated_at_ns = ? WHERE job_id = ? "
                "AND NOT EXISTS (SELECT 1 FROM results WHERE results.job_id = jobs.job_id)",
                (status.value, message, time.time_ns(), job_id),
            )

    def new_attempt(self, job_id: str, new_job_id: str, attempt: int) -> None:
        """Give a job that ended without a final result (e.g. CANCELLED) a fresh id, so the agent runs it again
        rather than replaying the old outcome. The old non-final result, if stored, is dropped with it."""
        with self._tx() as tx:
            row = tx.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None or JobStatus(row["status"]).final:
                return
            tx.execute("DELETE FROM results WHERE job_id = ?", (job_id,))
            tx.execute(
                "UPDATE jobs SET job_id = ?, attempt = ?, status = ?, message = '', updated_at_ns = ? WHERE job_id = ?",
                (new_job_id, attempt, JobStatus.PENDING.value, time.time_ns(), job_id),
            )

    def save_result(self, job_id: str, result: ResultData) -> bool:
        """Commit a final result and the job's status together. Returns False if one was already stored."""
        # asdict deep-copies; leave the (large) sample tuple out of it, it is stored separately.
        fields = dataclasses.asdict(dataclasses.replace(result, latencies_ns=()))
        fields.pop("latencies_ns")
        fields["status"] = result.status.value
        samples = encode_samples(result.latencies_ns)
        result_json = json.dumps(fields)
        with self._tx() as tx:
            inserted = tx.execute(
                "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?)",
                (
                    job_id,
                    samples,
                    len(result.latencies_ns),
                    result_json,
                    time.time_ns(),
                ),
            ).rowcount
            if inserted:
                tx.execute(
                    "UPDATE jobs SET status = ?, message = ?, updated_at_ns = ? WHERE job_id = ?",
                    (result.status.value, result.message, time.time_ns(), job_id),
                )
        return bool(inserted)

    def finish_run(self, run_id: str) -> None:
        with self._tx() as tx:
            tx.execute("UPDATE runs SET finished_at_ns = ? WHERE run_id = ?", (time.time_ns(), run_id))

    def runs(self) -> list[dict[str, Any]]:
        """One summary row per run, newest first: id, name, created/finished, job counts per status."""
        rows = (
            self._conn()
            .execute(
                "SELECT r.run_id, r.name, r.created_at_ns, r.finished_at_ns, j.status, COUNT(j.job_id) AS n "
                "FROM runs r LEFT JOIN jobs j ON j.run_id = r.run_id GROUP BY r.run_id, j.status "
                "ORDER BY r.created_at_ns DESC"
            )
            .fetchall()
        )
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            entry = out.setdefault(
                r["run_id"],
                {
                    "run_id": r["run_id"],
                    "name": r["name"],
                    "created_at_ns": r["created_at_ns"],
                    "finished_at_ns": r["finished_at_ns"],
                    "jobs": {},
                },
            )
            if r["status"]:
                entry["jobs"][r["status"]] = r["n"]
        return list(out.values())

    def job_statuses(self, run_id: str) -> list[JobStatus]:
        """Statuses only (no results decoded): cheap enough to ask after every job."""
        return [JobStatus(r[0]) for r in self._query("SELECT status FROM jobs WHERE run_id = ?", (run_id,))]

    def latest_run_id(self) -> str | None:
        rows = self._query("SELECT run_id FROM runs ORDER BY created_at_ns DESC LIMIT 1")
        return str(rows[0][0]) if rows else None

    def jobs(self, run_id: str) -> list[JobRecord]:
        rows = self._query(
            "SELECT j.*, r.samples, r.result_json FROM jobs j LEFT JOIN results r ON r.job_id = j.job_id "
            "WHERE j.run_id = ? ORDER BY j.position",
            (run_id,),
        )
        out = []
        for row in rows:
            result = None
            if row["result_json"] is not None:
                data = json.loads(row["result_json"])
                data["status"] = JobStatus(data["status"])
                result = ResultData(latencies_ns=decode_samples(row["samples"]), **data)
            out.append(
                JobRecord(
                    job_id=row["job_id"],
                    run_id=row["run_id"],
                    device=row["device"],
                    variant=row["variant"],
                    runtime=row["runtime"],
                    status=JobStatus(row["status"]),
                    message=row["message"],
                    attempt=row["attempt"],
                    updated_at_ns=row["updated_at_ns"],
                    result=result,
                )
            )
        return out

    def load_run(self, run_id: str) -> RunData:
        rows = self._query("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            known = ", ".join(r["run_id"] for r in self.runs()[:5]) or "none yet"
            raise StoreError(f"no run {run_id!r} in {self.path}; recent runs: {known}")
        row = rows[0]
        variant_rows = self._query(
            "SELECT variant_json FROM run_variants WHERE run_id = ? ORDER BY position", (run_id,)
        )
        device_rows = self._query("SELECT probe_json FROM run_devices WHERE run_id = ? ORDER BY device", (run_id,))
        variants = tuple(variant_from_json(json.loads(r[0])) for r in variant_rows)
        devices = tuple(_probe_from(json.loads(r[0])) for r in device_rows)
        return RunData(
            spec=_spec_from(json.loads(row["spec_json"])),
            variants=variants,
            devices=devices,
            jobs=tuple(self.jobs(run_id)),
            finished_at_ns=row["finished_at_ns"] or 0,
        )
