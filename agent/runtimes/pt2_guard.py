"""Archive checks for `.pt2` files (`torch.export.save` programs), done before torch opens one: plain
zipfile/json/ast, no torch import (only the torch backend, `agent.runtimes.torch_export`, may import torch).

Loading a `.pt2` must not run code from the file, and torch 2.13's `torch.export.load` alone does not
promise that (its own docstring: "uses pickle under the hood; never load data from an untrusted source").
Read in its source (torch/export/pt2_archive/_package.py, torch/_export/serde/serialize.py,
torch/export/_unlift.py), a hostile archive can run code through:

* weights or constants marked `use_pickle` (`torch.load(..., weights_only=False)`), custom objects
  (`torch._C._pickle_load_obj`) and opaque objects (`pickle.loads`);
* the sample inputs (`data/sample_inputs/<model>.pt`) and legacy weight/constant files, loaded by
  `deserialize_torch_artifact`, which retries with `weights_only=False` when the safe load fails;
* `data/aotinductor/` (a compiled shared library that is loaded and run);
* symbolic expressions (`expr_str`), parsed with `sympy.sympify`, i.e. Python `eval`;
* `guards_code`, Python source that `program.module()` compiles and runs;
* names that reach generated Python source (parameter and buffer FQNs become `getattr(self, "...")`);
* graph targets resolved by `getattr` on `torch`, `operator` and `math` (e.g. `torch.os.system`).

So `check_pt2_archive` accepts only: one root folder, only the members `torch.export.save` writes (stored,
uncompressed), no pickled payloads, no custom or opaque objects, no AOTInductor or legacy files, empty
`guards_code`, every `expr_str` parsed and allow-listed node by node (arithmetic, comparisons, symbols and
sympy/torch size functions; no attributes, subscripts or other calls), every name a plain dotted
identifier, every graph target an operator (`torch.ops.*`) or an allow-listed builtin. What it cannot
check (the sample inputs' tensor pickles) the backend covers by loading with weights_only forced.
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from agent.runtimes.base import ModelLoadError

MAX_MEMBERS = 100_000
MAX_JSON_BYTES = 256 * 2**20
MAX_EXPR_CHARS = 4096

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:+\-]*$")
_FQN = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_PAYLOAD_FILE = re.compile(r"^[A-Za-z0-9_]+$")
_MODEL_JSON = re.compile(r"^models/([A-Za-z0-9_]+)\.json$")
_SYMBOL = re.compile(r"^[a-z]{1,8}[0-9]+$")
_FIXED_MEMBERS = frozenset(
    {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
)
#: Metadata that torch keeps as text (never turned into code); checked for line breaks only.
_FREE_TEXT = frozenset({"stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn", "as_string", "as_strings"})
_NESTED_JSON = frozenset({"in_spec", "out_spec", "custom", "from_node"})
#: Graph targets other than `torch.ops.*`: what torch's own verifier allows as builtins and torch functions.
_BUILTIN_OPERATORS = (
    "getitem",
    "add",
    "mul",
    "sub",
    "truediv",
    "ge",
    "le",
    "gt",
    "lt",
    "eq",
    "ne",
    "floordiv",
    "mod",
    "and_",
    "or_",
    "not_",
    "pow",
    "neg",
    "abs",
    "lshift",
    "rshift",
)
_BUILTIN_TARGETS = frozenset(
    [f"_operator.{op}" for op in _BUILTIN_OPERATORS]
    + [f"math.{f}" for f in ("ceil", "floor", "trunc", "sqrt")]
    + [f"torch.sym_{f}" for f in ("int", "float", "ite", "max", "min", "not", "sqrt", "sum")]
    + ["torch._C._set_grad_enabled", "torch.autograd.grad_mode.set_grad_enabled"]
)
#: Functions an `expr_str` may call: torch's sympy size functions (the deserializer's table) and sympy's own.
_EXPR_FUNCTIONS = frozenset(
    {
        # torch.utils._sympy.functions, as named in the deserializer's table
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "Mod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "FloatPow",
        "FloatTrueDiv",
        "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
        # sympy's own constructors and functions that printed size expressions use
        "Symbol",
        "Integer",
        "Float",
        "Rational",
        "Max",
        "Min",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "And",
        "Or",
        "Not",
        "Abs",
        "floor",
        "ceiling",
        "sqrt",
        "Piecewise",
        "ITE",
        "Add",
        "Mul",
        "Pow",
    }
)
_EXPR_CONSTANTS = frozenset({"oo", "zoo", "nan", "true", "false", "pi", "E"})
_EXPR_KEYWORDS = frozenset({"integer", "positive", "nonnegative", "negative", "real", "finite", "nonzero"})
_EXPR_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Tuple,
    ast.keyword,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
)


# ============================================================================== the checks


def _refuse(what: str) -> ModelLoadError:
    return ModelLoadError(
        f"{what}; refused before torch opened the file (a .pt2 may carry code that torch would run). "
        "Export with torch.export.export and save with torch.export.save, with plain tensor weights"
    )


_MAX_EXPR_INT = 2**63
_MAX_EXPONENT = 64


def _small_exponent(node: ast.expr) -> bool:
    """A symbol or a constant up to _MAX_EXPONENT: sympy evaluates constant powers eagerly, and 10**10**10 would
    hang the job process rather than run code, but a limit costs nothing."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    if isinstance(node, ast.Name):
        return True
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and abs(node.value) <= _MAX_EXPONENT


