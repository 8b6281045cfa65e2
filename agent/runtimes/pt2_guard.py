"""Archive checks for `.pt2` files (`torch.export.save` programs), done before torch opens one: plain
struct/json/ast, no torch import (only the torch backend, `agent.runtimes.torch_export`, may import torch).

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
* graph targets resolved by `getattr` on `torch`, `operator` and `math` (e.g. `torch.os.system`);
* a zip that torch's reader (miniz) and a checker's reader see differently: miniz takes the central
  directory at its recorded offset, Python's `zipfile` tolerates prepended data and finds another one,
  so a polyglot shows a checker a clean program and torch a hostile one.

So `check_pt2_archive` accepts only: one root folder, only the members `torch.export.save` writes (stored,
uncompressed), no pickled payloads, no custom or opaque objects, no AOTInductor or legacy files, empty
`guards_code`, every `expr_str` parsed and allow-listed node by node (arithmetic, comparisons, symbols and
sympy/torch size functions; no attributes, subscripts or other calls), every name a plain dotted
identifier, every graph target an operator (`torch.ops.*`) or an allow-listed builtin. What it cannot
check (the sample inputs' tensor pickles) the backend covers by loading with weights_only forced.

Against reader differentials it does two things. The archive's layout must be unambiguous
(`agent.runtimes.zip_check.read_members`: directory at its recorded offset, nothing prepended or appended,
local headers agreeing with the directory, members tiling the file, unique names), and every byte it
checks is read at offsets it has verified itself, never through `zipfile`. Then `write_checked_pt2` writes
a fresh archive from exactly the bytes that were checked (extra files dropped), and the backend gives
torch only that copy: whatever a reader would make of the original, torch reads what was checked.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from agent.runtimes.base import ModelLoadError
from agent.runtimes.pt2_expr import check_sym_expr, refuse
from agent.runtimes.zip_check import STORED, Member, ZipLayoutError, copy_member, read_members

__all__ = ["check_payload_config", "check_program_json", "check_pt2_archive", "check_sym_expr", "write_checked_pt2"]

MAX_MEMBERS = 100_000
MAX_JSON_BYTES = 256 * 2**20
_END_SEARCH = 2**16 + 22  # an end record with the longest comment
_ALIGNMENT = 64  # torch.export.save aligns member data to 64 bytes

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:+\-]*$")
_FQN = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_PAYLOAD_FILE = re.compile(r"^[A-Za-z0-9_]+$")
_MODEL_JSON = re.compile(r"^models/([A-Za-z0-9_]+)\.json$")
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


# ============================================================================== the checks


def _check_target(target: str, where: str) -> None:
    if target.startswith("torch.ops.") and _SAFE_NAME.match(target):
        return
    if target not in _BUILTIN_TARGETS:
        raise refuse(
            f"{where} calls {target[:120]!r}, which is neither an operator (torch.ops.*) nor an allowed builtin"
        )


def _check_nested_json(text: str, key: str) -> None:
    try:
        value = json.loads(text)
    except ValueError:
        raise refuse(f"metadata {key!r} is not JSON") from None
    for s in _strings(value):
        if "\n" in s or "\r" in s:
            raise refuse(f"metadata {key!r} holds a line break")


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
        raise refuse(f"{where} is not a JSON object")
    if program.get("guards_code"):
        raise refuse(f"{where} carries guards_code (Python source that loading would run)")
    stack: list[tuple[str, Any]] = [("", program)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str) or not _SAFE_NAME.match(k):
                    raise refuse(f"{where} has the key {str(k)[:120]!r}")
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
                    raise refuse(f"{where}'s {key!r} metadata holds a line break")
            elif not _SAFE_NAME.match(value):
                raise refuse(f"{where}'s {key!r} is {value[:120]!r}, not a plain name")
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise refuse(f"{where} holds a {type(value).__name__}")


def check_payload_config(config: Any, kind: str, member: str) -> None:
    """A weights/constants config: plain dotted FQNs, raw tensor payloads only (no pickle, no objects)."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise refuse(f"{member} is not a payload config")
    prefix = "weight_" if kind == "weights" else "tensor_"
    for fqn, meta in entries.items():
        if not isinstance(fqn, str) or not _FQN.match(fqn):
            raise refuse(f"{member} names the {kind} entry {str(fqn)[:120]!r}, not a plain dotted name")
        if not isinstance(meta, dict):
            raise refuse(f"{member}'s entry {fqn!r} is not an object")
        if meta.get("use_pickle") is not False:
            raise refuse(f"{member}'s entry {fqn!r} is a pickled object (use_pickle)")
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not _PAYLOAD_FILE.match(path_name) or not path_name.startswith(prefix):
            raise refuse(f"{member}'s entry {fqn!r} is stored as {str(path_name)[:80]!r}, not a raw tensor payload")


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


def _looks_like_zip(f: BinaryIO) -> bool:
    """Whether the file holds a zip end record in its last 64 KiB (where any zip reader looks for one)."""
    size = f.seek(0, 2)
    f.seek(max(0, size - _END_SEARCH))
    return b"PK\x05\x06" in f.read()


