"""The job's runtime options -> what shapes an engine: precision plan (builder flags), workspace, optimisation
level and optimisation profile. Pure: no TensorRT, no GPU; errors are RuntimeUnsupported saying what to set.

`BuildOptions` also travels to the build helper process as JSON (`options_to_json` / `options_from_json`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.runtimes.base import RuntimeUnsupported
from agent.types import PrecisionHint, RuntimeConfig

DEFAULT_MAX_BATCH = 32
#: Settings that belong to the agent, not to whoever sends a job (a job naming one is refused).
AGENT_SETTINGS = ("engine_cache_dir",)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")

Shape = tuple[int, ...]


def refuse_agent_settings(config: RuntimeConfig) -> None:
    """A job may not choose where the agent writes files: the engine cache's place is the agent's decision."""
    for key in AGENT_SETTINGS:
        if key in dict(config.options):
            raise RuntimeUnsupported(
                f"{key} is an agent setting, not a job option: remove it from the job's runtime options (the "
                "agent keeps its TensorRT engines in its own work directory)"
            )


@dataclass(frozen=True)
class PrecisionPlan:
    """Builder flags to set and clear, whether the network is created strongly typed, and whether the model
    must carry Q/DQ nodes (INT8 is explicit quantization only: nothing is calibrated on the device)."""

    label: str
    set_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    strongly_typed: bool = False
    requires_qdq: bool = False


def precision_plan(
    hint: PrecisionHint, *, builder_flags: frozenset[str], strongly_typed: bool = False, tf32: bool = False
) -> PrecisionPlan:
    """Map a precision hint to TensorRT builder flags (`builder_flags`: the names `trt.BuilderFlag` has).

    Without an FP16 flag (TensorRT 11+) every network is strongly typed. Raises RuntimeUnsupported for a
    precision that cannot be requested as a flag there."""
    weak_typing = "FP16" in builder_flags
    strong = strongly_typed or not weak_typing
    # TensorRT enables TF32 by default; an FP32 figure should be FP32 unless the job asks for TF32.
    clear = ("TF32",) if "TF32" in builder_flags and not tf32 else ()
    suffix = "+tf32" if tf32 else ""
    if hint in (PrecisionHint.UNSPECIFIED, PrecisionHint.FP32):
        return PrecisionPlan(f"fp32{suffix}", (), clear, strong)
    if hint is PrecisionHint.INT8:
        if strong:
            return PrecisionPlan(f"int8 (Q/DQ, strongly typed){suffix}", (), clear, True, requires_qdq=True)
        return PrecisionPlan(f"int8 (Q/DQ, explicit quantization){suffix}", ("INT8",), clear, False, requires_qdq=True)
    flag = {PrecisionHint.FP16: "FP16", PrecisionHint.BF16: "BF16"}[hint]
    if strong:
        why = "this TensorRT has no weakly typed precision flags" if not weak_typing else "strongly_typed=true"
        raise RuntimeUnsupported(
            f"precision {hint.value} cannot be requested from a strongly typed TensorRT network ({why}): there "
            f"the precision comes from the model's own types: send a variant converted to {hint.value.upper()} "
            "(e.g. `edgebench compress --variants fp16`) and leave the precision FP32 or unspecified"
        )
    if flag not in builder_flags:
        raise RuntimeUnsupported(f"this TensorRT has no {flag} builder flag; use FP32, FP16 or INT8")
    return PrecisionPlan(f"{hint.value}{suffix}", (flag,), clear, False)


@dataclass(frozen=True)
class ProfileRequest:
    """The optimisation profile asked for: the batch range and the optimum shape of named inputs."""

    opt_batch: int = 1
    max_batch: int = DEFAULT_MAX_BATCH
    shapes: tuple[tuple[str, Shape], ...] = ()


def parse_input_shapes(text: str) -> tuple[tuple[str, Shape], ...]:
    """'input:1x3x224x224,mask:1x128' -> (('input', (1, 3, 224, 224)), ('mask', (1, 128))), sorted by name."""
    found: dict[str, Shape] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, dims = part.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise RuntimeUnsupported(
                f"input_shapes entry {part!r} must look like name:1x3x224x224 (positive sizes, x-separated)"
            )
        found[name] = shape
    return tuple(sorted(found.items()))


def _int_option(config: RuntimeConfig, key: str, default: int, low: int, high: int | None = None) -> int:
    raw = config.option(key, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise RuntimeUnsupported(f"tensorrt option {key}={raw!r} must be an integer {bound}")
    return value


def _bool_option(config: RuntimeConfig, key: str) -> bool:
    raw = config.option(key, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise RuntimeUnsupported(f"tensorrt option {key}={raw!r} must be true or false")


def profile_request(config: RuntimeConfig) -> ProfileRequest:
    opt = _int_option(config, "batch", 1, 1)
    high = _int_option(config, "max_batch", max(opt, DEFAULT_MAX_BATCH), 1)
    if high < opt:
        raise RuntimeUnsupported(f"tensorrt option max_batch={high} is below batch={opt}; raise max_batch")
    return ProfileRequest(opt, high, parse_input_shapes(config.option("input_shapes", "")))


def profile_shapes(
    inputs: Sequence[tuple[str, Shape]], request: ProfileRequest
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every input that needs a profile (one with a dynamic axis, or named in the
    request); static inputs are left out. Axis 0 is the batch axis: min 1, opt `opt_batch`, max `max_batch`.
    Another dynamic axis needs its size in `request.shapes`. Raises RuntimeUnsupported saying what to set."""
    names = {name for name, _ in inputs}
    unknown = sorted(set(dict(request.shapes)) - names)
    if unknown:
        raise RuntimeUnsupported(
            f"input_shapes names {', '.join(unknown)}, which the model does not have; its inputs: "
            f"{', '.join(sorted(names))}"
        )
    wanted = dict(request.shapes)
    out: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name, dims in inputs:
        dynamic = [axis for axis, d in enumerate(dims) if d < 0]
        given = wanted.get(name)
        if not dynamic and given is None:
            continue
        if given is not None:
            if len(given) != len(dims):
                raise RuntimeUnsupported(
                    f"input_shapes gives {name!r} {len(given)} dimensions; "
                    f"the model declares {len(dims)} ({fmt_shape(dims)})"
                )
            fixed = [f"axis {a} is {d}" for a, (d, g) in enumerate(zip(dims, given, strict=True)) if d >= 0 and d != g]
            if fixed:
                raise RuntimeUnsupported(
                    f"input_shapes {name}:{fmt_shape(given)} disagrees with the model, where {'; '.join(fixed)}"
                )
            opt = given
        else:
            others = [a for a in dynamic if a != 0]
            if others:
                raise RuntimeUnsupported(
                    f"input {name!r} ({fmt_shape(dims)}) has dynamic axes {others} besides the batch axis; give "
                    f"its optimum shape with the runtime option input_shapes={name}:"
                    f"{fmt_shape(_example(dims, request))}"
                )
            opt = (request.opt_batch, *dims[1:])
        if 0 in dynamic:
            low: Shape = (1, *opt[1:])
            high: Shape = (max(request.max_batch, opt[0]), *opt[1:])
        else:
            low = high = opt
        out[name] = (low, opt, high)
    return out


