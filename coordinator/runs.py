"""Starting and resuming fleet runs: resolve devices and variants, probe, plan, store, dispatch.

`--variants` is the hook the compression work fills: `build_variants` turns recipe names into artifacts.
Until then it knows `fp32`, the model as given.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from coordinator.dispatch.client import sha256_file
from coordinator.dispatch.dispatcher import Dispatcher, OnEvent
from coordinator.dispatch.plan import default_runtimes, plan_jobs
from coordinator.fleet import probe_all
from coordinator.store.sqlite import Store
from coordinator.types import Device, MeasurementSettings, RunData, RunSpec, Variant

SUFFIX_FORMATS = {
    ".onnx": "onnx",
    ".xml": "openvino_ir",
    ".tflite": "tflite",
    ".mlpackage": "coreml",
    ".pt2": "torch_export",
    ".json": "null",
}
KNOWN_VARIANTS = ("fp32",)
DEFAULT_SETTINGS = MeasurementSettings()


class RunError(ValueError):
    """The run cannot start; the message says what to fix."""


def model_format(path: Path) -> str:
    try:
        return SUFFIX_FORMATS[path.suffix.lower()]
    except KeyError:
        raise RunError(
            f"{path.name}: unknown model format {path.suffix!r}; edgebench runs "
            f"{', '.join(sorted(SUFFIX_FORMATS))} files"
        ) from None


def build_variants(model: Path, names: Sequence[str]) -> list[Variant]:
    """The artifacts to benchmark, in the order given. Unknown recipes are an error naming the known ones."""
    if not model.is_file():
        raise RunError(f"model file {model} does not exist")
    unknown = [n for n in names if n not in KNOWN_VARIANTS]
    if unknown:
        raise RunError(f"unknown variant(s) {', '.join(unknown)}; available: {', '.join(KNOWN_VARIANTS)}")
    sha = sha256_file(model)
    return [
        Variant(
            name="fp32",
            path=str(model.resolve()),
            sha256=sha,
            format=model_format(model),
            size_bytes=model.stat().st_size,
            recipe="fp32",
            notes="the model as given",
        )
        for _ in names[:1]
    ]


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
    model: Path,
    dataset: Path | None,
    devices: str = "all",
    runtimes: Sequence[str] = (),
    variants: Sequence[str] = ("fp32",),
    settings: MeasurementSettings = DEFAULT_SETTINGS,
    name: str = "",
    on_event: OnEvent | None = None,
    dispatcher: Dispatcher | None = None,
) -> RunData:
    """Plan a run, store it (every job before the first is sent), then dispatch it."""
    chosen = resolve_devices(store, devices)
    built = build_variants(model, variants)
    if dataset is not None and not dataset.is_file():
        raise RunError(f"dataset file {dataset} does not exist")
    probes = probe_all(chosen)
    runtime_names = tuple(runtimes) or default_runtimes(probes.values(), built)
    if not runtime_names:
        raise RunError("no device offers a runtime for this model's format; see `edgebench fleet list`")
    spec = RunSpec(
        run_id=new_run_id(),
        name=name or model.stem,
        model_path=str(model.resolve()),
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
