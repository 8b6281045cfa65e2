"""Plain-JSON encoding of the agent's dataclasses, for the server <-> job-process pipe and the result files.

Generic over frozen dataclasses, enums, tuples and optionals, so a new field in `agent.types` needs no
code here. Decoding is strict: unknown keys and wrong types raise ValueError (the child's output is not
trusted blindly either).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (tuple, list)):
        if obj and type(obj[0]) is int and all(type(v) is int for v in obj):
            return list(obj)  # latency samples: no per-element recursion
        return [to_jsonable(v) for v in obj]
    return obj


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_jsonable(tp: Any, data: Any) -> Any:
    """Decode `data` as type `tp` (a dataclass, enum, tuple[...], X | None, or a scalar)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return from_jsonable(members[0], data)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(data, list):
            raise ValueError(f"expected a list for {tp}, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            if args[0] is int and all(type(v) is int for v in data):
                return tuple(data)  # latency samples: up to a million, checked in one pass
            return tuple(from_jsonable(args[0], v) for v in data)
        if len(args) != len(data):
            raise ValueError(f"expected {len(args)} items for {tp}, got {len(data)}")
        return tuple(from_jsonable(a, v) for a, v in zip(args, data, strict=True))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ValueError(f"expected an object for {tp.__name__}, got {type(data).__name__}")
        hints = _hints(tp)
        unknown = set(data) - set(hints)
        if unknown:
            raise ValueError(f"unknown fields for {tp.__name__}: {sorted(unknown)}")
        try:
            return tp(**{k: from_jsonable(hints[k], v) for k, v in data.items()})
        except TypeError as exc:  # a required field is missing
            raise ValueError(f"{tp.__name__}: {exc}") from None
    if tp is float:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return float(data)
        raise ValueError(f"expected float, got {type(data).__name__}")
    if tp in (int, str, bool):
        if type(data) is not tp:
            raise ValueError(f"expected {tp.__name__}, got {type(data).__name__}")
        return data
    return data


def decode(tp: type[T], data: Any) -> T:
    value: T = from_jsonable(tp, data)
    return value
