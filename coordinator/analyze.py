"""Static analysis of an ONNX model: parameters, MACs/FLOPs per layer, weight bytes, peak activations, ops,
and what each target runtime will not run (`coordinator.analyze_support`). Nothing is executed.

Method and conventions:

* Shapes come from `onnx.shape_inference.infer_shapes` (with data propagation) after the first dim of
  every graph input is set to `batch` where it is symbolic or unset; a fixed first dim is kept (and
  noted when it differs from `batch`). Other symbolic dims stay symbolic: what depends on them is
  reported as None with the reason.
* Parameters: the elements of the graph's initializers (not Constant nodes, not sparse initializers).
  A layer's params are those of the initializers it reads, each credited to the first node reading it,
  so the layers' params add up to the total less initializers that no node reads.
* MACs (multiply-accumulates), with the weight ``W`` as stored: Conv / ConvInteger / QLinearConv:
  ``prod(output shape) * prod(W.shape[1:])``, i.e. N·Cout·Hout·Wout·(Cin/groups)·kH·kW;
  ConvTranspose: ``prod(input shape) * prod(W.shape[1:])``; Gemm / MatMul / MatMulInteger /
  QLinearMatMul: M·N·K, i.e. ``prod(output shape) * K`` (batched MatMul included). Recurrent layers,
  Einsum, Attention and control flow (If/Loop/Scan) are not modelled: their MACs are None, and then
  so is the total. Every other op counts 0 (elementwise work, bias adds, pooling, normalisation are
  not counted). FLOPs = 2 × MACs (a multiply and an add each).
* Weight bytes: per initializer data type, elements × bits / 8 (4-bit types round up per tensor).
* Peak activation memory: nodes are walked in graph order (ONNX requires topological order); a
  tensor is allocated when its node runs and freed after its last consumer (graph outputs stay
  alive to the end); graph inputs are live from the start; initializers are excluded. The estimate
  is the largest sum of live bytes, with no buffer reuse or in-place execution, so runtimes that do
  both need less. Subgraphs (If/Loop bodies) are not walked.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from coordinator.analyze_support import DEFAULT_DOMAINS, TARGETS, SupportNote, support_notes

if TYPE_CHECKING:
    import onnx

__all__ = ["TARGETS", "Activation", "Analysis", "AnalyzeError", "Layer", "TensorParams", "analyze_onnx"]

Dim = int | str
Shape = tuple[Dim, ...]

_BITS: Final[dict[str, int]] = {
    "float32": 32, "float64": 64, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8, "int16": 16,
    "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64, "bool": 8, "complex64": 64,
    "complex128": 128, "float8e4m3fn": 8, "float8e4m3fnuz": 8, "float8e5m2": 8, "float8e5m2fnuz": 8,
    "float8e8m0": 8, "int4": 4, "uint4": 4, "float4e2m1": 4, "int2": 2, "uint2": 2,
}  # fmt: skip
_CONV_WEIGHT_INDEX: Final = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_MATMUL_OPS: Final = frozenset({"MatMul", "MatMulInteger", "QLinearMatMul"})
_NOT_MODELLED: Final = frozenset({"LSTM", "GRU", "RNN", "Einsum", "Attention", "If", "Loop", "Scan"})


class AnalyzeError(ValueError):
    """The file is missing or is not an ONNX model; the message says which, for the user."""


@dataclass(frozen=True)
class TensorParams:
    """One initializer: its numpy-style dtype name, shape, element count and bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    count: int
    bytes: int


@dataclass(frozen=True)
class Activation:
    """A graph input or node output: shape (symbolic dims as names, unknown as "?"), dtype, bytes or None."""

    name: str
    shape: Shape | None
    dtype: str | None
    bytes: int | None


@dataclass(frozen=True)
class Layer:
    """One top-level node: its first output's shape, the params it reads, its MACs (None: see `note`)."""

    name: str
    op_type: str
    domain: str
    output_shape: Shape | None
    params: int
    macs: int | None
    note: str = ""


