"""Persistence codec: domain dataclasses <-> plain JSON-able values, driven by the type hints.

This is the format of the write-ahead log and snapshots (not the Engine API's wire format, which has
its own converters in shoal.engineapi.convert). Unknown keys are ignored on decode and missing keys
take the dataclass default, so a newer Shoal reads an older one's data. A value equal to its field's default
is left out when that default is `None`, an empty tuple or an empty mapping.

Only what every replica can read back is written: a float that is not finite (NaN, infinities: JSON has no
literal for them, and orjson writes them as null) raises `Unencodable` (an InvalidArgument, 400 at the API)
instead of entering the log, where it would stop every follower that replays it.

Encoders and decoders are built once per type from its hints (closures over the field list), because the
reflective walk per value dominated the manager's write path.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin

from shoal.errors import InvalidArgument
from shoal.model import objects

T = TypeVar("T")
Conv = Callable[[Any], Any] | None  # None: the value is already JSON-able as it is


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(objects))


class Unencodable(InvalidArgument):
    """A value the log cannot hold as it is (a float that is not finite)."""


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        raise Unencodable(f"invalid value {v!r}: the cluster store holds finite numbers only (JSON has no "
                          f"NaN or Infinity)")
    return v


def _encode_any(value: Any) -> Any:
    """Encoding of untyped values (JSON pass-through, or a caller handing in any object)."""
    if isinstance(value, float):
        return _finite(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encoder_for(type(value))(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode()}
    if isinstance(value, tuple | list):
        return [_encode_any(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _encode_any(v) for k, v in value.items()}
    return value


def _value_encoder(tp: Any) -> Conv:
    if tp is Any or tp is objects.JSON:
        return _encode_any
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _value_encoder(args[0]) if len(args) == 1 else _encode_any
    if origin is tuple:
        item_enc = _value_encoder(get_args(tp)[0])
        if item_enc is None:
            return list
        return lambda v: [item_enc(x) for x in v]
    if origin in (Mapping, dict, typing.Mapping):
        inner = _value_encoder(get_args(tp)[1])
        if inner is None:
            return dict
        return lambda v: {k: inner(x) for k, x in v.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _encoder_for(tp)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return lambda v: v.value
    if tp is bytes:
        return lambda v: {"$b": base64.b64encode(v).decode()}
    if tp is float:
        return _finite
    return None


def _omit_test(f: dataclasses.Field[Any]) -> str | None:
    """How an encoder tells that a field's value is left out: only when it is the field's default and that is
    `None` or empty, so decoding (which gives a missing field its default) reads back the same value; a field
    whose default is anything else is always written (an empty `default_addr_pool` must not come back as
    ("10.0.0.0/8",))."""
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        return None
    if default is None:
        return "v is None"
    if default == ():
        return "v == ()"
    if isinstance(default, Mapping) and not default:
        return "isinstance(v, Mapping) and not v"
    return None


# Sub-objects that many objects share by identity (every task of a service holds the service's task
# template and endpoint): their encoding is remembered by identity, which is safe because objects are
# frozen and the memo keeps each one alive (so its id is not reused). Bounded; cleared whole. Only types
# that are shared, or one-off objects (each task's own Annotations) would flush the useful entries.
_SHARED = frozenset({"TaskSpec", "Endpoint", "ServiceSpec"})
_MEMO_LIMIT = 4096
_memo: dict[int, tuple[Any, dict[str, Any]]] = {}


def _memoized(enc: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    memo = _memo

    def menc(obj: Any) -> dict[str, Any]:
        hit = memo.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        out = enc(obj)
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[id(obj)] = (obj, out)
        return out

    return menc


@cache
def _encoder_for(cls: type) -> Callable[[Any], dict[str, Any]]:
    """An encoder generated for `cls` (one straight-line function, no loop over the fields)."""
    hints = _hints(cls)
    env: dict[str, Any] = {"Mapping": Mapping}
    lines = ["def enc(obj):", "    out = {}"]
    for i, f in enumerate(dataclasses.fields(cls)):
        tp = hints[f.name]
        conv = _value_encoder(tp)
        dc = _dataclass_of(tp)
        if dc is not None and dc.__name__ in _SHARED:
            conv = _memoized(_encoder_for(dc))
        value = "v"
        if conv is not None:
            env[f"c{i}"] = conv
            value = f"c{i}(v)"
        lines.append(f"    v = obj.{f.name}")
        omit = _omit_test(f)
        if omit is None:
            lines.append(f"    out[{f.name!r}] = {value}")
        else:
            lines.append(f"    if not ({omit}):")
            lines.append(f"        out[{f.name!r}] = {value}")
    lines.append("    return out")
    exec("\n".join(lines), env)
    enc: Callable[[Any], dict[str, Any]] = env["enc"]
    return enc


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field holds (`X` or `X | None`), if it holds one."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _value_decoder(tp: Any) -> Conv:
    if tp is Any or tp is objects.JSON:
        return None
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        opt_dec = _value_decoder(args[0])
        if opt_dec is None:
            return None
        return lambda v: None if v is None else opt_dec(v)
    if origin is tuple:
        item_dec = _value_decoder(get_args(tp)[0])
        if item_dec is None:
            return tuple
        return lambda v: tuple(item_dec(x) for x in v)
    if origin in (Mapping, dict, typing.Mapping):
        inner = _value_decoder(get_args(tp)[1])
        if inner is None:
            return dict
        return lambda v: {k: inner(x) for k, x in v.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decoder_for(tp)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp
    if tp is bytes:
        return lambda v: base64.b64decode(v["$b"])
    if tp is float:
        return float
    return None


@cache
def _decoder_for(cls: type) -> Callable[[Any], Any]:
    hints = _hints(cls)
    plan = {f.name: _value_decoder(hints[f.name]) for f in dataclasses.fields(cls)}

    def dec(raw: Any) -> Any:
        kwargs = {}
        for name, v in raw.items():
            if name not in plan:
                continue  # a field from a newer version
            conv = plan[name]
            kwargs[name] = v if conv is None else conv(v)
        return cls(**kwargs)

    return dec


def encode(value: Any) -> Any:
    return _encode_any(value)


def decode(tp: Any, raw: Any) -> Any:
    conv = _value_decoder(tp)
    return raw if conv is None else conv(raw)


def decode_as(cls: type[T], raw: Any) -> T:
    result: T = _decoder_for(typing.cast(Any, cls))(raw)
    return result
