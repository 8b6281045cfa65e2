"""Starting and resuming fleet runs: resolve devices and variants, probe, plan, store, dispatch.

`--variants` is the hook the compression work fills: `build_variants` turns recipe names into artifacts.
Until then it knows `fp32`, the model as given.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from coordinator.compress.base import RecipeError
from coordinator.dispatch.client import sha256_file
from coordinator.dispatch.dispatcher import Dispatcher, OnEvent
from coordinator.dispatch.plan import default_runtimes, plan_jobs
from coordinator.fleet import probe_all
from coordinator.prepare import prepare
from coordinator.store.sqlite import Store
from coordinator.types import Device, MeasurementSettings, RunData, RunSpec

DEFAULT_SETTINGS = MeasurementSettings()


class RunError(ValueError):
    """The run cannot start; the message says what to fix."""


def resolve_devices(store: Store, selection: str) -> list[Device]:
    registered = store.devices()
    if not registered:
        raise RunError("no devices registered; add one with `edgebench fleet add NAME HOST:PORT --token-file F`")
    if selection in ("", "all"):
        return registered
    wanted = [s.strip() for s in selection.split(",") if s.strip()]
    by_name = {d.name: d for d in registered}
    missing = [w for w in wanted if w not in by_name]
    if missing:
        raise RunError(f"unknown device(s) {', '.join(missing)}; registered: {', '.join(by_name)}")
    return [by_name[w] for w in wanted]


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def start_run(
    store: Store,
    *,
    model: Path | str,
    dataset: Path | None,
    devices: str = "all",
    runtimes: Sequence[str] = (),
    variants: Sequence[str] = ("fp32",),
    settings: MeasurementSettings = DEFAULT_SETTINGS,
    name: str = "",
    on_event: OnEvent | None = None,
    dispatcher: Dispatcher | None = None,
    weights: Path | None = None,
    input_shape: str = "",
    log: Callable[[str], None] = lambda _m: None,
) -> RunData:
    """Build the variants, plan a run, store it (every job before the first is sent), then dispatch it."""
    chosen = resolve_devices(store, devices)
    try:
        prepared = prepare(
            str(model),
            ",".join(variants),
            dataset,
            store.path.parent / "cache",
            weights=weights,
            input_shape=input_shape,
            log=log,
        )
    except RecipeError as exc:
        raise RunError(str(exc)) from None
    built, dataset = prepared.variants, prepared.dataset
    probes = probe_all(chosen)
    runtime_names = tuple(runtimes) or default_runtimes(probes.values(), built)
    if not runtime_names:
        raise RunError("no device offers a runtime for this model's format; see `edgebench fleet list`")
    spec = RunSpec(
        run_id=new_run_id(),
        name=name or prepared.label,
        model_path=str(model),
        dataset_path=str(dataset.resolve()) if dataset else "",
        dataset_sha256=sha256_file(dataset) if dataset else "",
        devices=tuple(d.name for d in chosen),
        runtimes=runtime_names,
        variants=tuple(v.name for v in built),
        settings=settings,
        created_at_ns=time.time_ns(),
        baseline=built[0].name,
    )
    jobs = plan_jobs(spec.run_id, spec.devices, built, runtime_names, probes)
    store.create_run(spec, built, jobs)
    for found in probes.values():
        store.record_probe(spec.run_id, found)
    return (dispatcher or Dispatcher(store, on_event=on_event)).execute(
        spec.run_id, {d.name: d for d in chosen}, probes
    )


def resume_run(
    store: Store, run_id: str, *, on_event: OnEvent | None = None, dispatcher: Dispatcher | None = None
) -> RunData:
    """Run only the jobs of `run_id` that have no final result (unreachable, cancelled, interrupted)."""
    run = store.load_run(run_id)
    for variant in run.variants:
        if not variant.sha256:
            continue  # a variant that was not built (its cells are SKIPPED)
        path = Path(variant.path)
        if not path.is_file() or sha256_file(path) != variant.sha256:
            raise RunError(
                f"variant {variant.name}: {path} is missing or changed since the run started; "
                "restore it or start a new run"
            )
    if run.spec.dataset_path and (
        not Path(run.spec.dataset_path).is_file() or sha256_file(Path(run.spec.dataset_path)) != run.spec.dataset_sha256
    ):
        raise RunError(f"dataset {run.spec.dataset_path} is missing or changed since the run started")
    devices = {d.name: d for d in store.devices()}
    return (dispatcher or Dispatcher(store, on_event=on_event)).execute(run_id, devices)
