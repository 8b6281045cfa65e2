"""The seed document's compression table, measured: per device, runtime and technique, what this run
measured (size %, speed ×, accuracy kept %) beside what the seed document claims, so a reader sees where
the claims hold. The seed's table is partly wrong (e.g. unstructured pruning does not speed up dense
runtimes); the report shows measurements and claims side by side and lets the numbers speak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.report.schema import Cell, VariantInfo

#: technique -> (size as % of the original, speed-up, accuracy kept %), as the seed document claims them.
SEED_CLAIMS: dict[str, tuple[str, str, str]] = {
    "weight pruning": ("30–50%", "1.5–2x", "95–98%"),
    "channel pruning": ("20–40%", "2–3x", "90–95%"),
    "INT8 quantization": ("25%", "2–4x", "90–95%"),
    "knowledge distillation": ("10–30%", "3–5x", "85–90%"),
    "architecture search": ("5–20%", "5–10x", "80–90%"),
}
#: recipe step -> the seed's technique it measures.
TECHNIQUE_OF = {
    "prune": "weight pruning",
    "channels": "channel pruning",
    "int8": "INT8 quantization",
    "int8dyn": "INT8 quantization",
    "distill": "knowledge distillation",
    "fp16": "FP16",
}


@dataclass(frozen=True)
class SeedRow:
    device: str
    runtime: str
    technique: str
    #: The recipe measured for this row ("" when the technique was not in the run).
    variant: str
    #: Variant file size as % of the baseline's; `zip_percent` the same after DEFLATE (sparsity shows there).
    size_percent: float | None
    zip_percent: float | None
    speedup: float | None
    accuracy_kept_percent: float | None
    claimed_size: str
    claimed_speedup: str
    claimed_accuracy_kept: str
    note: str


def _technique(recipe: str) -> str:
    names = [TECHNIQUE_OF.get(step.split(":", 1)[0], step.split(":", 1)[0]) for step in recipe.split("+")]
    return " + ".join(names)


def _accuracy_kept(cell: Cell, base: Cell | None) -> float | None:
    if base is None:
        return None
    for mine, theirs in (
        (cell.accuracy.top1, base.accuracy.top1),
        (cell.accuracy.top1_agreement, 1.0 if base.accuracy.top1_agreement is not None else None),
    ):
        if mine is not None and theirs:
            return 100.0 * mine / theirs
    return None


def seed_rows(cells: Sequence[Cell], variants: Sequence[VariantInfo], baseline: str) -> tuple[SeedRow, ...]:
    sizes = {v.name: v for v in variants}
    base_variant = sizes.get(baseline)
    rows: list[SeedRow] = []
    keys = sorted(
        {(c.device, c.runtime) for c in cells},
        key=lambda k: [c for c in cells].index(next(c for c in cells if (c.device, c.runtime) == k)),
    )
    for device, runtime in keys:
        here = [c for c in cells if c.device == device and c.runtime == runtime]
        base = next((c for c in here if c.variant == baseline and c.status == "succeeded"), None)
        measured: set[str] = set()
        for cell in here:
            if cell.variant == baseline:
                continue
            technique = _technique(cell.variant)
            measured.add(technique)
            claim = SEED_CLAIMS.get(technique, ("—", "—", "—"))
            v = sizes.get(cell.variant)
            size = zipped = None
            if base is not None and cell.model.size_bytes and base.model.size_bytes and cell.model.format:
                # The files this runtime ran (an NNCF IR, a TFLite INT8...), against the baseline's in its format.
                size = 100.0 * cell.model.size_bytes / base.model.size_bytes
                if cell.model.compressed_bytes and base.model.compressed_bytes:
                    zipped = 100.0 * cell.model.compressed_bytes / base.model.compressed_bytes
            elif v is not None and base_variant is not None and base_variant.size_bytes and v.size_bytes:
                size = 100.0 * v.size_bytes / base_variant.size_bytes
                if v.compressed_bytes and base_variant.compressed_bytes:
                    zipped = 100.0 * v.compressed_bytes / base_variant.compressed_bytes
            ok = cell.status == "succeeded"
            note = "" if ok else f"{cell.status}: {cell.message}"
            if technique == "weight pruning" and ok:
                note = "dense file and dense runtimes: no speed-up is expected; sparsity shows in the zip size"
            rows.append(
                SeedRow(
                    device,
                    runtime,
                    technique,
                    cell.variant,
                    size,
                    zipped,
                    cell.comparison.speedup if ok else None,
                    _accuracy_kept(cell, base) if ok else None,
                    *claim,
                    note,
                )
            )
        for technique, claim in SEED_CLAIMS.items():
            if technique not in measured:
                note = (
                    "not implemented in edgebench"
                    if technique == "architecture search"
                    else "not in this run's --variants"
                )
                rows.append(SeedRow(device, runtime, technique, "", None, None, None, None, *claim, note))
    return tuple(rows)
