"""Reading a job process's event pipe defensively: the job process is where a hostile model runs.

Whatever the job writes is bounded and parsed so that it cannot hurt the agent:
* a line may be at most MAX_LINE_BYTES (a result with a million raw samples fits several times over);
  a longer one is dropped while it streams in, never buffered, and recorded as a protocol error that
  fails the job;
* partial lines are kept as a list of chunks and joined once per line (no quadratic re-copying);
* progress lines are parsed at most PROGRESS_PER_S times a second (a change of phase always, up to
  MAX_PHASE_CHANGES); the rest are dropped unparsed, so a flood costs the agent a memchr per line, not a
  JSON parse;
* any parse failure (garbage, a deeply nested line that would raise RecursionError, wrong types) counts
  as one garbled line and is otherwise ignored;
* the sandbox report is believed only as the very first line (the job process sends it before it opens
  anything a client sent); the first result wins, later ones are ignored.
End of file does not end the watch: the supervisor keeps enforcing limits until the process is gone.
"""

from __future__ import annotations

import json
import os
import selectors
import time
from collections.abc import Callable
from typing import Any

from agent.types import JobPhase

#: A result with the 1,000,000-sample cap is ~13 MB of JSON (samples of up to 11 digits, plus the rest).
MAX_LINE_BYTES = 24 * 2**20
PROGRESS_PER_S = 20
MAX_PHASE_CHANGES = 64
MAX_MESSAGE_CHARS = 500
_PROGRESS_PREFIX = b'{"kind":"progress"'

Progress = Callable[[JobPhase, int, str], None]


class EventReader:
    def __init__(self, fd: int, progress: Progress, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._fd = fd
        self._sel = selectors.DefaultSelector()
        self._sel.register(fd, selectors.EVENT_READ)
        self._progress = progress
        self._max_line = max_line_bytes
        self._parts: list[bytes] = []
        self._pending = 0
        self._discarding = False
        self._last_progress = 0.0
        self._last_phase_bytes = b""
        self._phase_changes = 0
        self.lines = 0
        self.garbled = 0
        self.dropped_progress = 0
        self.eof = False
        self.error = ""
        self.phase = JobPhase.STARTING
        self.sandbox: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None

    def pump(self, timeout: float) -> None:
        """Read what is available within `timeout` seconds (sleeps the timeout once the pipe is closed)."""
        if self.eof:
            time.sleep(timeout)
            return
        if not self._sel.select(timeout):
            return
        self._read_once()

    def _read_once(self) -> None:
        try:
            data = os.read(self._fd, 1 << 20)
        except OSError:
            data = b""
        if not data:
            self.eof = True
            self._sel.unregister(self._fd)
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                self._keep(data[start:])
                return
            piece = data[start:newline]
            start = newline + 1
            if self._discarding:
                self._discarding = False
                continue
            if self._parts:
                self._parts.append(piece)
                line = b"".join(self._parts)
                self._parts, self._pending = [], 0
            else:
                line = piece
            if len(line) > self._max_line:
                self._too_long()
                continue
            self._handle(line)

    def _keep(self, rest: bytes) -> None:
        if not rest or self._discarding:
            return
        if self._pending + len(rest) > self._max_line:
            self._parts, self._pending = [], 0
            self._discarding = True
            self._too_long()
            return
        self._parts.append(rest)
        self._pending += len(rest)

    def _too_long(self) -> None:
        self.lines += 1
        self.error = self.error or (
            f"job process wrote an event line longer than {self._max_line} bytes (--max-event-line-bytes); "
            "the agent dropped it"
        )

    def _handle(self, line: bytes) -> None:
        self.lines += 1
        if line.startswith(_PROGRESS_PREFIX):
            now = time.monotonic()
            # A change of phase is always parsed (a real job has a handful); the rest at a bounded rate.
            head = line[len(_PROGRESS_PREFIX) : len(_PROGRESS_PREFIX) + 40]
            phase = head.split(b'"', 5)[3] if head.count(b'"') >= 4 else head  # ,"phase":"<this>"
            changed = phase != self._last_phase_bytes and self._phase_changes < MAX_PHASE_CHANGES
            if not changed and now - self._last_progress < 1 / PROGRESS_PER_S:
                self.dropped_progress += 1
                return
            if changed:
                self._phase_changes += 1
                self._last_phase_bytes = phase
            self._last_progress = now
        try:
            event = json.loads(line)
            if not isinstance(event, dict):
                raise TypeError("not an object")
            self._dispatch(event)
        except Exception:  # RecursionError included: whatever a line holds, it is only one garbled line
            self.garbled += 1

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "sandbox":
            if self.lines == 1:
                self.sandbox = event
        elif kind == "result":
            if self.result is None and isinstance(event.get("result"), dict):
                self.result = event["result"]
        elif kind == "progress":
            phase = JobPhase(event["phase"])
            iterations = int(event.get("iterations", 0))
            self.phase = phase
            self._progress(phase, max(0, iterations), str(event.get("message", ""))[:MAX_MESSAGE_CHARS])

    def drain(self, timeout_s: float) -> None:
        """Read what is left once the job is gone (its result may sit in the pipe), bounded in time."""
        deadline = time.monotonic() + timeout_s
        while not self.eof and time.monotonic() < deadline:
            if not self._sel.select(max(0.0, min(0.1, deadline - time.monotonic()))):
                break
            self._read_once()

    def close(self) -> None:
        self._sel.close()
        os.close(self._fd)
