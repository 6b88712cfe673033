"""Typed access to decoded Engine API JSON, with dockerd's decoding behaviour and error texts.

dockerd decodes request bodies with Go's encoding/json into typed structs: unknown keys are ignored, keys
match field names case-insensitively (exact match preferred), `null` means "absent", and a value of the
wrong type fails the whole request with 400 and a message such as

    invalid JSON: json: cannot unmarshal string into Go struct field
    ReplicatedService.Mode.Replicated.Replicas
    of type uint64

`Obj` reproduces that: each accessor names the Go type it stands for, so the message names the same struct,
path and type as dockerd's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from shoal.errors import InvalidArgument

_INT_RANGES: dict[str, tuple[int, int]] = {
    "int": (-(2**63), 2**63 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint64": (0, 2**64 - 1),
    "uint32": (0, 2**32 - 1),
    "uint16": (0, 2**16 - 1),
    "os.FileMode": (0, 2**32 - 1),
    "time.Duration": (-(2**63), 2**63 - 1),
}


def _json_kind(v: Any, *, with_value: bool = False) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return f"number {_go_number(v)}" if with_value else "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _go_number(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return "1e+309" if v > 0 else "-1e+309"  # a literal past float64's range (Python reads it as infinity)
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    return repr(v)


def unmarshal_error(
    value: Any, struct: str, path: str, gotype: str, *, with_value: bool = False
) -> InvalidArgument:
    kind = _json_kind(value, with_value=with_value)
    if struct:
        where = f"Go struct field {struct}.{path}" if path else f"Go value of type {struct}"
        return InvalidArgument(f"invalid JSON: json: cannot unmarshal {kind} into {where} of type {gotype}")
    return InvalidArgument(f"invalid JSON: json: cannot unmarshal {kind} into Go value of type {gotype}")


class Obj:
    """A JSON object being decoded into the Go struct `struct` found at `path` from the body's root."""

    __slots__ = ("_d", "_lower", "path", "struct")

    def __init__(self, data: Mapping[str, Any], struct: str, path: str = "") -> None:
        self._d = data
        self._lower: dict[str, str] | None = None
        self.struct = struct
        self.path = path

    @classmethod
    def root(cls, data: Any, struct: str) -> Obj:
        if data is None:
            return cls({}, struct)
        if not isinstance(data, dict):
            raise unmarshal_error(data, "", "", f"{_pkg(struct)}.{struct}")
        return cls(data, struct)

    # -- lookup --------------------------------------------------------------------------------------

    def _key(self, name: str) -> str | None:
        if name in self._d:
            return name
        if self._lower is None:
            self._lower = {}
            for k in self._d:
                self._lower.setdefault(k.lower(), k)
        return self._lower.get(name.lower())

    def get(self, name: str) -> Any:
        k = self._key(name)
        return None if k is None else self._d[k]

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def _p(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def err(self, name: str, value: Any, gotype: str, *, with_value: bool = False) -> InvalidArgument:
        return unmarshal_error(value, self.struct, self._p(name), gotype, with_value=with_value)

    # -- scalars -------------------------------------------------------------------------------------

    def string(self, name: str, default: str = "") -> str:
        v = self.get(name)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.err(name, v, "string")
        return v

    def opt_str(self, name: str) -> str | None:
        return None if self.get(name) is None else self.string(name)

    def boolean(self, name: str, default: bool = False) -> bool:
        v = self.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.err(name, v, "bool")
        return v

    def opt_bool(self, name: str) -> bool | None:
        return None if self.get(name) is None else self.boolean(name)

    def integer(self, name: str, gotype: str = "int64", default: int = 0) -> int:
        v = self.get(name)
        if v is None:
            return default
        return self._int(name, v, gotype)

    def _int(self, name: str, v: Any, gotype: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.err(name, v, gotype)
        lo, hi = _INT_RANGES.get(gotype, (-(2**63), 2**63 - 1))
        if isinstance(v, float):
            if not math.isfinite(v) or v != int(v):
                raise self.err(name, v, gotype, with_value=True)
        n = int(v)
        if n < lo or n > hi:
            raise self.err(name, v, gotype, with_value=True)
        return n

    def opt_int(self, name: str, gotype: str = "int64") -> int | None:
        v = self.get(name)
        return None if v is None else self._int(name, v, gotype)

    def number(self, name: str, gotype: str = "float32", default: float = 0.0) -> float:
        v = self.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.err(name, v, gotype)
        limit = 3.4028234663852886e38 if gotype == "float32" else 1.7976931348623157e308
        if not abs(v) <= limit:  # a literal past the Go type's range (Python reads 1e400 as infinity)
            raise self.err(name, v, gotype, with_value=True)
        return float(v)

    # -- containers ----------------------------------------------------------------------------------

    def str_list(self, name: str, gotype: str = "[]string") -> tuple[str, ...]:
        v = self.get(name)
        if v is None:
            return ()
        if not isinstance(v, list):
            raise self.err(name, v, gotype)
        for x in v:
            if not isinstance(x, str):
                raise self.err(name, x, "string")
        return tuple(v)

    def str_map(self, name: str) -> dict[str, str]:
        v = self.get(name)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self.err(name, v, "map[string]string")
        for x in v.values():
            if not isinstance(x, str):
                raise self.err(name, x, "string")
        return dict(v)

    def opt_str_map(self, name: str) -> dict[str, str] | None:
        return None if self.get(name) is None else self.str_map(name)

    def obj(self, name: str, struct: str) -> Obj | None:
        v = self.get(name)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise self.err(name, v, f"{_pkg(struct)}.{struct}")
        return Obj(v, struct, self._p(name))

    def objs(self, name: str, struct: str) -> Iterator[Obj]:
        v = self.get(name)
        if v is None:
            return
        if not isinstance(v, list):
            raise self.err(name, v, f"[]{_pkg(struct)}.{struct}")
        for x in v:
            if x is None:
                yield Obj({}, struct, self._p(name))
                continue
            if not isinstance(x, dict):
                raise self.err(name, x, f"{_pkg(struct)}.{struct}")
            yield Obj(x, struct, self._p(name))

    def raw(self, name: str) -> Any:
        return self.get(name)


_PKG = {
    "HealthConfig": "container",
    "Ulimit": "container",
    "Mount": "mount",
    "BindOptions": "mount",
    "VolumeOptions": "mount",
    "TmpfsOptions": "mount",
    "Driver": "swarm",
    "IPAM": "network",
    "IPAMConfig": "network",
    "CreateRequest": "network",
    "ConfigReference": "network",
}


def _pkg(struct: str) -> str:
    return _PKG.get(struct, "swarm")


# --- output helpers --------------------------------------------------------------------------------


def go_time(ts: float) -> str:
    """RFC 3339 with nanoseconds and trailing zeros trimmed, in UTC ('Z'), as Go's time.Time marshals.

    0 is Go's zero time, "0001-01-01T00:00:00Z".
    """
    if ts == 0:
        return "0001-01-01T00:00:00Z"
    secs = math.floor(ts)
    frac = round((ts - secs) * 1_000_000_000)  # ts - secs is exact; multiplying ts itself loses digits
    if frac >= 1_000_000_000:
        secs, frac = secs + 1, frac - 1_000_000_000
    base = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        base += "." + f"{frac:09d}".rstrip("0")
    return base + "Z"


def parse_go_time(s: str) -> float:
    """Inverse of go_time (accepts any RFC 3339 offset)."""
    if s.startswith("0001-01-01T00:00:00"):
        return 0.0
    main, _, rest = s.partition(".")
    frac = ""
    tz = ""
    if rest:
        i = 0
        while i < len(rest) and rest[i].isdigit():
            i += 1
        frac, tz = rest[:i], rest[i:]
    else:
        main, tz = s[:19], s[19:]
    if tz in ("Z", "z", ""):
        tz = "+00:00"
    dt = datetime.fromisoformat(main + tz)
    return dt.timestamp() + (int(frac.ljust(9, "0")[:9]) / 1e9 if frac else 0.0)


def version(index: int) -> dict[str, int]:
    """Go's Version{Index} with `omitempty` on Index: {} for 0."""
    return {"Index": index} if index else {}


def meta(m: Any) -> dict[str, Any]:
    return {
        "Version": version(m.version),
        "CreatedAt": go_time(m.created_at),
        "UpdatedAt": go_time(m.updated_at),
    }


def put(d: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` unless the value is Go-empty (omitempty): "", 0, False, None, [], {}."""
    if (
        value is None
        or value is False
        or value == ""
        or value == 0
        or value == []
        or value == {}
        or value == ()
    ):
        return
    if isinstance(value, tuple):
        value = list(value)
    d[key] = value
