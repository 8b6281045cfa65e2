"""The recipe language of `--variants`: which techniques to apply, in which order, with which parameters.

    recipes  := recipe (',' recipe)*            e.g.  fp32,prune:0.5,channels:0.5+int8,int8:calib=entropy
    recipe   := step ('+' step)*               steps run left to right
    step     := name (':' arg (';' arg)*)?      e.g.  channels:0.5;finetune=3
    arg      := key '=' value | value          a bare value sets the technique's main parameter

Techniques (main parameter in brackets): fp32 (the model as given), prune [amount], channels [amount],
distill [width], int8 [calib], int8dyn, fp16. Torch steps (prune, channels, distill) must come before
ONNX steps (int8, int8dyn, fp16): the model is exported to ONNX once, between them. Errors point at the
offending token with a caret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from coordinator.compress.base import RecipeError

#: name -> (stage, main parameter). Stage "torch" runs on the nn.Module, "onnx" on the exported file.
TECHNIQUES: dict[str, tuple[str, str]] = {
    "fp32": ("none", ""),
    "prune": ("torch", "amount"),
    "channels": ("torch", "amount"),
    "distill": ("torch", "width"),
    "int8": ("onnx", "calib"),
    "int8dyn": ("onnx", ""),
    "fp16": ("onnx", ""),
}
#: Lazy import paths of the technique objects (one module per technique).
MODULES: dict[str, str] = {
    "prune": "coordinator.compress.prune_unstructured",
    "channels": "coordinator.compress.prune_channels",
    "distill": "coordinator.compress.distill",
    "int8": "coordinator.compress.int8_static",
    "int8dyn": "coordinator.compress.int8_dynamic",
    "fp16": "coordinator.compress.fp16",
}
_NAME = re.compile(r"[a-z][a-z0-9]*")
_KEY = re.compile(r"[a-z_][a-z0-9_]*")
_VALUE = re.compile(r"[A-Za-z0-9_.:\-]+")


@dataclass(frozen=True)
class Step:
    technique: str
    params: tuple[tuple[str, str], ...] = ()

    @property
    def stage(self) -> str:
        return TECHNIQUES[self.technique][0]

    def text(self) -> str:
        if not self.params:
            return self.technique
        return f"{self.technique}:" + ";".join(f"{k}={v}" for k, v in self.params)


@dataclass(frozen=True)
class Recipe:
    steps: tuple[Step, ...]

    @property
    def name(self) -> str:
        """Canonical text (explicit keys): the variant's name and part of its cache key."""
        return "+".join(s.text() for s in self.steps)

    @property
    def is_baseline(self) -> bool:
        return self.steps == (Step("fp32"),)


def _error(source: str, position: int, message: str) -> RecipeError:
    return RecipeError(f"{message}\n  {source}\n  {' ' * position}^")


def parse_recipe(text: str, *, offset: int = 0, source: str | None = None) -> Recipe:
    source = text if source is None else source
    if not text.strip():
        raise _error(source, offset, "empty recipe")
    steps: list[Step] = []
    position = offset
    for raw in text.split("+"):
        steps.append(_parse_step(raw, position, source))
        position += len(raw) + 1
    stages = [s.stage for s in steps]
    if "none" in stages and len(steps) > 1:
        raise _error(source, offset, "fp32 is the unmodified model and cannot be combined with other steps")
    if "onnx" in stages:
        first_onnx = stages.index("onnx")
        if "torch" in stages[first_onnx:]:
            bad = first_onnx + stages[first_onnx:].index("torch")
            at = offset + sum(len(p) + 1 for p in text.split("+")[:bad])
            raise _error(
                source,
                at,
                f"{steps[bad].technique} works on the PyTorch model and must come before "
                f"{steps[first_onnx].technique} (ONNX steps run after export)",
            )
    return Recipe(tuple(steps))


def _parse_step(raw: str, position: int, source: str) -> Step:
    if not raw:
        raise _error(source, position, "empty step (two '+' in a row, or a '+' at an end)")
    name, _, arg_text = raw.partition(":")
    if not _NAME.fullmatch(name):
        raise _error(source, position, f"{name!r} is not a technique name")
    if name not in TECHNIQUES:
        raise _error(source, position, f"unknown technique {name!r}; known: {', '.join(TECHNIQUES)}")
    main = TECHNIQUES[name][1]
    params: dict[str, str] = {}
    if ":" in raw:
        at = position + len(name) + 1
        if not arg_text:
            raise _error(source, at, f"{name}: expected parameters after ':'")
        for arg in arg_text.split(";"):
            key, eq, value = arg.partition("=")
            if not eq:
                key, value = main, arg
                if not main:
                    raise _error(source, at, f"{name} takes no main parameter; use key=value")
            if not _KEY.fullmatch(key):
                raise _error(source, at, f"{key!r} is not a parameter name")
            if not _VALUE.fullmatch(value):
                raise _error(source, at + len(arg) - len(value), f"bad value {value!r} for {key}")
            if key in params:
                raise _error(source, at, f"{name}: parameter {key} given twice")
            params[key] = value
            at += len(arg) + 1
    return Step(name, tuple(sorted(params.items())))


def parse_recipes(text: str) -> list[Recipe]:
    """Comma-separated recipes (the `--variants` option). Duplicates (by canonical name) are dropped."""
    recipes: dict[str, Recipe] = {}
    position = 0
    for part in text.split(","):
        stripped = part.strip()
        recipe = parse_recipe(stripped, offset=position + part.index(stripped) if stripped else position, source=text)
        recipes.setdefault(recipe.name, recipe)
        position += len(part) + 1
    return list(recipes.values())
