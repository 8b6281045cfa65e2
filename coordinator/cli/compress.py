"""`edgebench compress`: build variants of a model from recipes, each with a JSON manifest."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from coordinator.cli.common import ListFormat, default_db, expected_errors, fail


def compress(
    model: Annotated[str, typer.Argument(help="A .onnx file, a .pt2 program, package.module:factory, or 'builtin'.")],
    variants: Annotated[str, typer.Option(help="Comma-separated recipes (see README, 'Compression').")] = "fp32",
    output_dir: Annotated[Path, typer.Option("-o", "--output-dir", help="Where variants and manifests go.")] = Path(
        "variants"
    ),
    dataset: Annotated[Path | None, typer.Option(help=".npz with inputs/labels and train/calibration splits.")] = None,
    weights: Annotated[Path | None, typer.Option(help="State dict for a package.module:factory model.")] = None,
    input_shape: Annotated[str, typer.Option(help="Input shape of a PyTorch model, e.g. 1,3,224,224.")] = "",
    output: Annotated[ListFormat, typer.Option("--format", help="table or json.")] = ListFormat.table,
    formats: Annotated[
        str, typer.Option(help="Also convert each variant to these formats: openvino_ir,tflite,coreml,torch_export.")
    ] = "",
) -> None:
    """Write each variant as DIR/<recipe>.onnx with DIR/<recipe>.json (recipe, parent sha256, sizes, accuracy
    on the held-out split, what each step did). Results are cached by (model, recipe, dataset)."""
    from coordinator.compress.base import load_splits
    from coordinator.compress.pipeline import top1_onnx
    from coordinator.convert.targets import TARGET_FORMATS
    from coordinator.prepare import prepare

    wanted = [f for f in formats.split(",") if f]
    if unknown := [f for f in wanted if f not in TARGET_FORMATS]:
        fail(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(TARGET_FORMATS)}")
    try:
        prepared = prepare(
            model,
            variants,
            dataset,
            default_db().parent / "cache",
            weights=weights,
            input_shape=input_shape,
            log=lambda m: typer.echo(m, err=True),
            formats=wanted,
        )
    except expected_errors() as exc:
        fail(str(exc))
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for v in prepared.variants:
        stem = re.sub(r"[^A-Za-z0-9_.=-]+", "_", v.name)
        entry: dict[str, Any] = {
            "variant": v.name,
            "sha256": v.sha256,
            "size_bytes": v.size_bytes,
            "zip_bytes": v.compressed_bytes,
            "skipped": v.notes.removeprefix("not built: ") if not v.sha256 else "",
        }
        if v.sha256:
            shutil.copyfile(v.path, output_dir / f"{stem}.onnx")
            manifest_path = Path(v.path).parent / "manifest.json"
            manifest = (
                json.loads(manifest_path.read_text())
                if manifest_path.exists() and v.recipe != "fp32"
                else {
                    "recipe": "fp32",
                    "sha256": v.sha256,
                    "size_bytes": v.size_bytes,
                    "zip_bytes": v.compressed_bytes,
                    "accuracy_top1": top1_onnx(Path(v.path), load_splits(prepared.dataset))
                    if prepared.dataset
                    else None,
                }
            )
            (output_dir / f"{stem}.json").write_text(json.dumps(manifest, indent=2, default=str))
            entry["accuracy_top1"] = manifest.get("accuracy_top1")
        entry["converted"] = {}
        for art in v.others:
            # One folder per variant and format: an IR is two files, a Core ML package a zip.
            target = output_dir / f"{stem}.{art.format}"
            target.mkdir(exist_ok=True)
            for src in (art.path, *(p for _n, p, _s in art.companions)):
                shutil.copyfile(src, target / Path(src).name)
            entry["converted"][art.format] = {"path": str(target / Path(art.path).name), "how": art.notes}
        entry["not_converted"] = dict(v.unconverted)
        rows.append(entry)
    if output is ListFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        if r["skipped"]:
            typer.echo(f"{r['variant']:<40} skipped: {r['skipped']}")
        else:
            acc = r.get("accuracy_top1")
            acc_text = f"top-1 {acc:.3f}" if isinstance(acc, float) else ""
            typer.echo(
                f"{r['variant']:<40} {r['size_bytes'] / 1e6:8.2f} MB  zip {r['zip_bytes'] / 1e6:6.2f} MB  {acc_text}"
            )
        for fmt, made in r.get("converted", {}).items():
            typer.echo(f"  {fmt:<14} {made['path']}  ({made['how']})")
        for fmt, why in r.get("not_converted", {}).items():
            typer.echo(f"  {fmt:<14} not made: {why}")
    typer.echo(f"wrote {sum(1 for r in rows if not r['skipped'])} variant(s) to {output_dir}")