@dataclass(frozen=True)
class Analysis:
    """Everything `analyze_onnx` finds; `to_dict` gives plain JSON-ready data.

    `total_macs` / `total_flops` are None when some layer's MACs are (then `macs_note` says which, and
    what the counted layers add up to); `peak_activation_bytes` is None when some activation's size is
    unknown (`peak_note` says which). `support` maps each target in `TARGETS` to its notes.
    """

    path: str
    batch: int
    ir_version: int
    opset_imports: dict[str, int]
    inputs: tuple[Activation, ...]
    layers: tuple[Layer, ...]
    parameters: tuple[TensorParams, ...]
    total_params: int
    total_macs: int | None
    total_flops: int | None
    macs_note: str
    weight_bytes: dict[str, int]
    activations: tuple[Activation, ...]
    peak_activation_bytes: int | None
    peak_note: str
    op_histogram: dict[str, int]
    support: dict[str, tuple[SupportNote, ...]]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists, strings and numbers (tuples become lists once JSON-encoded)."""
        return dataclasses.asdict(self)


def _dtype_name(elem_type: int) -> str:
    from onnx import TensorProto

    name = TensorProto.DataType.Name(elem_type).lower()
    return {"float": "float32", "double": "float64"}.get(name, name)


def _nbytes(count: int, dtype: str | None) -> int | None:
    bits = _BITS.get(dtype or "")
    return None if bits is None else (count * bits + 7) // 8


def _shape_of(value: onnx.ValueInfoProto) -> tuple[Shape | None, str | None]:
    if value.type.WhichOneof("value") != "tensor_type":
        return None, None
    tensor = value.type.tensor_type
    dtype = _dtype_name(tensor.elem_type) if tensor.elem_type else None
    if not tensor.HasField("shape"):
        return None, dtype
    dims: list[Dim] = []
    for d in tensor.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?"))
    return tuple(dims), dtype


def _static(shape: Shape | None) -> tuple[int, ...] | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def _load(path: Path) -> onnx.ModelProto:
    import onnx

    if not path.is_file():
        raise AnalyzeError(f"{path}: no such file")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types for garbage
        raise AnalyzeError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if model.ir_version < 1 or not model.HasField("graph") or not model.opset_import:
        raise AnalyzeError(f"{path}: not an ONNX model (no IR version, graph or opset import)")
    return model


def _set_batch(model: onnx.ModelProto, batch: int, init_names: set[str]) -> tuple[bool, list[str]]:
    """Fix symbolic/unset first dims of graph inputs to `batch`; return (other dims dynamic, notes)."""
    dynamic, notes = False, []
    for value in model.graph.input:
        if value.name in init_names or value.type.WhichOneof("value") != "tensor_type":
            continue
        dims = value.type.tensor_type.shape.dim
        if not dims:
            continue
        if dims[0].HasField("dim_value"):
            if dims[0].dim_value != batch:
                notes.append(f"input {value.name!r} has a fixed batch of {dims[0].dim_value}; batch {batch} not used")
        else:
            dims[0].dim_value = batch
        others = [d.dim_param or "?" for d in dims[1:] if not d.HasField("dim_value")]
        if others:
            dynamic = True
            notes.append(
                f"input {value.name!r} has dynamic non-batch dims {others}: "
                "what depends on them is reported as None (fix them in the model to get numbers)"
            )
    return dynamic, notes


def _subgraph_nodes(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Nodes of `node`'s subgraphs (If/Loop/Scan bodies), recursively."""
    from onnx import AttributeProto

    found: list[onnx.NodeProto] = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            found += _all_nodes(g)
    return found


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes of `graph` and, recursively, of its subgraphs."""
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        nodes += _subgraph_nodes(node)
    return nodes


def _layer_macs(node: onnx.NodeProto, shapes: dict[str, Shape | None]) -> tuple[int | None, str]:
    """MACs of one node per the module's conventions, or None with the reason."""
    op = node.op_type
    if node.domain not in DEFAULT_DOMAINS:
        return 0, "custom domain: MACs not counted"
    if op in _NOT_MODELLED:
        return None, f"MACs of {op} are not modelled"
    if op in _CONV_WEIGHT_INDEX or op == "ConvTranspose":
        weight = node.input[_CONV_WEIGHT_INDEX.get(op, 1)]
        operand = node.input[0] if op == "ConvTranspose" else node.output[0]
    elif op == "Gemm" or op in _MATMUL_OPS:
        weight = node.input[0]  # A: gives K
        operand = node.output[0]
    else:
        return 0, ""
    w, o = _static(shapes.get(weight)), _static(shapes.get(operand))
    if w is None or o is None or not w:
        missing = weight if w is None or not w else operand
        return None, f"shape of {missing!r} unknown: {shapes.get(missing)}"
    if op == "Gemm":
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        k = w[0] if trans_a else w[-1]
        return math.prod(o) * k, ""
    if op in _MATMUL_OPS:
        return math.prod(o) * w[-1], ""
    return math.prod(o) * math.prod(w[1:]), ""


def _peak(graph: onnx.GraphProto, inputs: list[str], sizes: dict[str, int | None]) -> tuple[int | None, str]:
    """Largest sum of live activation bytes walking `graph` in order (see the module docstring)."""
    outputs = {o.name for o in graph.output}
    last: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            last[name] = i
        for sub in _subgraph_nodes(node):  # outer-scope names read inside a body
            for name in sub.input:
                last[name] = i
    unknown = [n for n, s in sizes.items() if s is None]
    if unknown:
        return None, f"size unknown for {len(unknown)} activation(s), e.g. {unknown[0]!r}"
    live = {n: sizes[n] or 0 for n in inputs}
    peak = sum(live.values())
    for i, node in enumerate(graph.node):
        for name in node.output:
            if name and name in sizes:
                live[name] = sizes[name] or 0
        peak = max(peak, sum(live.values()))
        for name in set(node.input) | set(node.output):
            if name in live and name not in outputs and last.get(name, i) <= i:
                del live[name]
    return peak, "live-tensor walk in graph order, no buffer reuse; initializers excluded"


