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
from coordinator.models.sources import BUILTIN
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


#: Every technique on the built-in model (the seed document's table, measured). Distillation trains two
#: students (with and without KD), so it gets fewer epochs here than its default.
DEMO_VARIANTS = "fp32,int8,fp16,prune:0.5,channels:0.5,distill:width=0.5;epochs=6,channels:0.5+int8"
#: The runtimes compared side by side. Each variant is converted for each (OpenVINO IR with NNCF for INT8,
#: TFLite with ai-edge-quantizer for INT8); eager torch is left out to keep the demo short (`edgebench run
#: builtin --runtimes ...,torch` adds it).
DEMO_RUNTIMES = ("onnxruntime", "openvino", "litert")


def run_demo(
    store: Store,
    out_dir: Path,
    *,
    min_duration_s: float = 1.0,
    variants: str = DEMO_VARIANTS,
    runtimes: tuple[str, ...] = DEMO_RUNTIMES,
    on_event: OnEvent | None = None,
    log: Callable[[str], None] = print,
) -> DemoResult:
    from coordinator.report import build_report, render

    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"building the variants of the built-in digits CNN: {variants} (cached after the first run)")
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
                model=BUILTIN,
                dataset=None,
                devices=",".join(n for n, _ in agents),
                variants=[variants],
                runtimes=runtimes,
                settings=settings,
                name=f"demo {time.strftime('%Y-%m-%d %H:%M')}",
                dispatcher=Dispatcher(store, on_event=on_event, device_concurrency=1),
                log=log,
            )
        finally:
            for name, _ in agents:
                store.remove_device(name)
    report = build_report(run)
    html, markdown = out_dir / "report.html", out_dir / "report.md"
    html.write_text(render(report, "html"), encoding="utf-8")
    markdown.write_text(render(report, "md"), encoding="utf-8")
    return DemoResult(run, html, markdown)