def _example(dims: Shape, request: ProfileRequest) -> Shape:
    return tuple(request.opt_batch if a == 0 else (d if d >= 0 else 1) for a, d in enumerate(dims))


def fmt_shape(shape: Sequence[int]) -> str:
    """(-1, 3, 224, 224) -> '?x3x224x224'; () -> 'scalar'."""
    return "x".join("?" if d < 0 else str(d) for d in shape) or "scalar"


@dataclass(frozen=True)
class BuildOptions:
    precision: PrecisionPlan
    workspace_bytes: int  # 0: TensorRT's default (the device's memory)
    optimization_level: int  # -1: TensorRT's default
    profile: ProfileRequest

    def describe(self) -> dict[str, str]:
        return {
            "precision": self.precision.label,
            "builder_flags_set": ",".join(self.precision.set_flags) or "none",
            "builder_flags_cleared": ",".join(self.precision.clear_flags) or "none",
            "strongly_typed": str(self.precision.strongly_typed).lower(),
            "workspace_bytes": str(self.workspace_bytes) if self.workspace_bytes else "default",
            "builder_optimization_level": str(self.optimization_level) if self.optimization_level >= 0 else "default",
        }


def build_options(config: RuntimeConfig, builder_flags: frozenset[str]) -> BuildOptions:
    """Everything that shapes the engine, from the job's runtime config (pure; raises RuntimeUnsupported)."""
    refuse_agent_settings(config)
    plan = precision_plan(
        config.precision_hint,
        builder_flags=builder_flags,
        strongly_typed=_bool_option(config, "strongly_typed"),
        tf32=_bool_option(config, "tf32"),
    )
    workspace_mb = _int_option(config, "workspace_mb", 0, 0)
    level = _int_option(config, "builder_optimization_level", -1, 0, 5)
    return BuildOptions(plan, workspace_mb * 2**20, level, profile_request(config))


def parse_device_index(device: str) -> int:
    """'' / 'GPU' / 'cuda' -> 0; 'cuda:1' / 'GPU:1' / '1' -> 1."""
    text = device.strip().lower()
    if text in ("", "gpu", "cuda"):
        return 0
    match = re.fullmatch(r"(?:(?:gpu|cuda):)?(\d+)", text)
    if not match:
        raise RuntimeUnsupported(f"device {device!r} is not a GPU index; use '', 'GPU', 'cuda:N' or 'N'")
    return int(match.group(1))


def options_to_json(options: BuildOptions) -> dict[str, Any]:
    return {
        "label": options.precision.label,
        "set": list(options.precision.set_flags),
        "clear": list(options.precision.clear_flags),
        "strongly_typed": options.precision.strongly_typed,
        "requires_qdq": options.precision.requires_qdq,
        "workspace_bytes": options.workspace_bytes,
        "optimization_level": options.optimization_level,
        "opt_batch": options.profile.opt_batch,
        "max_batch": options.profile.max_batch,
        "shapes": [[n, list(s)] for n, s in options.profile.shapes],
    }


def options_from_json(data: Mapping[str, Any]) -> BuildOptions:
    plan = PrecisionPlan(
        str(data["label"]),
        tuple(data["set"]),
        tuple(data["clear"]),
        bool(data["strongly_typed"]),
        bool(data["requires_qdq"]),
    )
    profile = ProfileRequest(
        int(data["opt_batch"]),
        int(data["max_batch"]),
        tuple((str(n), tuple(int(d) for d in s)) for n, s in data["shapes"]),
    )
    return BuildOptions(plan, int(data["workspace_bytes"]), int(data["optimization_level"]), profile)