def check_sym_expr(expr: str) -> None:
    """Raise ModelLoadError unless `expr` (an `expr_str`, which torch gives to sympy's eval) is plain
    arithmetic over symbols and allow-listed functions."""
    if len(expr) > MAX_EXPR_CHARS:
        raise _refuse(f"a symbolic expression is {len(expr)} characters long")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise _refuse(f"symbolic expression {expr[:120]!r} is not plain arithmetic") from None
    for node in ast.walk(tree):
        bad = ""
        if not isinstance(node, _EXPR_NODES):
            bad = type(node).__name__
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _EXPR_FUNCTIONS:
                bad = "a call of " + (node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__)
        elif isinstance(node, ast.Name):
            if node.id not in _EXPR_FUNCTIONS | _EXPR_CONSTANTS and not _SYMBOL.match(node.id):
                bad = f"the name {node.id!r}"
        elif isinstance(node, ast.keyword):
            if node.arg not in _EXPR_KEYWORDS or not isinstance(node.value, ast.Constant):
                bad = f"the keyword {node.arg!r}"
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str) and not _SYMBOL.match(value):
                bad = f"the string {value[:40]!r}"
            elif not isinstance(value, (str, int, float, bool)):
                bad = f"a {type(value).__name__} constant"
            elif isinstance(value, int) and abs(value) > _MAX_EXPR_INT:
                bad = "an integer beyond 64 bits"
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and not _small_exponent(node.right):
            bad = "a power whose exponent is not a symbol or a small constant"
        if bad:
            raise _refuse(f"symbolic expression {expr[:120]!r} contains {bad}")


def _check_target(target: str, where: str) -> None:
    if target.startswith("torch.ops.") and _SAFE_NAME.match(target):
        return
    if target not in _BUILTIN_TARGETS:
        raise _refuse(
            f"{where} calls {target[:120]!r}, which is neither an operator (torch.ops.*) nor an allowed builtin"
        )


def _check_nested_json(text: str, key: str) -> None:
    try:
        value = json.loads(text)
    except ValueError:
        raise _refuse(f"metadata {key!r} is not JSON") from None
    for s in _strings(value):
        if "\n" in s or "\r" in s:
            raise _refuse(f"metadata {key!r} holds a line break")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def check_program_json(program: Any, where: str = "the program") -> None:
    """Walk a `models/<name>.json` document and raise ModelLoadError at the first thing that could run code."""
    if not isinstance(program, dict):
        raise _refuse(f"{where} is not a JSON object")
    if program.get("guards_code"):
        raise _refuse(f"{where} carries guards_code (Python source that loading would run)")
    stack: list[tuple[str, Any]] = [("", program)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str) or not _SAFE_NAME.match(k):
                    raise _refuse(f"{where} has the key {str(k)[:120]!r}")
                stack.append((k, v))
        elif isinstance(value, list):
            stack.extend((key, v) for v in value)
        elif isinstance(value, str):
            if key == "expr_str":
                check_sym_expr(value)
            elif key in ("target", "as_operator"):
                _check_target(value, f"{where}'s graph")
            elif key in _NESTED_JSON:
                _check_nested_json(value, key)
            elif key in _FREE_TEXT:
                if "\r" in value or ("\n" in value and key != "stack_trace"):
                    raise _refuse(f"{where}'s {key!r} metadata holds a line break")
            elif not _SAFE_NAME.match(value):
                raise _refuse(f"{where}'s {key!r} is {value[:120]!r}, not a plain name")
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise _refuse(f"{where} holds a {type(value).__name__}")


