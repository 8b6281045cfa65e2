"""Live progress of a fleet run: one line per device (rich Live on a terminal, plain lines otherwise)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from coordinator.dispatch.dispatcher import DispatchEvent


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
    """Callable receiving dispatcher events from worker threads; renders them thread-safely."""

    def __init__(self, totals: dict[str, int], console: Any) -> None:
        self._lines = {name: _DeviceLine(total) for name, total in totals.items()}
        self._console = console
        self._lock = threading.Lock()
        self._live: Any = None
        self.events: list[DispatchEvent] = []

    def __enter__(self) -> LiveProgress:
        if self._console.is_terminal:
            from rich.live import Live

            self._live = Live(self._render(), console=self._console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(exc_type, exc, tb)

    def __call__(self, event: DispatchEvent) -> None:
        with self._lock:
            self.events.append(event)
            line = self._lines.setdefault(event.device, _DeviceLine(0))
            if event.kind == "device":
                line.state, line.note = "preparing", event.message
            elif event.kind == "progress":
                line.state, line.job = "running", f"{event.variant}/{event.runtime}"
                line.phase, line.iterations = event.phase, event.iterations
                line.note = event.message
                if event.phase == "queued" and event.queue_position:
                    line.note = f"{event.queue_position} job(s) ahead on the agent"
            elif event.kind == "result" and event.status is not None:
                line.done += 1
                if event.status.value not in ("succeeded", "skipped"):
                    line.failed += 1
                line.job, line.phase, line.iterations = f"{event.variant}/{event.runtime}", event.status.value, 0
                line.note = event.message
                line.state = "done" if line.done >= line.total else "running"
                if self._live is None:
                    note = f": {event.message[:160]}" if event.message else ""
                    self._console.print(
                        f"[{event.device}] {event.variant}/{event.runtime} {event.status.value}{note}",
                        markup=False,
                        highlight=False,
                    )
            if self._live is not None:
                self._live.update(self._render())

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for column in ("device", "jobs", "state", "current", "phase", "iterations", "note"):
            table.add_column(column, overflow="ellipsis", no_wrap=True, max_width=60 if column == "note" else None)
        for name, line in self._lines.items():
            jobs = f"{line.done}/{line.total}" + (f" ({line.failed} not ok)" if line.failed else "")
            table.add_row(name, jobs, line.state, line.job, line.phase, str(line.iterations or ""), line.note[:200])
        return table
