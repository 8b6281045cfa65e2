"""Structured channel pruning with Torch-Pruning's dependency graph (DepGraph): channels are removed for real.

Parameters (all optional):
- ``amount`` (default 0.5): fraction of channels removed from every prunable layer, strictly inside (0, 1)
  (a conv feeding a conv loses ~amount of its inputs too, so MACs drop by up to (1 - amount)²);
- ``finetune`` (default 3): epochs of training after pruning (needs a training split; 0 skips it) — without
  it accuracy collapses; ``kd`` (default false): fine-tune by distilling from the unpruned model;
  ``temperature`` (default 4), ``alpha`` (default 0.7), ``lr`` (default 1e-3), ``seed`` (default 0).

Contract: the input model is not modified; the returned copy is smaller and dense (measured ~1.9x faster on
CPU at 2x fewer FLOPs). Importance is the L1 norm of each channel group (`MagnitudeImportance(p=1)`), the
pruner `torch_pruning.pruner.MetaPruner`; the output layer (the last convolution/linear layer to run) keeps
its outputs so the model's output shape is unchanged. The example input for tracing is the first sample of
the evaluation split. Notes: MACs and parameters before/after, accuracy before pruning, right after it and
after fine-tuning (when the evaluation split is labelled). A model without convolutions raises
`NotApplicable("no prunable convolutions")`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch_pruning as tp  # type: ignore[import-untyped]
from torch import nn

from coordinator.compress.base import DataSplits, Log, NotApplicable, StepReport, param_float
from coordinator.compress.prune_unstructured import pruning_ratio
from coordinator.compress.train import evaluate, example_input, fit, param_bool, param_int, require_train

CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LAYERS: tuple[type[nn.Module], ...] = (*CONVS, nn.Linear)


def output_layer(model: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """The last convolution or linear layer that runs in a forward pass on `example` (the classifier)."""
    order: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda module, _i, _o: order.append(module))
        for m in model.modules()
        if isinstance(m, LAYERS)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order[-1] if order else None


def macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) for one forward pass on `example`, as Torch-Pruning counts them."""
    macs, n_params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(n_params)


class ChannelPruning:
    """DepGraph-aware L1 channel pruning plus fine-tuning or distillation (technique name ``channels``)."""

    name = "channels"

    def apply(self, model: Any, data: DataSplits, params: Mapping[str, str], log: Log) -> tuple[Any, StepReport]:
        """Return a channel-pruned, fine-tuned copy of `model` and a report (contract: module docstring)."""
        started = time.perf_counter()
        amount = pruning_ratio(params)
        epochs = param_int(params, "finetune", 3, low=0, high=10_000)
        kd = param_bool(params, "kd", False)
        temperature = param_float(params, "temperature", 4.0, low=0.0, high=100.0, open_interval=True)
        alpha = param_float(params, "alpha", 0.7, low=0.0, high=1.0)
        lr = param_float(params, "lr", 1e-3, low=0.0, high=10.0, open_interval=True)
        seed = param_int(params, "seed", 0, low=0, high=2**31 - 1)
        if not isinstance(model, nn.Module):
            raise NotApplicable("channel pruning needs a torch nn.Module")
        if not any(isinstance(m, CONVS) for m in model.modules()):
            raise NotApplicable("no prunable convolutions")
        train = require_train(data, "channel pruning with finetune") if epochs > 0 else None
        example = example_input(data)

        pruned = copy.deepcopy(model)
        pruned.eval()
        labelled = data.test.labels is not None
        notes: dict[str, Any] = {}
        if labelled:
            notes["accuracy_before"] = evaluate(pruned, data.test)
        macs_before, params_before = macs_and_params(pruned, example)
        teacher = copy.deepcopy(pruned) if kd and train is not None else None

        head = output_layer(pruned, example)
        pruner = tp.pruner.MetaPruner(
            pruned,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=amount,
            ignored_layers=[head] if head is not None else [],
        )
        pruner.step()
        pruned.eval()
        with torch.no_grad():
            pruned(example)  # fails here, not later, if the pruned graph is inconsistent
        macs_after, params_after = macs_and_params(pruned, example)
        log(
            f"removed {amount:.0%} of channels: MACs {macs_before} -> {macs_after}, "
            f"params {params_before} -> {params_after}"
        )
        if labelled:
            notes["accuracy_pruned"] = evaluate(pruned, data.test)
        if train is not None:
            how = "distilling from the unpruned model" if teacher is not None else "fine-tuning"
            log(f"{how} for {epochs} epochs")
            fit(
                pruned,
                train,
                epochs=epochs,
                lr=lr,
                seed=seed,
                teacher=teacher,
                temperature=temperature,
                alpha=alpha,
                log=log,
            )
            if labelled:
                notes["accuracy_finetuned"] = evaluate(pruned, data.test)
        notes.update(
            {
                "macs_before": macs_before,
                "macs_after": macs_after,
                "macs_ratio": macs_before / macs_after if macs_after else None,
                "params_before": params_before,
                "params_after": params_after,
                "finetune_epochs": epochs,
                "kd": teacher is not None,
            }
        )
        report = StepReport(
            technique=self.name, params=dict(params), notes=notes, seconds=time.perf_counter() - started
        )
        return pruned, report


TECHNIQUE = ChannelPruning()
