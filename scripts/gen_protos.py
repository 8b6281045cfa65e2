"""Regenerate the committed gRPC/protobuf stubs in protos/ (the only way they are produced).

Usage: python scripts/gen_protos.py [--check]
  --check  generate into a temporary folder and exit 1 if anything differs from the committed files.

Needs the dev extra (grpcio-tools, mypy-protobuf). Devices never need it: the stubs are committed.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos" / "edgebench" / "agent" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_root: Path) -> list[Path]:
    """Run protoc with paths relative to the repo root so generated imports read `protos.edgebench...`."""
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    bindir = Path(sys.executable).parent  # mypy-protobuf's plugins live beside the interpreter
    protos = sorted(p.relative_to(ROOT) for p in PROTO_DIR.glob("*.proto"))
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *[str(p) for p in protos],
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return [(out_root / p).with_name(p.stem + suffix) for p in protos for suffix in GENERATED_SUFFIXES]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        stale = []
        for path in produced:
            target = ROOT / path.relative_to(tmp)
            if args.check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    stale.append(str(target.relative_to(ROOT)))
            else:
                shutil.copyfile(path, target)
    if stale:
        print("stale generated stubs (run `python scripts/gen_protos.py`):", *stale, sep="\n  ")
        return 1
    print("stubs up to date" if args.check else f"generated {len(produced)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