class _Copy:
    """The fresh archive torch is given: stored members, data aligned to 64 bytes like torch.export.save's
    (padding in a local "FB" extra field), written only from bytes the checks have passed."""

    def __init__(self, raw: BinaryIO, archive: zipfile.ZipFile) -> None:
        self._raw = raw
        self._zip = archive

    def add(self, name: str, size: int, chunks: Iterable[bytes]) -> None:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.file_size = size
        zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule: it then adds a 20-byte zip64 field
        header = 30 + len(name.encode()) + 4 + (20 if zip64 else 0)
        pad = -(self._raw.tell() + header) % _ALIGNMENT
        info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        with self._zip.open(info, "w", force_zip64=zip64) as out:
            for chunk in chunks:
                out.write(chunk)


def _check(path: Path, copy: _Copy | None, max_members: int) -> None:
    """The checks of `check_pt2_archive`; with `copy`, every member torch needs is also written there, from
    the very bytes that were checked (JSON members are checked and written from one buffer)."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ModelLoadError(f"not a torch.export program (.pt2 is a zip archive): {exc}") from None
    with f:
        try:
            members = read_members(f, methods=frozenset({STORED}), max_members=max_members)
        except ZipLayoutError as exc:
            if not _looks_like_zip(f):
                raise ModelLoadError(f"not a torch.export program (.pt2 is a zip archive): {exc}") from None
            raise refuse(f"the archive's layout is not what torch.export.save writes: {exc}") from None
        if not members:
            raise refuse("the archive has no members")
        roots = {m.name.split("/", 1)[0] for m in members}
        if len(roots) != 1:
            raise refuse(f"the archive has {len(roots)} top-level folders, not one")
        root = roots.pop() + "/"
        relative: dict[str, Member] = {}
        for member in members:
            name = member.name[len(root) :] if member.name.startswith(root) else ""
            if not name or "\\" in name or ".." in PurePosixPath(name).parts:
                raise refuse(f"the member {member.name[:200]!r} has an unexpected path")
            relative[name] = member

        def read(m: Member) -> bytes:
            if m.file_size > MAX_JSON_BYTES:
                raise refuse(f"the member {m.name[:200]!r} is {m.file_size} bytes")
            try:
                return b"".join(copy_member(f, m))
            except ZipLayoutError as exc:
                raise refuse(str(exc)) from None

        if "archive_format" not in relative or read(relative["archive_format"]).strip() != b"pt2":
            raise refuse("the archive is not in the pt2 format written by torch.export.save (no archive_format 'pt2')")
        models = {match.group(1) for n in relative if (match := _MODEL_JSON.match(n))}
        if not models:
            raise refuse("the archive holds no exported program (models/<name>.json)")
        for name, m in relative.items():
            if not _allowed_member(name, models):
                raise refuse(f"the member {m.name[:200]!r} is not one torch.export.save writes for a plain program")
        for name, m in relative.items():
            if name.startswith("extra/"):
                continue  # extra files are read only when load() is asked for them by name: not copied
            if not name.endswith(".json"):
                if copy is not None:
                    try:
                        copy.add(m.name, m.file_size, copy_member(f, m))
                    except ZipLayoutError as exc:
                        raise refuse(str(exc)) from None
                continue
            data = read(m)
            try:
                document = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                raise refuse(f"the member {m.name[:200]!r} is not JSON") from None
            if name.startswith("models/"):
                check_program_json(document, f"the program {name!r}")
            else:
                check_payload_config(document, "weights" if name.startswith("data/weights/") else "constants", name)
            if copy is not None:
                copy.add(m.name, len(data), [data])


def check_pt2_archive(path: Path, *, max_members: int = MAX_MEMBERS) -> None:
    """Raise ModelLoadError, naming the member, unless `path` is a `.pt2` that torch can load without running
    code from it (see the module docstring), laid out so that every zip reader sees the same members
    (`agent.runtimes.zip_check`). Reads the zip structures and the JSON members, streaming."""
    _check(path, None, max_members)


def write_checked_pt2(path: Path, folder: Path, *, max_members: int = MAX_MEMBERS) -> Path:
    """Check `path` like `check_pt2_archive` and write, in `folder`, a fresh archive made only of the checked
    members' checked bytes; return its path (a new, unpredictable name). Torch is given this copy, never
    `path`, so what torch reads is provably what was checked, whatever zip reader it uses. Streams member
    by member (memory: the largest JSON member); needs room in `folder` for a copy of the model."""
    fd, name = tempfile.mkstemp(prefix=".checked-", suffix=".pt2", dir=folder)
    try:
        with os.fdopen(fd, "w+b") as raw, zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED) as archive:
            _check(path, _Copy(raw, archive), max_members)
    except BaseException as exc:
        os.unlink(name)
        if isinstance(exc, OSError):
            raise ModelLoadError(
                f"could not write the checked copy of the program in the job folder ({exc}); the agent needs "
                f"free space for a second copy of the model ({path.stat().st_size} bytes) in its work dir"
            ) from None
        raise
    return Path(name)
