"""Knowledge distillation: train a smaller student from the input model (the teacher), with a no-KD baseline.

Parameters (all optional):
- ``width`` (default 0.5) in (0, 1]: the student is the teacher's family at this width — built by
  ``teacher.with_width(width)`` if the model has that method, else ``type(teacher)(width=width)`` if its
  class takes a ``width`` argument;
- ``student=package.module:factory``: instead, import the module and call ``factory()`` (no arguments);
- ``epochs`` (default 10), ``temperature`` (default 4), ``alpha`` (default 0.7), ``lr`` (default 1e-3),
  ``seed`` (default 0).

Contract: needs a labelled training split (`RecipeError` otherwise). The teacher is not modified. The
student is built twice from the same seed (identical initial weights): one copy is trained with the Hinton
distillation loss (`train.distillation_loss`), the other with plain cross-entropy, same data order and
epochs, so the notes compare like with like (published gain of KD: +0.3 to 2 points). The KD student is
returned. A teacher with no way to build a student raises `NotApplicable`; a student whose output shape
differs from the teacher's raises `RecipeError`.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from coordinator.compress.base import DataSplits, Log, NotApplicable, RecipeError, StepReport, param_float
from coordinator.compress.train import count_params, evaluate, example_input, fit, param_int, require_train

NO_STUDENT = "distillation needs a student: the model's class has no width parameter; pass student=module:factory"


def _accepts_width(cls: type) -> bool:
    try:
        return "width" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def student_factory(teacher: nn.Module, params: Mapping[str, str]) -> Callable[[], nn.Module]:
    """A no-argument function building a fresh student (see the module docstring for the rules)."""
    spec = params.get("student")
    if spec is not None:
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise RecipeError(f"parameter student={spec!r} must look like package.module:factory")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise RecipeError(f"parameter student={spec!r}: cannot import {module_name}: {exc}") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise RecipeError(f"parameter student={spec!r}: {module_name} has no callable {attr!r}")
        return factory  # type: ignore[no-any-return]
    raw = params.get("width", "0.5")
    try:
        width = float(raw)
    except ValueError:
        raise RecipeError(f"parameter width={raw!r} is not a number: it must be in (0, 1]") from None
    if not 0.0 < width <= 1.0:
        raise RecipeError(f"parameter width={raw} must be in (0, 1]")
    with_width = getattr(teacher, "with_width", None)
    if callable(with_width):
        return lambda: with_width(width)
    cls = type(teacher)
    if _accepts_width(cls):
        return lambda: cls(width=width)
    raise NotApplicable(NO_STUDENT)


def _build(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = factory()
    if not isinstance(student, nn.Module):
        raise RecipeError(f"the student factory returned {type(student).__name__}, not a torch nn.Module")
    return student


class Distillation:
    """Hinton knowledge distillation into a narrower student (technique name ``distill``)."""

    name = "distill"

    def apply(self, model: Any, data: DataSplits, params: Mapping[str, str], log: Log) -> tuple[Any, StepReport]:
        """Return the distilled student and a report comparing it with the teacher and a no-KD student."""
        started = time.perf_counter()
        epochs = param_int(params, "epochs", 10, low=1, high=10_000)
        temperature = param_float(params, "temperature", 4.0, low=0.0, high=100.0, open_interval=True)
        alpha = param_float(params, "alpha", 0.7, low=0.0, high=1.0)
        lr = param_float(params, "lr", 1e-3, low=0.0, high=10.0, open_interval=True)
        seed = param_int(params, "seed", 0, low=0, high=2**31 - 1)
        if not isinstance(model, nn.Module):
            raise NotApplicable("distillation needs a torch nn.Module teacher")
        factory = student_factory(model, params)
        train = require_train(data, "distillation")

        teacher = model
        teacher_was_training = teacher.training
        student = _build(factory, seed)
        baseline = _build(factory, seed)
        example = example_input(data)
        teacher.eval()
        student.eval()
        with torch.no_grad():
            t_shape, s_shape = tuple(teacher(example).shape), tuple(student(example).shape)
        if t_shape != s_shape:
            raise RecipeError(f"the student's output shape {list(s_shape)} differs from the teacher's {list(t_shape)}")
        try:
            log(
                f"distilling into a student with {count_params(student)} parameters "
                f"(teacher {count_params(teacher)}), {epochs} epochs, T={temperature}, alpha={alpha}"
            )
            fit(
                student,
                train,
                epochs=epochs,
                lr=lr,
                seed=seed,
                teacher=teacher,
                temperature=temperature,
                alpha=alpha,
                log=log,
            )
            log("training the same student without distillation for comparison")
            fit(baseline, train, epochs=epochs, lr=lr, seed=seed, log=log)
        finally:
            teacher.train(teacher_was_training)

        notes: dict[str, Any] = {
            "student": params.get("student") or f"{type(teacher).__name__} at width {params.get('width', '0.5')}",
            "teacher_params": count_params(teacher),
            "student_params": count_params(student),
            "epochs": epochs,
            "temperature": temperature,
            "alpha": alpha,
        }
        if data.test.labels is not None:
            notes["teacher_accuracy"] = evaluate(teacher, data.test)
            notes["student_kd_accuracy"] = evaluate(student, data.test)
            notes["student_no_kd_accuracy"] = evaluate(baseline, data.test)
            notes["kd_gain"] = notes["student_kd_accuracy"] - notes["student_no_kd_accuracy"]
            log(
                f"accuracy: teacher {notes['teacher_accuracy']:.4f}, student with KD "
                f"{notes['student_kd_accuracy']:.4f}, without KD {notes['student_no_kd_accuracy']:.4f}"
            )
        report = StepReport(
            technique=self.name, params=dict(params), notes=notes, seconds=time.perf_counter() - started
        )
        return student, report


TECHNIQUE = Distillation()
