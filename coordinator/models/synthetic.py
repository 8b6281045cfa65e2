"""Small, deterministic ONNX models built with `onnx.helper` (no torch), and data sets to go with them.

They serve as the built-in demo model until a trained one exists, and as fixtures for tests and
benchmarks. Every builder

* draws its weights from `numpy.random.default_rng(seed)` in a fixed order, so the same arguments give a
  byte-identical file (the graph carries no timestamps and a fixed producer name and version);
* stores the weights inside the `.onnx` file (no external data);
* runs `onnx.checker.check_model` (with shape inference, except for `build_big_initializer`) on the
  model before it appears at `path`: it is written to a temporary file in the same directory,
  checked there and then renamed over `path` (on failure `path` is left as it was);
* creates missing parent directories of `path`, overwrites an existing file there, and returns `path`;
* uses the smallest IR version that the requested opset allows, so older runtimes on edge devices
  can load the result.

All models take one float32 input named ``"input"``. `input_spec` reads a model's inputs back;
`make_dataset` writes an ``.npz`` of random inputs with labels and reference outputs for a model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper

__all__ = [
    "BIG_INITIALIZER_MAX_MB",
    "DEFAULT_BENCH_CNN",
    "CnnConfig",
    "build_big_initializer",
    "build_cnn",
    "build_mlp",
    "input_spec",
    "make_dataset",
]

PRODUCER_NAME: Final = "edgebench.synthetic"
PRODUCER_VERSION: Final = "1"

#: Largest weight `build_big_initializer` accepts, in MiB: protobuf cannot serialise a message of 2 GiB
#: or more, and the builder needs a few copies of the weight in memory while it saves the model.
BIG_INITIALIZER_MAX_MB: Final = 1500

#: Columns of the `build_big_initializer` weight; its rows follow from the requested size.
_BIG_INITIALIZER_COLS: Final = 1024

_MIN_OPSET: Final = 11
_MiB: Final = 1 << 20

# numpy's stub types `**kwds` of savez so that a dict of arrays clashes with its `allow_pickle: bool`.
_savez: Callable[..., None] = np.savez


@dataclass(frozen=True)
class CnnConfig:
    """Architecture arguments of `build_cnn` (everything except path, batch, seed and opset)."""

    channels: int = 32
    blocks: int = 3
    input_hw: int = 32
    in_channels: int = 3
    num_classes: int = 10

    def build(self, path: Path, *, batch: int | None = 1, seed: int = 0, opset: int = 17) -> Path:
        """Build this configuration with `build_cnn` and return `path`."""
        return build_cnn(
            path,
            channels=self.channels,
            blocks=self.blocks,
            input_hw=self.input_hw,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            batch=batch,
            seed=seed,
            opset=opset,
        )


#: The CNN benchmarks use: one batch-1 inference takes roughly 1 ms on a small x86 machine.
#: Measured: ~0.87 ms median (1000 timed runs after 50 warm-up, 0.85-1.1 ms across repeats on a shared
#: machine), onnxruntime 1.32 CPU, default threads, 2-core x86 (AMD EPYC) with AVX2 (no AVX512).
#: 75 M multiply-adds, 0.88 M parameters (a 3.5 MB file). Input (1, 3, 48, 48), output (1, 10).
DEFAULT_BENCH_CNN: Final = CnnConfig(channels=48, blocks=4, input_hw=48, in_channels=3, num_classes=10)


def _require_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _check_opset(opset: int) -> None:
    if opset < _MIN_OPSET or opset > onnx.defs.onnx_opset_version():
        raise ValueError(
            f"opset must be between {_MIN_OPSET} and {onnx.defs.onnx_opset_version()} "
            f"(the newest this onnx knows), got {opset}"
        )


def _batch_dim(batch: int | None) -> int | str:
    if batch is None:
        return "batch"
    _require_positive(batch=batch)
    return batch


def _he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> npt.NDArray[np.float32]:
    """Normal weights with std sqrt(2 / fan_in), which keeps activations' scale through ReLU layers."""
    weights = rng.standard_normal(shape, dtype=np.float32)
    weights *= np.float32(np.sqrt(2.0 / fan_in))
    return weights


def _small_bias(rng: np.random.Generator, size: int) -> npt.NDArray[np.float32]:
    bias = rng.standard_normal(size, dtype=np.float32)
    bias *= np.float32(0.05)
    return bias


