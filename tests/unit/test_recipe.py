"""The recipe language of --variants: parsing, canonical names, and errors that point at the token."""

from __future__ import annotations

import pytest

from coordinator.compress.base import RecipeError
from coordinator.compress.recipe import parse_recipe, parse_recipes


def test_canonical_names_and_chains() -> None:
    recipes = parse_recipes("fp32, prune:0.5,channels:0.5+int8,int8:per_channel=false;calib=entropy,fp16")
    assert [r.name for r in recipes] == [
        "fp32",
        "prune:amount=0.5",
        "channels:amount=0.5+int8",
        "int8:calib=entropy;per_channel=false",
        "fp16",
    ]
    assert recipes[0].is_baseline and not recipes[1].is_baseline
    assert [s.stage for s in recipes[2].steps] == ["torch", "onnx"]


def test_duplicates_are_dropped() -> None:
    assert [r.name for r in parse_recipes("int8,int8:calib=minmax,int8")] == ["int8", "int8:calib=minmax"]


@pytest.mark.parametrize(
    ("text", "message", "caret_at"),
    [
        ("channels:0.5++int8", "empty step", 13),
        ("fp32,bogus", "unknown technique 'bogus'", 5),
        ("int8+channels:0.5", "must come before int8", 5),
        ("fp32+int8", "fp32 is the unmodified model", 0),
        ("fp16:0.3", "fp16 takes no main parameter", 5),
        ("prune:amount=0.5;amount=0.3", "given twice", 17),
        ("prune:", "expected parameters after ':'", 6),
        ("prune:amount=0.5<x", "bad value", 13),
        ("", "empty recipe", 0),
    ],
)
def test_errors_point_at_the_token(text: str, message: str, caret_at: int) -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipes(text)
    lines = str(err.value).splitlines()
    assert message in lines[0]
    assert lines[1].strip() == text.strip() or text == ""
    assert lines[2].index("^") - 2 == caret_at  # two spaces of indentation before the echoed recipe


def test_single_recipe_api() -> None:
    assert parse_recipe("distill:width=0.25").steps[0].params == (("width", "0.25"),)