def check_payload_config(config: Any, kind: str, member: str) -> None:
    """A weights/constants config: plain dotted FQNs, raw tensor payloads only (no pickle, no objects)."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(f"{member} is not a payload config")
    prefix = "weight_" if kind == "weights" else "tensor_"
    for fqn, meta in entries.items():
        if not isinstance(fqn, str) or not _FQN.match(fqn):
            raise _refuse(f"{member} names the {kind} entry {str(fqn)[:120]!r}, not a plain dotted name")
        if not isinstance(meta, dict):
            raise _refuse(f"{member}'s entry {fqn!r} is not an object")
        if meta.get("use_pickle") is not False:
            raise _refuse(f"{member}'s entry {fqn!r} is a pickled object (use_pickle)")
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not _PAYLOAD_FILE.match(path_name) or not path_name.startswith(prefix):
            raise _refuse(f"{member}'s entry {fqn!r} is stored as {str(path_name)[:80]!r}, not a raw tensor payload")


def _allowed_member(name: str, models: set[str]) -> bool:
    if name in _FIXED_MEMBERS or name.startswith("extra/"):
        return True
    if _MODEL_JSON.match(name):
        return True
    parts = PurePosixPath(name).parts
    if len(parts) != 3 or parts[0] != "data":
        return False
    folder, file = parts[1], parts[2]
    if folder == "weights":
        return (file.startswith("weight_") and bool(_PAYLOAD_FILE.match(file))) or file in {
            f"{m}_weights_config.json" for m in models
        }
    if folder == "constants":
        return (file.startswith("tensor_") and bool(_PAYLOAD_FILE.match(file))) or file in {
            f"{m}_constants_config.json" for m in models
        }
    if folder == "sample_inputs":
        return file in {f"{m}.pt" for m in models}
    return False


def check_pt2_archive(path: Path, *, max_members: int = MAX_MEMBERS) -> None:
    """Raise ModelLoadError, naming the member, unless `path` is a `.pt2` that torch can load without running
    code from it (see the module docstring). Reads only the zip directory and the JSON members."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"not a torch.export program (.pt2 is a zip archive): {exc}") from None
    with zf:
        infos = zf.infolist()
        if not infos or len(infos) > max_members:
            raise _refuse(f"the archive has {len(infos)} members")
        roots = {info.filename.split("/", 1)[0] for info in infos}
        if len(roots) != 1:
            raise _refuse(f"the archive has {len(roots)} top-level folders, not one")
        root = roots.pop() + "/"
        relative: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename[len(root) :] if info.filename.startswith(root) else ""
            if not name or "\\" in name or ".." in PurePosixPath(name).parts:
                raise _refuse(f"the member {info.filename[:200]!r} has an unexpected path")
            if info.compress_type != zipfile.ZIP_STORED:
                raise _refuse(f"the member {info.filename[:200]!r} is compressed (torch.export.save never does)")
            relative[name] = info
        if "archive_format" not in relative or zf.read(relative["archive_format"]).strip() != b"pt2":
            raise _refuse("the archive is not in the pt2 format written by torch.export.save (no archive_format 'pt2')")
        models = {m.group(1) for n in relative if (m := _MODEL_JSON.match(n))}
        if not models:
            raise _refuse("the archive holds no exported program (models/<name>.json)")
        for name, info in relative.items():
            if not _allowed_member(name, models):
                raise _refuse(
                    f"the member {info.filename[:200]!r} is not one torch.export.save writes for a plain program"
                )
        for name, info in relative.items():
            if not name.endswith(".json") or name.startswith("extra/"):
                continue
            if info.file_size > MAX_JSON_BYTES:
                raise _refuse(f"the member {info.filename[:200]!r} is {info.file_size} bytes")
            try:
                document = json.loads(zf.read(info))
            except (ValueError, UnicodeDecodeError):
                raise _refuse(f"the member {info.filename[:200]!r} is not JSON") from None
            if name.startswith("models/"):
                check_program_json(document, f"the program {name!r}")
            else:
                check_payload_config(document, "weights" if name.startswith("data/weights/") else "constants", name)
