"""Starting and resuming fleet runs: resolve devices and variants, probe, plan, store, dispatch.

`--variants` is the hook the compression work fills: `build_variants` turns recipe names into artifacts.
Until then it knows `fp32`, the model as given.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from coordinator.compress.base import RecipeError
from coordinator.convert.targets import TARGET_FORMATS
from coordinator.dispatch.client import sha256_file
from coordinator.dispatch.dispatcher import Dispatcher, OnEvent
from coordinator.dispatch.plan import default_runtimes, plan_jobs
from coordinator.fleet import probe_all
from coordinator.prepare import prepare
from coordinator.store.sqlite import Store
from coordinator.types import Device, DeviceProbe, MeasurementSettings, RunData, RunSpec

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


def wanted_formats(probes: Iterable[DeviceProbe], runtimes: Sequence[str] = ()) -> tuple[str, ...]:
    """Every model format some reachable device's available runtime takes (only `runtimes`, if named)."""
    found: dict[str, None] = {}
    for p in probes:
        if p.online and p.compatible:
            for rt in p.runtimes:
                if rt.available and (not runtimes or rt.name in runtimes):
                    found.update(dict.fromkeys(rt.formats))
    return tuple(found)


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
    formats: Sequence[str] | None = None,
) -> RunData:
    """Build the variants, plan a run, store it (every job before the first is sent), then dispatch it."""
    chosen = resolve_devices(store, devices)
    # Probe first: which formats the variants are converted to follows from what the devices can run.
    probes = probe_all(chosen)
    wanted = wanted_formats(probes.values(), runtimes) if formats is None else tuple(formats)
    unknown = [f for f in wanted if f not in ("onnx", "null", *TARGET_FORMATS)]
    if formats is not None and unknown:
        raise RunError(f"unknown format(s) {', '.join(unknown)}; choose from onnx, {', '.join(TARGET_FORMATS)}")
    try:
        prepared = prepare(
            str(model),
            ",".join(variants),
            dataset,
            store.path.parent / "cache",
            weights=weights,
            input_shape=input_shape,
            log=log,
            formats=wanted,
        )
    except RecipeError as exc:
        raise RunError(str(exc)) from None
    built, dataset = prepared.variants, prepared.dataset
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
        # Variants that were not built have no artifacts (their cells are SKIPPED).
        for art in variant.artifacts():
            for path, sha in ((art.path, art.sha256), *((p, s) for _n, p, s in art.companions)):
                if not Path(path).is_file() or sha256_file(Path(path)) != sha:
                    raise RunError(
                        f"variant {variant.name} ({art.format}): {path} is missing or changed since the run "
                        "started; restore it or start a new run"
                    )
    if run.spec.dataset_path and (
        not Path(run.spec.dataset_path).is_file() or sha256_file(Path(run.spec.dataset_path)) != run.spec.dataset_sha256
    ):
        raise RunError(f"dataset {run.spec.dataset_path} is missing or changed since the run started")
    devices = {d.name: d for d in store.devices()}
    return (dispatcher or Dispatcher(store, on_event=on_event)).execute(run_id, devices)
