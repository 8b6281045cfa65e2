"""The symbolic-size expressions of a `.pt2` program (`expr_str`), which torch hands to `sympy.sympify`, i.e.
Python `eval`: `check_sym_expr` lets through plain arithmetic over size symbols and allow-listed sympy/torch
size functions only (no attributes, subscripts, other calls or huge constants). Used by
`agent.runtimes.pt2_guard`; `refuse` is the error both modules raise for a hostile archive.
"""

from __future__ import annotations

import ast
import re

from agent.runtimes.base import ModelLoadError

MAX_EXPR_CHARS = 4096

_SYMBOL = re.compile(r"^[a-z]{1,8}[0-9]+$")

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


def refuse(what: str) -> ModelLoadError:
    """The error for a `.pt2` that is refused: what was found, then how to make an acceptable one."""
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
        raise refuse(f"a symbolic expression is {len(expr)} characters long")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise refuse(f"symbolic expression {expr[:120]!r} is not plain arithmetic") from None
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
            raise refuse(f"symbolic expression {expr[:120]!r} contains {bad}")
