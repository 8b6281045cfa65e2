"""Unstructured (weight) pruning: zero the smallest-magnitude weights of every convolution and linear layer.

Parameters (all optional):
- ``amount`` (default 0.5): fraction of weights set to zero, strictly inside (0, 1);
- ``scope``: ``global`` (default; one L1 threshold over all prunable layers) or ``layer`` (each layer loses
  ``amount`` of its own weights);
- ``finetune`` (default 0): epochs of fine-tuning with the masks kept (needs a training split), ``lr``
  (default 1e-3), ``seed`` (default 0).

Contract: the input model is not modified; the returned copy has the same architecture and dense size,
with the zeros made permanent (no pruning hooks or ``weight_orig``/``weight_mask`` left). Only weights are
pruned (biases are not). Dense runtimes gain **no speed** from unstructured sparsity (measured ~1.0x): the
notes say so and report the achieved sparsity, the dense size, and how much smaller the zlib-compressed
state_dict gets — the one thing zeros buy. A model without convolution or linear layers raises
`NotApplicable`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from coordinator.compress.base import (
    DataSplits,
    Log,
    NotApplicable,
    RecipeError,
    StepReport,
    param_choice,
    param_float,
)
from coordinator.compress.train import evaluate, fit, param_int, require_train, state_dict_sizes

PRUNABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NO_SPEED = "dense runtimes gain no speed from unstructured sparsity"


def pruning_ratio(params: Mapping[str, str], key: str = "amount", default: float = 0.5) -> float:
    """The pruning ratio `params[key]`, strictly inside (0, 1); `RecipeError` saying so otherwise."""
    raw = params.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RecipeError(f"parameter {key}={raw!r} is not a number: pruning ratio must be in (0, 1)") from None
    if not 0.0 < value < 1.0:
        raise RecipeError(f"parameter {key}={raw}: pruning ratio must be in (0, 1)")
    return value


def prunable_layers(model: nn.Module) -> list[nn.Module]:
    """Convolution and linear layers with a weight, in registration order."""
    return [m for m in model.modules() if isinstance(m, PRUNABLE) and getattr(m, "weight", None) is not None]


def sparsity(layers: list[nn.Module]) -> tuple[int, int]:
    """(zero weights, total weights) over the layers' `weight` tensors."""
    zeros = total = 0
    for layer in layers:
        weight = layer.weight
        assert isinstance(weight, torch.Tensor)
        zeros += int((weight == 0).sum().item())
        total += weight.numel()
    return zeros, total


def dense_bytes(model: nn.Module) -> int:
    """Bytes of all parameters stored densely (elements × element size)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


class UnstructuredPruning:
    """L1 magnitude pruning via `torch.nn.utils.prune` (technique name ``prune``)."""

    name = "prune"

    def apply(self, model: Any, data: DataSplits, params: Mapping[str, str], log: Log) -> tuple[Any, StepReport]:
        """Return a pruned copy of `model` and a report (see the module docstring for the contract)."""
        started = time.perf_counter()
        amount = pruning_ratio(params)
        scope = param_choice(params, "scope", "global", ("global", "layer"))
        epochs = param_int(params, "finetune", 0, low=0, high=10_000)
        lr = param_float(params, "lr", 1e-3, low=0.0, high=10.0, open_interval=True)
        seed = param_int(params, "seed", 0, low=0, high=2**31 - 1)
        if not isinstance(model, nn.Module):
            raise NotApplicable("unstructured pruning needs a torch nn.Module")
        train = require_train(data, "pruning with finetune") if epochs > 0 else None

        pruned = copy.deepcopy(model)
        layers = prunable_layers(pruned)
        if not layers:
            raise NotApplicable("no convolution or linear layers to prune")
        labelled = data.test.labels is not None
        notes: dict[str, Any] = {}
        if labelled:
            notes["accuracy_before"] = evaluate(pruned, data.test)
        saved_before, zip_before = state_dict_sizes(pruned)

        targets = [(layer, "weight") for layer in layers]
        if scope == "global":
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
        else:
            for layer, attr in targets:
                prune.l1_unstructured(layer, attr, amount=amount)  # type: ignore[no-untyped-call]
        log(f"pruned {amount:.0%} of weights ({scope}) over {len(layers)} layers")
        if labelled:
            notes["accuracy_pruned"] = evaluate(pruned, data.test)
        if train is not None:
            # The pruning hooks stay on while fine-tuning: weight = weight_orig * mask, so zeros stay zero.
            fit(pruned, train, epochs=epochs, lr=lr, seed=seed, log=log)
            if labelled:
                notes["accuracy_finetuned"] = evaluate(pruned, data.test)
        for layer, attr in targets:
            prune.remove(layer, attr)  # type: ignore[no-untyped-call]

        zeros, total = sparsity(layers)
        saved_after, zip_after = state_dict_sizes(pruned)
        notes.update(
            {
                "sparsity": zeros / total,
                "zero_weights": zeros,
                "prunable_weights": total,
                "dense_bytes": dense_bytes(pruned),
                "saved_bytes_before": saved_before,
                "saved_bytes_after": saved_after,
                "zip_bytes_before": zip_before,
                "zip_bytes_after": zip_after,
                "speed": NO_SPEED,
            }
        )
        log(f"sparsity {zeros / total:.1%}; compressed state_dict {zip_before} -> {zip_after} bytes; {NO_SPEED}")
        report = StepReport(
            technique=self.name, params=dict(params), notes=notes, seconds=time.perf_counter() - started
        )
        return pruned, report


TECHNIQUE = UnstructuredPruning()
