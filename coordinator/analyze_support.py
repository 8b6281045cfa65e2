"""What each target runtime will not (or may not) run, judged from an ONNX model's ops, domains and shapes.

A small, hand-kept table, not a converter: it lists only what is known from the runtimes' own documents or
from how their converters work, and says so where a question cannot be settled without converting.

* Every target: nodes of a non-default domain (anything but ``""`` / ``"ai.onnx"``: ``com.microsoft``,
  ``ai.onnx.ml``, custom domains) are flagged, since each needs an implementation of its own in the
  runtime (a plugin, a custom op, a contrib kernel). Default-domain ops that do not exist in the ONNX
  opset the model imports, or that are deprecated there, are flagged too.
* OpenVINO: its ONNX frontend covers the default opset; there are no known limits for default-domain
  ops (source: OpenVINO's "Supported Operations: ONNX" list). It implements only some ``com.microsoft``
  ops. Whether an attribute combination is accepted is not knowable statically.
* TFLite / LiteRT (edgebench converts from the PyTorch model with litert-torch; the ONNX ops stand for what
  the network does): control flow, sequences, strings and ops with data-dependent output shapes have no
  one-to-one LiteRT builtin; converters emulate them, fail, or need the Flex (``SELECT_TF_OPS``) delegate.
  Marked "limited".
* TensorRT: the ops its ONNX parser marks unsupported (N) in onnx-tensorrt ``docs/operators.md`` (the
  TensorRT 8.4 matrix; newer releases may have added some) and the restrictions it lists there.
* Core ML: coremltools 6 and later have no ONNX frontend (only PyTorch / TensorFlow), so per-op support
  for an ONNX file is not knowable; listed are ops whose dynamic shapes or control flow keep a model off
  the Neural Engine or have no Core ML equivalent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["DEFAULT_DOMAINS", "TARGETS", "SupportNote", "support_notes"]

Level = Literal["unsupported", "limited", "unknown", "info"]

#: Target name -> what it means.
TARGETS: Final[dict[str, str]] = {
    "openvino": "OpenVINO (ONNX frontend / IR)",
    "tflite": "TFLite / LiteRT (via litert-torch)",
    "tensorrt": "TensorRT (ONNX parser)",
    "coreml": "Core ML (coremltools)",
}

DEFAULT_DOMAINS: Final = frozenset({"", "ai.onnx"})

_SEQUENCE_OPS: Final = frozenset(
    {
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SplitToSequence",
        "ConcatFromSequence",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
    }
)
_STRING_OPS: Final = frozenset({"StringNormalizer", "TfIdfVectorizer", "RegexFullMatch", "StringConcat", "StringSplit"})
_DYNAMIC_OUTPUT_OPS: Final = frozenset({"NonZero", "Unique", "NonMaxSuppression", "Compress"})
_CONTROL_FLOW_OPS: Final = frozenset({"Loop", "If", "Scan"})
_QLINEAR_OPS: Final = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})

#: (level, reason) per default-domain op, per target.
_TABLE: Final[dict[str, dict[str, tuple[Level, str]]]] = {
    "openvino": {},
    "tflite": {
        **{
            op: ("limited", "control flow: converted to LiteRT only in simple cases; verify by converting")
            for op in _CONTROL_FLOW_OPS
        },
        **{op: ("unsupported", "ONNX sequences/optionals have no LiteRT equivalent") for op in _SEQUENCE_OPS},
        **{op: ("unsupported", "string ops have no LiteRT builtin") for op in _STRING_OPS},
        **{
            op: ("limited", "data-dependent output shape: dynamic tensors, no GPU/NPU delegate, may need Flex ops")
            for op in _DYNAMIC_OUTPUT_OPS
        },
    },
    "tensorrt": {
        **{
            op: ("unsupported", "marked N in onnx-tensorrt docs/operators.md")
            for op in (
                *_SEQUENCE_OPS,
                *_STRING_OPS,
                *_QLINEAR_OPS,
                "BitShift",
                "Det",
                "DynamicQuantizeLinear",
                "MaxRoiPool",
                "MaxUnpool",
                "Multinomial",
                "NegativeLogLikelihoodLoss",
                "SoftmaxCrossEntropyLoss",
                "Unique",
            )
        },
        "If": ("limited", "both branches' outputs must have broadcastable shapes (onnx-tensorrt)"),
        "Loop": ("limited", "supported; shapes that change across iterations are not"),
        "NonMaxSuppression": ("limited", "thresholds, max boxes must be initializers; output padded (onnx-tensorrt)"),
        "NonZero": ("limited", "data-dependent output shape: only in TensorRT 8.5 and later"),
    },
    "coreml": {
        **{op: ("limited", "control flow runs on the CPU, not the Neural Engine") for op in _CONTROL_FLOW_OPS},
        **{op: ("unsupported", "no Core ML equivalent of ONNX sequences/optionals") for op in _SEQUENCE_OPS},
        **{op: ("unsupported", "string ops have no Core ML layer") for op in _STRING_OPS},
        **{
            op: ("limited", "data-dependent output shape: runs on the CPU, not the Neural Engine")
            for op in _DYNAMIC_OUTPUT_OPS
        },
        **{
            op: ("limited", "Core ML expresses quantisation as weight compression, not integer ops")
            for op in _QLINEAR_OPS
        },
    },
}

_ALWAYS: Final[dict[str, tuple[Level, str]]] = {
    "openvino": ("info", "no known limits for default-domain ONNX ops; attribute combinations are not checked here"),
    "tflite": ("info", "made from the PyTorch model (litert-torch), NCHW kept; success is not knowable statically"),
    "tensorrt": ("info", "limits follow onnx-tensorrt's operator matrix; layer precision support is not checked here"),
    "coreml": (
        "unknown",
        "coremltools 6+ cannot read ONNX: convert the source PyTorch/TensorFlow model; per-op support not knowable",
    ),
}

_DYNAMIC_DIMS: Final[dict[str, tuple[Level, str]]] = {
    "openvino": ("limited", "dynamic dims run on CPU/GPU; the NPU plugin needs static shapes (reshape the model)"),
    "tflite": ("limited", "the TFLite file is converted at the example input's shape (batch fixed at export)"),
    "tensorrt": ("limited", "dynamic dims need an optimization profile (min/opt/max shapes) at build time"),
    "coreml": ("limited", "flexible shapes (RangeDim/EnumeratedShapes) may run off the Neural Engine"),
}

_DTYPE_NOTES: Final[dict[str, dict[str, tuple[Level, str]]]] = {
    "tensorrt": {"float64": ("limited", "DOUBLE is cast to FLOAT, clamped to +-FLT_MAX (onnx-tensorrt)")},
    "tflite": {"float64": ("limited", "float64 tensors are mostly cast to float32 or need Flex ops")},
}


@dataclass(frozen=True)
class SupportNote:
    """One finding for one target: `level` is unsupported, limited, unknown (not knowable statically) or info.

    `subject` names what it is about: ``"domain:op"`` (e.g. ``"com.example:MyOp"``, ``"Loop"`` for the
    default domain), ``"dynamic dims"``, ``"dtype float64"`` or ``"model"``; `count` is how many nodes
    (0 where it is not about nodes).
    """

    level: Level
    subject: str
    reason: str
    count: int = 0


def _schema_problem(op_type: str, opset: int) -> str:
    """Why `op_type` is not a valid default-domain op at `opset` ("" when it is)."""
    import onnx.defs

    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return f"not an op of the ONNX default opset at version {opset}"
    if schema.deprecated:
        return f"deprecated in the ONNX default opset at version {opset}"
    return ""


def support_notes(
    ops: Mapping[tuple[str, str], int],
    opset_imports: Mapping[str, int],
    *,
    dynamic_dims: bool = False,
    dtypes: frozenset[str] = frozenset(),
) -> dict[str, tuple[SupportNote, ...]]:
    """Return the notes for every target in `TARGETS`, in that order, each starting with its general note.

    `ops` maps ``(domain, op_type)`` to its node count (subgraphs included); `opset_imports` maps a domain
    to the version the model imports (``""`` for the default domain); `dynamic_dims` says that an input
    has a symbolic dim besides the batch dim; `dtypes` are the numpy-style names of the model's tensor
    types. Pure: reads onnx's op schemas, nothing else. Non-default domains and ops missing from (or
    deprecated in) the imported default opset are "unsupported" for every target.
    """
    opset = opset_imports.get("", opset_imports.get("ai.onnx", 1))
    result: dict[str, tuple[SupportNote, ...]] = {}
    for target, table in _TABLE.items():
        level, reason = _ALWAYS[target]
        notes = [SupportNote(level, "model", reason)]
        for (domain, op_type), count in sorted(ops.items()):
            if domain not in DEFAULT_DOMAINS:
                why = f"non-default domain {domain!r}: needs a custom op/plugin (or a contrib kernel) in this runtime"
                if domain == "com.microsoft" and target == "openvino":
                    why = "onnxruntime contrib domain: OpenVINO implements only some com.microsoft ops"
                notes.append(SupportNote("unsupported", f"{domain}:{op_type}", why, count))
                continue
            problem = _schema_problem(op_type, opset)
            if problem:
                notes.append(SupportNote("unsupported", op_type, problem, count))
            elif op_type in table:
                op_level, op_reason = table[op_type]
                notes.append(SupportNote(op_level, op_type, op_reason, count))
        if dynamic_dims:
            level, reason = _DYNAMIC_DIMS[target]
            notes.append(SupportNote(level, "dynamic dims", reason))
        for dtype, (level, reason) in _DTYPE_NOTES.get(target, {}).items():
            if dtype in dtypes:
                notes.append(SupportNote(level, f"dtype {dtype}", reason))
        result[target] = tuple(notes)
    return result
