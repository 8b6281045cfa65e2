"""Layering rules between the agent, the coordinator and the generated protobuf code.

* agent/ never imports the coordinator, torch, torchvision or onnx. The agent runs on small devices;
  onnx (the model-building library) is a coordinator/dev dependency only, while onnxruntime (a runtime the
  agent drives) is allowed and imported lazily by its backend module.
* coordinator/ never imports agent/: the two share only the `protos` package (it starts agents as
  separate processes instead).
* The wire rule: inside agent/, only wire.py (conversion), servicer.py and server.py (gRPC plumbing)
  touch generated `*_pb2*` modules; everything else works with agent.types dataclasses.
* The agent server process imports no runtime SDK and not numpy, which keeps its idle memory low; job
  child processes import those.

Imports are found statically with `ast` at any depth (module level, inside functions, under `if`),
relative imports are resolved, and `importlib.import_module("...")` / `__import__("...")` calls with a
literal name count too. Imports through a computed name cannot be seen statically; the runtime registry
(`agent.runtimes.REGISTRY`) only names agent modules, which are all scanned here anyway.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENT_FORBIDDEN = {"coordinator", "torch", "torchvision", "onnx"}
COORDINATOR_FORBIDDEN = {"agent"}
WIRE_MODULES = {"agent/wire.py", "agent/servicer.py", "agent/server.py"}
PB2 = re.compile(r"_pb2(_grpc)?$")
SERVER_MODULES = ("agent.server", "agent.servicer", "agent.jobs", "agent.artifacts", "agent.cli")
SERVER_FORBIDDEN = ("torch", "onnxruntime", "onnx", "numpy", "coordinator")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, path: Path) -> str:
    if node.level == 0:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(path: Path, source: str | None = None) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything `path` imports; `from a import b` yields both `a` and `a.b`."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, path)
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}" if base else alias.name
        elif isinstance(node, ast.Call) and node.args:
            func, arg = node.func, node.args[0]
            called = getattr(func, "attr", None) or getattr(func, "id", None)
            literal = arg.value if isinstance(arg, ast.Constant) else None
            if called in {"import_module", "__import__"} and isinstance(literal, str):
                yield node.lineno, literal


def _py_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _violations(package: str, is_bad: Callable[[Path, str], bool]) -> list[str]:
    found = []
    for path in _py_files(package):
        for line, name in imports_of(path):
            if is_bad(path, name):
                found.append(f"{path.relative_to(ROOT).as_posix()}:{line} imports {name}")
    return sorted(set(found))


def _top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


# ---------------------------------------------------------------------------------------------- the scanner


def test_scanner_finds_imports_at_every_level() -> None:
    source = (
        "import os.path\n"
        "from . import sibling\n"
        "from ..types import X\n"
        "def f():\n"
        "    import torch\n"
        "    if True:\n"
        "        from onnx import helper\n"
        "class C:\n"
        "    def m(self):\n"
        "        importlib.import_module('coordinator.models')\n"
        "        __import__('numpy')\n"
    )
    found = {name for _, name in imports_of(ROOT / "agent" / "runtimes" / "null.py", source)}
    assert found >= {
        "os.path",
        "agent.runtimes",
        "agent.runtimes.sibling",
        "agent.types",
        "agent.types.X",
        "torch",
        "onnx",
        "onnx.helper",
        "coordinator.models",
        "numpy",
    }
    init_py = ROOT / "agent" / "runtimes" / "__init__.py"
    init = {name for _, name in imports_of(init_py, "from .base import B")}
    assert "agent.runtimes.base.B" in init


def test_scanner_sees_the_packages() -> None:
    agent_files = {p.relative_to(ROOT).as_posix() for p in _py_files("agent")}
    assert agent_files >= WIRE_MODULES
    assert "agent/runtimes/onnxruntime.py" in agent_files
    assert _py_files("coordinator")
    # sanity: the scanner does see the agent's real imports (the lazy onnxruntime import in a method)
    names = {n for _, n in imports_of(ROOT / "agent" / "runtimes" / "onnxruntime.py")}
    assert "onnxruntime" in names


# ---------------------------------------------------------------------------------------------- the rules


def test_agent_imports_neither_coordinator_nor_heavy_ml_libraries() -> None:
    bad = _violations("agent", lambda _path, name: _top(name) in AGENT_FORBIDDEN)
    assert not bad, "the agent must stay light:\n" + "\n".join(bad)


def test_coordinator_does_not_import_the_agent() -> None:
    bad = _violations("coordinator", lambda _path, name: _top(name) in COORDINATOR_FORBIDDEN)
    assert not bad, "the coordinator shares only `protos` with the agent:\n" + "\n".join(bad)


def _is_generated(name: str) -> bool:
    """protos.edgebench holds only generated code; `*_pb2*` modules of other packages count too, except
    protobuf's own meta-schema (`google.protobuf.descriptor_pb2`), which describes schemas rather than any
    wire format (agent/runtimes/onnx_guard.py builds an ONNX schema subset with it)."""
    if name.startswith("google.protobuf"):
        return False
    return (_top(name) == "protos" and name.split(".")[1:2] == ["edgebench"]) or any(
        PB2.search(part) for part in name.split(".")
    )


def test_only_the_wire_modules_touch_generated_protobuf_code() -> None:
    def bad(path: Path, name: str) -> bool:
        return path.relative_to(ROOT).as_posix() not in WIRE_MODULES and _is_generated(name)

    found = _violations("agent", bad)
    assert not found, "use agent.wire and agent.types instead:\n" + "\n".join(found)


def test_wire_rule_detector_flags_generated_modules() -> None:
    assert _is_generated("protos.edgebench.agent.v1.agent_pb2")
    assert _is_generated("protos.edgebench.agent.v1.agent_pb2_grpc")
    assert _is_generated("grpc_health.v1.health_pb2")
    assert _is_generated("protos.edgebench.agent.v1")
    assert not _is_generated("protos.version")
    assert not _is_generated("protos.stats")
    assert not _is_generated("agent.wire")
    assert not _is_generated("google.protobuf.descriptor_pb2")


# ---------------------------------------------------------------------------------------------- runtime check

LIST_LOADED = (
    f"import {', '.join(SERVER_MODULES)}; import sys; "
    f"print(sorted(m for m in sys.modules if m.split('.')[0] in {set(SERVER_FORBIDDEN)!r}))"
)

# Records, for the first import of each forbidden top-level package, the project frames that caused it.
CHAIN_SPY = """
import json, sys, traceback
FORBIDDEN = set(sys.argv[1].split(','))
ROOT = sys.argv[2]
chains = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        top = name.split('.')[0]
        if top in FORBIDDEN and top not in chains:
            chains[top] = [
                f"{f.filename[len(ROOT) + 1:]}:{f.lineno}: {f.line}"
                for f in traceback.extract_stack()[:-1] if f.filename.startswith(ROOT)
            ]
        return None
sys.meta_path.insert(0, Spy())
for module in sys.argv[3].split(','):
    __import__(module)
print(json.dumps(chains))
"""


def import_chains(modules: tuple[str, ...], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", CHAIN_SPY, ",".join(forbidden), str(ROOT), ",".join(modules)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    chains: dict[str, list[str]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return chains


def test_chain_spy_explains_an_import() -> None:
    """The diagnostic used below works: agent.measure.inputs (job-process code) imports numpy itself."""
    chains = import_chains(("agent.measure.inputs",), ("numpy",))
    assert any(frame.startswith("agent/measure/inputs.py:") for frame in chains["numpy"])


def test_agent_server_process_imports_no_runtime_and_no_numpy() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LIST_LOADED], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.strip()
    if loaded != "[]":
        chains = import_chains(SERVER_MODULES, SERVER_FORBIDDEN)
        pytest.fail(f"the agent server imports {loaded}; import chains:\n{json.dumps(chains, indent=2)}")