def _save(
    path: Path,
    *,
    name: str,
    doc: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: dict[str, npt.NDArray[np.float32]],
    opset: int,
    full_check: bool = True,
) -> Path:
    """Assemble, check and save a model; see the module docstring for the guarantees.

    `initializers` maps names to float32 weights, stored in dict order. They are taken out of the dict
    one at a time (it is empty afterwards) and each array is dropped as soon as its bytes exist, so
    that, if the caller holds no other reference, the peak is about three times the weights (the
    model plus the two buffers of protobuf serialisation while saving) rather than four or five.
    `full_check` adds shape inference to the check. Raises onnx.checker.ValidationError for an
    invalid model.
    """
    graph = helper.make_graph(nodes, name, inputs, outputs)
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph,
        opset_imports=opset_ids,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        doc_string=doc,
        ir_version=helper.find_min_ir_version_for(opset_ids),
    )
    del graph  # make_model copied it
    while initializers:
        init_name, array = next(iter(initializers.items()))
        del initializers[init_name]
        # Filled in place (appending a ready TensorProto copies it); the same bytes as
        # numpy_helper.from_array would give.
        tensor = model.graph.initializer.add()
        tensor.name = init_name
        tensor.data_type = TensorProto.FLOAT
        tensor.dims.extend(array.shape)
        raw = array.astype("<f4", copy=False).tobytes()
        del array
        tensor.raw_data = raw
        del raw, tensor
    # Written to a temporary file next to `path`, checked there (after the in-memory model is freed) and
    # renamed over `path`: readers of `path` never see a half-written or unchecked model.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        onnx.save_model(model, str(tmp))
        del model
        onnx.checker.check_model(str(tmp), full_check=full_check)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def build_cnn(
    path: Path,
    *,
    channels: int = 32,
    blocks: int = 3,
    input_hw: int = 32,
    in_channels: int = 3,
    num_classes: int = 10,
    batch: int | None = 1,
    seed: int = 0,
    opset: int = 17,
) -> Path:
    """Write a small image classifier to `path` and return `path`.

    Input ``"input"``: float32 NCHW ``(N, in_channels, input_hw, input_hw)``; output ``"logits"``:
    float32 ``(N, num_classes)``. N is the fixed `batch`, or the symbolic dim ``"batch"`` when `batch`
    is None.

    Architecture: `blocks` blocks of Conv(3x3, pad 1) + Relu, the first with `channels` output
    channels. Before each later block the feature map is halved while its side is at least 4: by
    MaxPool(2x2, stride 2) before odd-numbered blocks (1, 3, ...) and by giving the block's conv stride 2
    for even-numbered ones (2, 4, ...); the width doubles at each halving. Then GlobalAveragePool,
    Flatten and Gemm to the logits. Conv weights are He-normal, the Gemm weight LeCun-normal, biases
    small normal, so for standard-normal inputs activations and logits stay O(1).

    Raises ValueError for a non-positive size, batch or an opset outside [11, newest onnx knows].
    """
    _require_positive(channels=channels, blocks=blocks, input_hw=input_hw, in_channels=in_channels)
    _require_positive(num_classes=num_classes)
    _check_opset(opset)
    n = _batch_dim(batch)
    rng = np.random.default_rng(seed)

    nodes: list[onnx.NodeProto] = []
    inits: dict[str, npt.NDArray[np.float32]] = {}
    x = "input"
    c_in, c_out, hw = in_channels, channels, input_hw
    for i in range(blocks):
        stride = 1
        if i > 0 and hw >= 4:
            c_out *= 2
            if i % 2 == 1:
                pooled = f"pool{i}"
                nodes.append(
                    helper.make_node("MaxPool", [x], [pooled], name=pooled, kernel_shape=[2, 2], strides=[2, 2])
                )
                x, hw = pooled, hw // 2
            else:
                stride, hw = 2, (hw + 1) // 2
        w_name, b_name = f"block{i}.conv.weight", f"block{i}.conv.bias"
        inits[w_name] = _he_normal(rng, (c_out, c_in, 3, 3), c_in * 9)
        inits[b_name] = _small_bias(rng, c_out)
        conv, relu = f"block{i}.conv", f"block{i}.relu"
        nodes.append(
            helper.make_node(
                "Conv",
                [x, w_name, b_name],
                [conv],
                name=conv,
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        nodes.append(helper.make_node("Relu", [conv], [relu], name=relu))
        x, c_in = relu, c_out

    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["features"], name="flatten", axis=1))
    fc_w = rng.standard_normal((num_classes, c_in), dtype=np.float32)
    fc_w *= np.float32(1.0 / np.sqrt(c_in))
    inits["fc.weight"] = fc_w
    inits["fc.bias"] = _small_bias(rng, num_classes)
    nodes.append(helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))

    return _save(
        path,
        name="edgebench_synthetic_cnn",
        doc=(
            f"edgebench synthetic CNN: channels={channels} blocks={blocks} input_hw={input_hw} "
            f"in_channels={in_channels} num_classes={num_classes} batch={batch} seed={seed}"
        ),
        nodes=nodes,
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, in_channels, input_hw, input_hw])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, num_classes])],
        initializers=inits,
        opset=opset,
    )


