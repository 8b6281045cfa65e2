"""The one-command demo: two local agents with different settings, the built-in model, a real report.

The agents are separate processes on loopback; one may use a single CPU, the other all of them, so the
report is genuinely cross-device. Because they share this machine's CPUs, they are measured one after
the other (device concurrency 1): measured side by side they would slow each other down. They are
registered under fixed names in the user's store for the run (so `edgebench report latest` finds it)
and removed afterwards; their results stay.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from coordinator.dispatch.dispatcher import Dispatcher, OnEvent
from coordinator.dispatch.local import LocalAgent, start_agent
from coordinator.models.synthetic import DEFAULT_BENCH_CNN, make_dataset
from coordinator.runs import start_run
from coordinator.store.sqlite import Store
from coordinator.types import Device, MeasurementSettings, RunData

#: (device name, agent flags): a 1-CPU device and one with every CPU of this machine.
DEMO_AGENTS: tuple[tuple[str, list[str]], ...] = (("demo-1cpu", ["--cpu-affinity", "0"]), ("demo-allcpus", []))


@dataclass(frozen=True)
class DemoResult:
    run: RunData
    html: Path
    markdown: Path


def builtin_model(folder: Path) -> tuple[Path, Path]:
    """The built-in model and its dataset (cached in `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "builtin_cnn.onnx"
    data = folder / "builtin_cnn.npz"
    if not model.exists():
        DEFAULT_BENCH_CNN.build(model, batch=None)
    if not data.exists():
        make_dataset(data, model_path=model, n=256)
    return model, data


@contextlib.contextmanager
def local_agents(folder: Path, log: Callable[[str], None]) -> Iterator[list[tuple[str, LocalAgent]]]:
    started: list[tuple[str, LocalAgent]] = []
    try:
        for name, wanted in DEMO_AGENTS:
            # macOS has no CPU pinning: there the two agents differ only by name.
            flags = wanted if hasattr(os, "sched_setaffinity") else []
            agent = start_agent(folder / name, extra_args=flags)
            log(f"started agent {name} at {agent.address} (pid {agent.process.pid}) {' '.join(flags)}".rstrip())
            started.append((name, agent))
        yield started
    finally:
        for name, agent in started:
            agent.stop()
            log(f"stopped agent {name}")


def run_demo(
    store: Store,
    out_dir: Path,
    *,
    min_duration_s: float = 2.0,
    on_event: OnEvent | None = None,
    log: Callable[[str], None] = print,
) -> DemoResult:
    from coordinator.report import build_report, render

    out_dir.mkdir(parents=True, exist_ok=True)
    model, data = builtin_model(out_dir / "model")
    log(f"built-in model {model.name} ({model.stat().st_size / 1e6:.1f} MB) and dataset {data.name}")
    with local_agents(out_dir / "agents", log) as agents:
        for name, agent in agents:
            store.add_device(
                Device(name=name, address=agent.address, token_file=str(agent.workdir / "token")), replace=True
            )
        try:
            settings = MeasurementSettings(
                min_duration_s=min_duration_s, min_iterations=200, max_duration_s=30.0, warmup_iterations=20
            )
            run = start_run(
                store,
                model=model,
                dataset=data,
                devices=",".join(n for n, _ in agents),
                settings=settings,
                name=f"demo {time.strftime('%Y-%m-%d %H:%M')}",
                dispatcher=Dispatcher(store, on_event=on_event, device_concurrency=1),
            )
        finally:
            for name, _ in agents:
                store.remove_device(name)
    report = build_report(run)
    html, markdown = out_dir / "report.html", out_dir / "report.md"
    html.write_text(render(report, "html"), encoding="utf-8")
    markdown.write_text(render(report, "md"), encoding="utf-8")
    return DemoResult(run, html, markdown)
