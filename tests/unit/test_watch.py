"""The job event reader (agent/watch.py): whatever a hostile job writes is bounded and parsed defensively."""

from __future__ import annotations

import json
import os
import time

from agent.types import JobPhase
from agent.watch import EventReader


def _reader(max_line: int = 1024) -> tuple[EventReader, list[tuple[JobPhase, int, str]], int]:
    read_fd, write_fd = os.pipe()
    seen: list[tuple[JobPhase, int, str]] = []
    reader = EventReader(read_fd, lambda p, i, m: seen.append((p, i, m)), max_line_bytes=max_line)
    return reader, seen, write_fd


def _line(event: object) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def test_sandbox_report_is_believed_only_as_the_first_line() -> None:
    reader, _, w = _reader()
    reader.feed(_line({"kind": "sandbox", "enforced": {"netns": "yes"}}))
    reader.feed(_line({"kind": "sandbox", "enforced": {"netns": "forged"}}))
    assert reader.sandbox == {"kind": "sandbox", "enforced": {"netns": "yes"}}
    late, _, w2 = _reader()
    late.feed(_line({"kind": "progress", "phase": "loading"}) + _line({"kind": "sandbox", "enforced": {}}))
    assert late.sandbox is None
    for fd in (w, w2):
        os.close(fd)


def test_first_result_wins_and_garbage_is_counted_not_raised() -> None:
    reader, _, w = _reader(max_line=10**7)
    reader.feed(b"not json\n" + b"[" * 200_000 + b"]" * 200_000 + b"\n" + b"42\n")
    reader.feed(_line({"kind": "result", "result": {"job_id": "a"}}) + _line({"kind": "result", "result": {"x": 1}}))
    reader.feed(_line({"kind": "progress", "phase": "no-such-phase"}))
    assert reader.result == {"job_id": "a"}
    assert reader.garbled == 4
    os.close(w)


def test_long_line_is_dropped_while_it_streams_in() -> None:
    """A line over the bound is never held: after the bound, bytes are discarded until the next newline."""
    reader, _, w = _reader(max_line=1000)
    for _ in range(100):
        reader.feed(b"y" * 100)  # 10,000 bytes, no newline
    assert reader._pending <= 1000 and reader.error
    reader.feed(b"tail\n" + _line({"kind": "result", "result": {"ok": True}}))
    assert reader.result == {"ok": True}  # the stream recovers at the next line
    os.close(w)


def test_many_small_chunks_are_linear() -> None:
    """F12: a 4 MiB line arriving in 4 KiB chunks is joined once (the old reader re-copied it per chunk)."""
    reader, _, w = _reader(max_line=8 * 2**20)
    payload = _line({"kind": "result", "result": {"blob": "z" * (4 * 2**20)}})
    started = time.perf_counter()
    for i in range(0, len(payload), 4096):
        reader.feed(payload[i : i + 4096])
    assert reader.result is not None and len(reader.result["blob"]) == 4 * 2**20
    assert time.perf_counter() - started < 2.0
    os.close(w)


def test_progress_flood_is_rate_limited_but_phase_changes_pass() -> None:
    reader, seen, w = _reader()
    for phase in ("loading", "warmup", "measuring"):
        for i in range(1000):
            reader.feed(_line({"kind": "progress", "phase": phase, "iterations": i, "message": "m"}))
    phases = [p for p, _, _ in seen]
    assert sorted(set(phases), key=phases.index) == [JobPhase.LOADING, JobPhase.WARMUP, JobPhase.MEASURING]
    assert len(seen) < 100 and reader.dropped_progress > 2900
    os.close(w)


def test_eof_does_not_end_anything_and_drain_reads_what_is_left() -> None:
    reader, _, w = _reader()
    os.write(w, _line({"kind": "result", "result": {"late": 1}}))
    os.close(w)
    reader.drain(1.0)
    assert reader.result == {"late": 1} and reader.eof
    reader.pump(0.01)  # after EOF, pumping only waits
    reader.close()