def build_mlp(
    path: Path,
    *,
    features: int = 64,
    hidden: int = 128,
    num_classes: int = 10,
    batch: int | None = None,
    seed: int = 0,
    opset: int = 17,
) -> Path:
    """Write a tiny two-layer perceptron (tens of µs per inference) to `path` and return `path`.

    Input ``"input"``: float32 ``(N, features)``; output ``"logits"``: float32 ``(N, num_classes)``,
    with N the fixed `batch` or the symbolic dim ``"batch"`` when `batch` is None (the default).
    Graph: Gemm(features → hidden) + Relu + Gemm(hidden → num_classes).

    Raises ValueError for a non-positive size or batch, or an opset outside [11, newest onnx knows].
    """
    _require_positive(features=features, hidden=hidden, num_classes=num_classes)
    _check_opset(opset)
    n = _batch_dim(batch)
    rng = np.random.default_rng(seed)
    w1 = _he_normal(rng, (hidden, features), features)
    b1 = _small_bias(rng, hidden)
    w2 = rng.standard_normal((num_classes, hidden), dtype=np.float32)
    w2 *= np.float32(1.0 / np.sqrt(hidden))
    b2 = _small_bias(rng, num_classes)
    return _save(
        path,
        name="edgebench_synthetic_mlp",
        doc=(
            f"edgebench synthetic MLP: features={features} hidden={hidden} num_classes={num_classes} "
            f"batch={batch} seed={seed}"
        ),
        nodes=[
            helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1", transB=1),
            helper.make_node("Relu", ["fc1"], ["relu1"], name="relu1"),
            helper.make_node("Gemm", ["relu1", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
        ],
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, features])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, num_classes])],
        initializers={"fc1.weight": w1, "fc1.bias": b1, "fc2.weight": w2, "fc2.bias": b2},
        opset=opset,
    )


def build_big_initializer(path: Path, *, megabytes: int, seed: int = 0, opset: int = 17) -> Path:
    """Write a model whose one float32 weight takes `megabytes` MiB, and return `path`.

    Graph: ``output = MatMul(input, weight)`` with `weight` of shape ``(K, 1024)`` and
    ``K = megabytes * 256``, so the weight is exactly ``megabytes * 2**20`` bytes and the file only a
    few hundred bytes more; loading the model costs at least that much memory. Input ``"input"``:
    float32 ``(1, K)``; output ``"output"``: float32 ``(1, 1024)``. Meant for memory-limit and
    memory-accounting tests. Building it needs about three times `megabytes` of memory at its peak
    (4.6 GB for 1500) and takes about 15 s per GB on a small x86 machine. Checked without shape
    inference.

    Raises ValueError if `megabytes` is below 1 or above `BIG_INITIALIZER_MAX_MB` (1500: a
    protobuf message, hence an ONNX file without external data, must stay below 2 GiB), and for an
    opset outside [11, newest onnx knows].
    """
    if megabytes < 1 or megabytes > BIG_INITIALIZER_MAX_MB:
        raise ValueError(
            f"megabytes must be between 1 and {BIG_INITIALIZER_MAX_MB} (an ONNX file without external "
            f"data must stay below the 2 GiB protobuf limit), got {megabytes}"
        )
    _check_opset(opset)
    rows = megabytes * _MiB // (4 * _BIG_INITIALIZER_COLS)
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((rows, _BIG_INITIALIZER_COLS), dtype=np.float32)
    weight *= np.float32(1.0 / np.sqrt(rows))
    weights = {"weight": weight}
    del weight  # _save drops it as soon as its bytes exist
    return _save(
        path,
        name="edgebench_synthetic_big_initializer",
        doc=f"edgebench synthetic big initializer: megabytes={megabytes} seed={seed}",
        nodes=[helper.make_node("MatMul", ["input", "weight"], ["output"], name="matmul")],
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, rows])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, _BIG_INITIALIZER_COLS])],
        initializers=weights,
        opset=opset,
        full_check=False,  # shape inference of one MatMul proves nothing and would copy the weight
    )


