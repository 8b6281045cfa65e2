-- edgebench coordinator store, schema 1.
CREATE TABLE devices (
    name            TEXT PRIMARY KEY,
    address         TEXT NOT NULL,
    token_file      TEXT NOT NULL DEFAULT '',
    tls_ca          TEXT NOT NULL DEFAULT '',
    tls_cert        TEXT NOT NULL DEFAULT '',
    tls_key         TEXT NOT NULL DEFAULT '',
    tls_server_name TEXT NOT NULL DEFAULT '',
    added_at_ns     INTEGER NOT NULL
);

CREATE TABLE runs (
    run_id         TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    spec_json      TEXT NOT NULL,
    created_at_ns  INTEGER NOT NULL,
    finished_at_ns INTEGER
);

CREATE TABLE run_variants (
    run_id       TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    variant_json TEXT NOT NULL,
    PRIMARY KEY (run_id, position)
);

-- What the run learned about each device when it (re)started.
CREATE TABLE run_devices (
    run_id     TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    device     TEXT NOT NULL,
    probe_json TEXT NOT NULL,
    PRIMARY KEY (run_id, device)
);

CREATE TABLE jobs (
    job_id        TEXT PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    device        TEXT NOT NULL,
    variant       TEXT NOT NULL,
    runtime       TEXT NOT NULL,
    attempt       INTEGER NOT NULL DEFAULT 1,
    status        TEXT NOT NULL,
    message       TEXT NOT NULL DEFAULT '',
    updated_at_ns INTEGER NOT NULL,
    UNIQUE (run_id, device, variant, runtime)
);
CREATE INDEX jobs_by_run ON jobs(run_id, position);

-- One final result per job id, written once: a re-delivered result is a no-op.
CREATE TABLE results (
    job_id          TEXT PRIMARY KEY REFERENCES jobs(job_id) ON DELETE CASCADE,
    samples         BLOB NOT NULL,   -- zlib(little-endian int64 deltas of the raw latencies, ns)
    n_samples       INTEGER NOT NULL,
    result_json     TEXT NOT NULL,   -- every other field of ResultData
    received_at_ns  INTEGER NOT NULL
);
