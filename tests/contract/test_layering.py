"""Layering rules between the agent, the coordinator and the generated protobuf code.

* agent/ never imports the coordinator, torch, torchvision or onnx. The agent runs on small devices;
  onnx (the model-building library) is a coordinator/dev dependency only, while onnxruntime (a runtime the
  agent drives) is allowed and imported lazily by its backend module. One exception: the eager-PyTorch
  backend (agent/runtimes/torch_export.py) may import torch, and only inside its functions, so the agent
  (and its probe) never loads torch unless a job asks for that runtime. Its archive checks
  (agent/runtimes/pt2_guard.py) are plain zip/json/ast and fall under the general rule: no torch at all.
* coordinator/ never imports agent/: the two share only the `protos` package (it starts agents as
  separate processes instead).
* The wire rule: inside agent/, only wire.py (conversion), servicer.py, server.py and bounds.py (gRPC
  plumbing: interceptors, and size checks on the raw request before it is converted) touch generated
  `*_pb2*` modules; everything else works with agent.types dataclasses.
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
WIRE_MODULES = {"agent/wire.py", "agent/servicer.py", "agent/server.py", "agent/bounds.py"}
PB2 = re.compile(r"_pb2(_grpc)?$")
SERVER_MODULES = ("agent.server", "agent.servicer", "agent.jobs", "agent.artifacts", "agent.cli")
SERVER_FORBIDDEN = ("torch", "onnxruntime", "onnx", "numpy", "coordinator")
#: The one agent module allowed to import torch (inside functions only).
TORCH_BACKEND = "agent/runtimes/torch_export.py"


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


def _node_imports(node: ast.AST, path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of what one AST node imports (nothing for other nodes)."""
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


def _parse(path: Path, source: str | None) -> ast.Module:
    return ast.parse(source if source is not None else path.read_text(encoding="utf-8"), filename=str(path))


def imports_of(path: Path, source: str | None = None) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything `path` imports; `from a import b` yields both `a` and `a.b`."""
    for node in ast.walk(_parse(path, source)):
        yield from _node_imports(node, path)


def imports_outside_functions(path: Path, source: str | None = None) -> Iterator[tuple[int, str]]:
    """Like `imports_of`, but only what runs when the module itself is imported: module level (also under
    `if`/`try`/`with`) and class bodies; nothing inside a function or lambda."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
    pending: list[ast.AST] = [_parse(path, source)]
    while pending:
        node = pending.pop()
        yield from _node_imports(node, path)
        pending.extend(child for child in ast.iter_child_nodes(node) if not isinstance(child, functions))


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


def _agent_import_is_forbidden(path: Path, name: str) -> bool:
    """AGENT_FORBIDDEN, except torch in the eager-PyTorch backend (whose imports are checked separately)."""
    top = _top(name)
    if top == "torch" and path.relative_to(ROOT).as_posix() == TORCH_BACKEND:
        return False
    return top in AGENT_FORBIDDEN


def test_agent_imports_neither_coordinator_nor_heavy_ml_libraries() -> None:
    bad = _violations("agent", _agent_import_is_forbidden)
    assert not bad, "the agent must stay light:\n" + "\n".join(bad)


def test_only_the_torch_backend_imports_torch_and_only_inside_functions() -> None:
    backend = ROOT / TORCH_BACKEND
    assert any(_top(n) == "torch" for _, n in imports_of(backend)), "the scanner should see the backend's torch import"
    eager = sorted(
        {f"{TORCH_BACKEND}:{line} imports {n}" for line, n in imports_outside_functions(backend) if _top(n) == "torch"}
    )
    assert not eager, "import torch only inside the backend's functions:\n" + "\n".join(eager)


def test_the_pt2_archive_checks_need_no_torch() -> None:
    """The checks run before torch opens a file, in a module the torch exception does not cover."""
    guard = ROOT / "agent" / "runtimes" / "pt2_guard.py"
    assert guard.relative_to(ROOT).as_posix() != TORCH_BACKEND
    assert not [n for _, n in imports_of(guard) if _top(n) == "torch"]
    backend_imports = {n for _, n in imports_outside_functions(ROOT / TORCH_BACKEND)}
    assert "agent.runtimes.pt2_guard" in backend_imports, "the backend uses the checks"


def test_the_torch_exception_covers_one_module_only() -> None:
    """The rule above still catches torch anywhere else in the agent, at any depth."""
    other = ROOT / "agent" / "runtimes" / "onnxruntime.py"
    source = "def load():\n    import torch\n"
    assert any(_agent_import_is_forbidden(other, n) for _, n in imports_of(other, source))
    backend = ROOT / TORCH_BACKEND
    assert not any(_agent_import_is_forbidden(backend, n) for _, n in imports_of(backend, source))
    assert any(_agent_import_is_forbidden(backend, n) for _, n in imports_of(backend, "import onnx\n"))


def test_scanner_tells_function_level_imports_from_module_level_ones() -> None:
    source = (
        "import os\n"
        "if True:\n"
        "    import torch\n"
        "class C:\n"
        "    import torch.nn\n"
        "    def m(self):\n"
        "        import torch.fft\n"
        "def f():\n"
        "    importlib.import_module('torch.cuda')\n"
        "g = lambda: __import__('torch.linalg')\n"
    )
    path = ROOT / TORCH_BACKEND
    eager = {name for _, name in imports_outside_functions(path, source)}
    assert {"os", "torch", "torch.nn"} <= eager
    assert not eager & {"torch.fft", "torch.cuda", "torch.linalg"}


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