def input_spec(path: Path) -> list[tuple[str, tuple[int | str, ...], str]]:
    """Return ``(name, shape, dtype)`` for each graph input of the ONNX model at `path`, in graph order.

    Inputs that are also initializers (models of IR version < 4 list weights as inputs) are left out.
    A dim with a fixed size is an int, a symbolic dim its name (e.g. ``"batch"``), a dim with neither
    ``"?"``. `dtype` is the numpy dtype name (``"float32"``, ``"int64"``, ...). Loads the whole model
    (including external data it refers to). Raises ValueError for an input that is not a tensor or
    has no shape.
    """
    model = onnx.load_model(str(path))
    init_names = {init.name for init in model.graph.initializer}
    spec: list[tuple[str, tuple[int | str, ...], str]] = []
    for value in model.graph.input:
        if value.name in init_names:
            continue
        if value.type.WhichOneof("value") != "tensor_type":
            raise ValueError(f"input {value.name!r} of {path} is not a tensor")
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            raise ValueError(f"input {value.name!r} of {path} has no shape")
        dims: list[int | str] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                dims.append(str(dim.dim_param))
            else:
                dims.append("?")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        spec.append((value.name, tuple(dims), dtype))
    return spec


def make_dataset(
    path: Path,
    *,
    model_path: Path,
    n: int,
    seed: int = 0,
    with_labels: bool = True,
    with_reference: bool = True,
    label_noise: float = 0.1,
) -> Path:
    """Write an ``.npz`` data set for the model at `model_path` to `path` (exactly; no suffix added).

    The model must have one float32 input whose first dim is the batch dim (symbolic, or fixed to a
    size that divides `n`) and whose other dims are fixed, and one output. Keys:

    * ``inputs``: float32, the input's shape with the batch dim replaced by `n`, standard normal from
      `numpy.random.default_rng(seed)` (the same whatever the other flags);
    * ``labels`` (if `with_labels`): int64 ``(n,)``, the argmax over the last axis of the model's
      output (which must then be 2-D) computed with onnxruntime on CPU, except that exactly
      ``round(label_noise * n)`` of them, at random positions, are replaced by a different random
      class. Top-1 accuracy of the model itself on the set is therefore ``1 - round(label_noise*n)/n``
      (0.9 by default, not a trivial 1.0), and a compressed model's accuracy is measured against that.
      A one-class model has no wrong class, so its labels are all 0;
    * ``reference_outputs`` (if `with_reference`): float32, the model's output for all `n` inputs,
      ``(n, ...)``.

    onnxruntime is imported here only, and only when labels or reference outputs are asked for.
    Creates missing parent directories, overwrites an existing file, returns `path`. Raises ValueError
    for a model that does not fit the description above, ``n < 1`` or `label_noise` outside [0, 1].
    """
    _require_positive(n=n)
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be within [0, 1], got {label_noise}")
    spec = input_spec(model_path)
    if len(spec) != 1:
        raise ValueError(f"{model_path} must have exactly one input, has {len(spec)}")
    name, shape, dtype = spec[0]
    if dtype != "float32":
        raise ValueError(f"input {name!r} of {model_path} must be float32, is {dtype}")
    if not shape:
        raise ValueError(f"input {name!r} of {model_path} is a scalar; it needs a batch dim")
    batch_dim, rest = shape[0], shape[1:]
    if not all(isinstance(d, int) for d in rest):
        raise ValueError(f"input {name!r} of {model_path} has symbolic dims after the batch dim: {shape}")
    sample_shape = tuple(int(d) for d in rest)
    if isinstance(batch_dim, int) and n % batch_dim != 0:
        raise ValueError(f"the model's fixed batch size {batch_dim} does not divide n={n}")

    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((n, *sample_shape), dtype=np.float32)
    arrays: dict[str, npt.NDArray[Any]] = {"inputs": inputs}

    if with_labels or with_reference:
        outputs = _run_cpu(model_path, name, inputs, batch_dim if isinstance(batch_dim, int) else 256)
        if with_labels:
            if outputs.ndim != 2:
                raise ValueError(f"labels need a 2-D output (N, classes); {model_path} gives {outputs.shape}")
            labels = np.argmax(outputs, axis=-1).astype(np.int64)
            num_classes = outputs.shape[1]
            wrong = round(label_noise * n) if num_classes > 1 else 0
            flipped = rng.choice(n, size=wrong, replace=False)
            labels[flipped] = (labels[flipped] + rng.integers(1, num_classes, size=wrong)) % num_classes
            arrays["labels"] = labels
        if with_reference:
            arrays["reference_outputs"] = outputs

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        _savez(f, **arrays)
    return path


def _run_cpu(model_path: Path, input_name: str, inputs: npt.NDArray[np.float32], chunk: int) -> npt.NDArray[np.float32]:
    """Run the model's single output over `inputs` in chunks of `chunk` rows with onnxruntime on CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    model_outputs = session.get_outputs()
    if len(model_outputs) != 1:
        raise ValueError(f"{model_path} must have exactly one output, has {len(model_outputs)}")
    parts = [
        np.asarray(session.run(None, {input_name: inputs[i : i + chunk]})[0], dtype=np.float32)
        for i in range(0, len(inputs), chunk)
    ]
    return np.concatenate(parts, axis=0)