def analyze_onnx(path: Path, *, batch: int = 1) -> Analysis:
    """Analyse the ONNX model at `path` for a batch of `batch` (see the module docstring for the method).

    Reads the file only (external data is not loaded: sizes come from the tensors' dims). Raises
    AnalyzeError for a missing file, a file onnx cannot parse as a model, or ``batch < 1``. A failing
    shape inference is not an error: it becomes a note and the unknown shapes give None values.
    """
    import onnx

    if batch < 1:
        raise AnalyzeError(f"batch must be >= 1, got {batch}")
    model = _load(path)
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    dynamic, notes = _set_batch(model, batch, init_names)
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        graph = model.graph
    except Exception as exc:  # inference errors are many and unrelated
        notes.append(f"shape inference failed ({type(exc).__name__}: {exc}); shapes from the file only")

    params = []
    for t in graph.initializer:
        dtype = _dtype_name(t.data_type)
        count = math.prod(t.dims)
        params.append(TensorParams(t.name, dtype, tuple(int(d) for d in t.dims), count, _nbytes(count, dtype) or 0))
    weight_bytes: Counter[str] = Counter()
    for p in params:
        weight_bytes[p.dtype] += p.bytes
    if graph.sparse_initializer:
        notes.append(f"{len(graph.sparse_initializer)} sparse initializer(s) not counted as parameters")

    shapes: dict[str, Shape | None] = {p.name: p.shape for p in params}
    dtypes: dict[str, str | None] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.name not in init_names:
            shapes[value.name], dtypes[value.name] = _shape_of(value)

    input_names = [v.name for v in graph.input if v.name not in init_names]
    activation_names = input_names + [o for n in graph.node for o in n.output if o]
    activations = []
    for name in activation_names:
        static = _static(shapes.get(name))
        nbytes = None if static is None else _nbytes(math.prod(static), dtypes.get(name))
        activations.append(Activation(name, shapes.get(name), dtypes.get(name), nbytes))
    sizes = {a.name: a.bytes for a in activations}

    counts = {p.name: p.count for p in params}
    credited: set[str] = set()
    layers = []
    for i, node in enumerate(graph.node):
        reads = [n for n in dict.fromkeys(node.input) if n in init_names and n not in credited]
        credited.update(reads)
        macs, why = _layer_macs(node, shapes)
        out = node.output[0] if node.output else ""
        layers.append(
            Layer(
                name=node.name or f"{node.op_type}_{i}",
                op_type=node.op_type,
                domain=node.domain,
                output_shape=shapes.get(out),
                params=sum(counts[n] for n in reads),
                macs=macs,
                note=why,
            )
        )
    uncounted = [layer for layer in layers if layer.macs is None]
    counted = sum(layer.macs or 0 for layer in layers)
    total_macs = None if uncounted else counted
    macs_note = "FLOPs = 2 x MACs; only Conv*/Gemm/MatMul* layers count"
    if uncounted:
        macs_note = (
            f"{len(uncounted)} layer(s) not counted (e.g. {uncounted[0].name}: {uncounted[0].note}); "
            f"the counted layers sum to {counted} MACs"
        )
    custom = sum(1 for layer in layers if layer.domain not in DEFAULT_DOMAINS)
    if custom:
        notes.append(f"MACs exclude {custom} custom-domain node(s)")

    peak, peak_note = _peak(graph, input_names, sizes)
    all_nodes = _all_nodes(graph)
    if len(all_nodes) > len(graph.node):
        notes.append(f"{len(all_nodes) - len(graph.node)} subgraph node(s): only in the op histogram and support notes")
    ops = Counter((n.domain, n.op_type) for n in all_nodes)
    histogram = {
        (op if domain in DEFAULT_DOMAINS else f"{domain}:{op}"): count
        for (domain, op), count in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))
    }
    opsets = {o.domain: int(o.version) for o in model.opset_import}
    all_dtypes = frozenset(p.dtype for p in params) | frozenset(d for d in dtypes.values() if d)
    return Analysis(
        path=str(path),
        batch=batch,
        ir_version=int(model.ir_version),
        opset_imports=opsets,
        inputs=tuple(a for a in activations if a.name in set(input_names)),
        layers=tuple(layers),
        parameters=tuple(params),
        total_params=sum(p.count for p in params),
        total_macs=total_macs,
        total_flops=None if total_macs is None else 2 * total_macs,
        macs_note=macs_note,
        weight_bytes=dict(sorted(weight_bytes.items())),
        activations=tuple(activations),
        peak_activation_bytes=peak,
        peak_note=peak_note,
        op_histogram=histogram,
        support=support_notes(ops, opsets, dynamic_dims=dynamic, dtypes=all_dtypes),
        notes=tuple(notes),
    )
