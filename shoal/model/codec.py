"""Persistence codec: domain dataclasses <-> plain JSON-able values, driven by the type hints.

This is the format of the write-ahead log and snapshots (not the Engine API's wire format, which has
its own converters in shoal.engineapi.convert). Unknown keys are ignored on decode and missing keys
take the dataclass default, so a newer Shoal reads an older one's data.
"""

from __future__ import annotations

import base64
import dataclasses
import types
import typing
from collections.abc import Mapping
from enum import Enum
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin

from shoal.model import objects

T = TypeVar("T")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(objects))


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if v is None or v == () or (isinstance(v, Mapping) and not v):
                continue
            out[f.name] = encode(v)
        return out
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode()}
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        return {k: encode(v) for k, v in value.items()}
    return value


def decode(tp: Any, raw: Any) -> Any:
    if tp is Any or tp is objects.JSON:
        return raw
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if raw is None:
            return None
        return decode(args[0], raw)
    if origin is tuple:
        (inner, _) = get_args(tp)
        return tuple(decode(inner, v) for v in raw)
    if origin in (Mapping, dict, typing.Mapping):
        _, vt = get_args(tp)
        return {k: decode(vt, v) for k, v in raw.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in raw:
                kwargs[f.name] = decode(hints[f.name], raw[f.name])
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(raw)
    if tp is bytes:
        return base64.b64decode(raw["$b"])
    if tp is float and isinstance(raw, int):
        return float(raw)
    return raw


def decode_as(cls: type[T], raw: Any) -> T:
    result: T = decode(cls, raw)
    return result
