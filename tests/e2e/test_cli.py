"""The `edgebench` command line as a user runs it: a real process, a real store, real agents."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.dispatch.local import LocalAgent


def edgebench(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEBENCH_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def test_help_is_instant(tmp_path: Path) -> None:
    started = time.monotonic()
    done = edgebench(tmp_path, "--help")
    assert done.returncode == 0 and "fleet" in done.stdout and "report" in done.stdout
    assert time.monotonic() - started < 5  # no torch, no runtimes imported for --help


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("fleet", "add", "bad name!", "127.0.0.1:1"), "device name 'bad name!' must be"),
        (("fleet", "add", "dev", "no-port"), "must be HOST:PORT"),
        (("fleet", "add", "dev", "127.0.0.1:1", "--token-file", "/nonexistent/token"), "does not exist"),
        (("fleet", "show", "nope"), "no device named 'nope'"),
        (("fleet", "remove", "nope"), "no device named 'nope'"),
        (("run",), "give a MODEL to benchmark, or --resume RUN_ID"),
        (("report", "--format", "pdf"), "unknown format 'pdf'"),
        (("report", "no-such-run"), "no run 'no-such-run'"),
        (("run", "builtin", "--option", "openvino.device"), "expected RUNTIME.KEY=VALUE"),
        (("compress", "builtin", "--formats", "tflite,onnx2"), "unknown format(s) onnx2"),
    ],
)
def test_bad_input_is_a_message_and_exit_code(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    done = edgebench(tmp_path, *args)
    assert done.returncode in (2, 3), done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_run_without_devices(tmp_path: Path, models: dict[str, Path]) -> None:
    done = edgebench(tmp_path, "run", str(models["mlp"]))
    assert done.returncode == 2 and "no devices registered" in done.stderr


def test_fleet_run_report_cycle(tmp_path: Path, agent: LocalAgent, models: dict[str, Path]) -> None:
    home = tmp_path / "home"
    token = agent.workdir / "token"
    assert edgebench(home, "fleet", "add", "box", agent.address, "--token-file", str(token)).returncode == 0
    dup = edgebench(home, "fleet", "add", "box", agent.address)
    assert dup.returncode == 2 and "already registered" in dup.stderr
    assert edgebench(home, "fleet", "add", "offline", "127.0.0.1:1").returncode == 0
    listed = json.loads(edgebench(home, "fleet", "list", "--format", "json").stdout)
    by_name = {d["name"]: d for d in listed}
    assert by_name["box"]["online"] and by_name["box"]["compatible"]
    assert any(r["name"] == "onnxruntime" and r["available"] for r in by_name["box"]["runtimes"])
    assert not by_name["offline"]["online"] and by_name["offline"]["error"]
    table = edgebench(home, "fleet", "list")
    assert "box" in table.stdout and "offline" in table.stdout
    shown = edgebench(home, "fleet", "show", "box")
    assert "online" in shown.stdout and "onnxruntime" in shown.stdout and "tensorrt" in shown.stdout
    # What contains a job there, each protection with how (or why not): the agent's own probe of this machine.
    assert "job sandbox (auto):" in shown.stdout
    for control in ("processes", "memory", "network", "filesystem", "secrets", "privileges", "environment"):
        assert f"  {control}" in shown.stdout
    shown_json = json.loads(edgebench(home, "fleet", "show", "box", "--format", "json").stdout)
    assert {c["name"] for c in shown_json["sandbox"]} >= {"processes", "network", "secrets"}
    assert edgebench(home, "fleet", "remove", "offline").returncode == 0

    done = edgebench(
        home,
        "run",
        str(models["mlp"]),
        "--dataset",
        str(models["mlp_data"]),
        "--min-duration",
        "0.2",
        "--min-iterations",
        "20",
        "--name",
        "cli-test",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout and "run id:" in done.stdout
    runs = json.loads(edgebench(home, "runs", "--format", "json").stdout)
    # No --runtimes: every runtime the agent has. The ONNX model runs on ONNX Runtime and, converted to an IR,
    # on OpenVINO; LiteRT and eager torch need the PyTorch model, so their cells are SKIPPED with that reason.
    assert len(runs) == 1 and runs[0]["name"] == "cli-test"
    assert runs[0]["jobs"] == {"succeeded": 2, "skipped": 2}
    run_id = runs[0]["run_id"]

    for fmt in ("md", "csv", "json", "html"):
        out = tmp_path / f"report.{fmt}"
        made = edgebench(home, "report", run_id, "--format", fmt, "-o", str(out))
        assert made.returncode == 0, made.stderr
        assert out.stat().st_size > 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text())))
    assert {r["runtime"]: r["status"] for r in rows} == {
        "onnxruntime": "succeeded",
        "openvino": "succeeded",
        "litert": "skipped",
        "torch": "skipped",
    }
    assert all(r["device"] == "box" for r in rows)
    assert "made from the PyTorch model" in (tmp_path / "report.md").read_text()
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema_version"] >= 1
    # Every measured cell says what contained its job process, as the job reported it before loading the model.
    ran = [c for c in data["cells"] if c["status"] == "succeeded"]
    for cell in ran:
        controls = {e["name"]: e for e in cell["provenance"]["sandbox"]}
        assert {"processes", "network", "secrets", "filesystem"} <= set(controls), controls
        assert all(e["detail"] for e in controls.values())
    sandbox_column = {r["provenance.sandbox"] for r in rows if r["status"] == "succeeded"}
    assert all("network=" in v for v in sandbox_column)
    assert "sandbox: network" in (tmp_path / "report.html").read_text()
    assert "box" in (tmp_path / "report.md").read_text()
    latest = edgebench(home, "report")  # default: latest run, terminal table
    assert latest.returncode == 0 and "box" in latest.stdout
