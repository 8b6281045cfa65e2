"""Live progress of a fleet run: one line per device (rich Live on a terminal, plain lines otherwise).

Events come from agents, which are untrusted: whatever they send, memory and work stay flat and the
terminal shows data only. Each event overwrites its device's line (the latest progress wins; nothing is
kept per event), notes are cut to NOTE_CHARS on arrival, the table is drawn by rich's refresh thread at
REFRESH_PER_S rather than once per event, and every agent string is drawn as a rich `Text` after
`safe_text` (no markup, no escape sequences). Without a terminal only results are printed, one line per job.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from coordinator.dispatch.dispatcher import DispatchEvent
from coordinator.safe_text import one_line, text

#: Longest note kept per device (an agent may send megabytes of message per event).
NOTE_CHARS = 200
#: Redraws per second on a terminal, however many events arrive.
REFRESH_PER_S = 4


@dataclass
class _DeviceLine:
    total: int
    done: int = 0
    failed: int = 0
    state: str = "waiting"
    job: str = ""
    phase: str = ""
    iterations: int = 0
    note: str = ""
    started: float = field(default_factory=time.monotonic)


class LiveProgress:
    """Callable receiving dispatcher events from worker threads; keeps the latest state per device."""

    def __init__(self, totals: dict[str, int], console: Any) -> None:
        self._lines = {name: _DeviceLine(total) for name, total in totals.items()}
        self._console = console
        self._lock = threading.Lock()
        self._live: Any = None
        #: Events received (a count, not a list: a flood must not grow memory).
        self.received = 0

    def __enter__(self) -> LiveProgress:
        if self._console.is_terminal:
            from rich.live import Live

            # Live draws `self` (see __rich__) on its own thread; events only change the state it reads.
            self._live = Live(self, console=self._console, refresh_per_second=REFRESH_PER_S, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(exc_type, exc, tb)

    def __call__(self, event: DispatchEvent) -> None:
        note = event.message[:NOTE_CHARS]
        with self._lock:
            self.received += 1
            line = self._lines.get(event.device)
            if line is None:
                # Devices come from the store, not from agents; still bound the table.
                if len(self._lines) >= 4096:
                    return
                line = self._lines[event.device] = _DeviceLine(0)
            if event.kind == "device":
                line.state, line.note = "preparing", note
            elif event.kind == "progress":
                line.state, line.job = "running", f"{event.variant}/{event.runtime}"
                line.phase, line.iterations = event.phase, event.iterations
                line.note = note
                if event.phase == "queued" and event.queue_position:
                    line.note = f"{event.queue_position} job(s) ahead on the agent"
            elif event.kind == "result" and event.status is not None:
                line.done += 1
                if event.status.value not in ("succeeded", "skipped"):
                    line.failed += 1
                line.job, line.phase, line.iterations = f"{event.variant}/{event.runtime}", event.status.value, 0
                line.note = note
                line.state = "done" if line.done >= line.total else "running"
                if self._live is None:
                    suffix = f": {event.message}" if event.message else ""
                    self._console.print(
                        one_line(f"[{event.device}] {event.variant}/{event.runtime} {event.status.value}{suffix}", 240),
                        markup=False,
                        highlight=False,
                        emoji=False,
                        soft_wrap=True,  # one log line per job, as sent (the terminal wraps it)
                    )

    def __rich__(self) -> Any:
        """The table as it stands (called by rich Live on its refresh thread)."""
        from rich.table import Table

        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for column in ("device", "jobs", "state", "current", "phase", "iterations", "note"):
            table.add_column(column, overflow="ellipsis", no_wrap=True, max_width=60 if column == "note" else None)
        with self._lock:
            rows = [
                (
                    name,
                    (f"{line.done}/{line.total}" if line.total else str(line.done))
                    + (f" ({line.failed} not ok)" if line.failed else ""),
                    line.state,
                    line.job,
                    line.phase,
                    str(line.iterations or ""),
                    line.note,
                )
                for name, line in self._lines.items()
            ]
        for row in rows:
            table.add_row(*(text(cell, limit=NOTE_CHARS) for cell in row))
        return table
