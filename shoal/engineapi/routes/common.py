"""What every handler uses: the node and manager of a request, query parameters as dockerd reads them,
filters, JSON answers."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from shoal.api import messages as M
from shoal.engineapi.convert._wire import parse_go_time
from shoal.engineapi.gojson import cannot_unmarshal, go_json_decode, go_json_unmarshal
from shoal.engineapi.nodeapi import NodeAPI
from shoal.engineapi.server import (
    NODE_KEY,
    json_response,
)
from shoal.errors import InvalidArgument, ShoalError
from shoal.manager.manager import Manager
from shoal.model.objects import Task
from shoal.store.memory import ReadTx

# --- helpers ------------------------------------------------------------------------------------


def node_of(request: web.Request) -> NodeAPI:
    return request.app[NODE_KEY]


def manager_of(request: web.Request) -> Manager:
    return node_of(request).require_manager()


def param(request: web.Request, name: str) -> str:
    return str(request["params"][name])


def qbool(request: web.Request, name: str, default: bool = False) -> bool:
    v = request.query.get(name)
    if v is None:
        return default
    return v.lower() in ("1", "true", "yes")


_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def go_bool(raw: str) -> bool | None:
    """Go's strconv.ParseBool: the value, or None when it is not one of the spellings Go accepts."""
    return True if raw in _GO_TRUE else False if raw in _GO_FALSE else None


def qbool_strict(request: web.Request, name: str, message: str) -> bool:
    """A boolean query parameter dockerd parses with strconv.ParseBool and refuses (400) when it is not one;
    `message` is dockerd's text for the refusal ({value} is the raw value). Absent or empty: false."""
    raw = request.query.get(name, "")
    if raw == "":
        return False
    v = go_bool(raw)
    if v is None:
        raise InvalidArgument(message.format(value=raw))
    return v


_UINT_RE = re.compile(r"[0-9]+")


def qversion(request: web.Request, kind: str = "service") -> int:
    """`?version=`, parsed as dockerd's strconv.ParseUint(raw, 10, 64): digits only (no sign, no spaces), at most
    2^64-1. `kind` names the object in the refusal, as dockerd's handler does."""
    raw = request.query.get("version", "")
    if _UINT_RE.fullmatch(raw) is None:
        raise InvalidArgument(M.invalid_version(raw, kind))
    n = int(raw)
    if n >= 2**64:
        raise InvalidArgument(M.version_out_of_range(raw, kind))
    return n


async def read_json(request: web.Request) -> Any:
    body = await request.read()
    if not body.strip():
        raise InvalidArgument(M.EMPTY_BODY)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(M.invalid_json("invalid UTF-8 in request body")) from None
    # Go's json.Decoder reads one value and ignores what follows it, as dockerd does.
    value, _ = go_json_decode(text, len(text) - len(text.lstrip()))
    return value


def _filters_as_sets(data: dict[str, Any]) -> str:
    """Go's first error reading `data` as map[string]map[string]bool (the filters' own form), or ""."""
    for v in data.values():
        if v is None:
            continue
        if not isinstance(v, dict):
            return cannot_unmarshal(v, "map[string]bool")
        for on in v.values():
            if on is not None and not isinstance(on, bool):
                return cannot_unmarshal(on, "bool")
    return ""


def _filters_as_lists(data: dict[str, Any]) -> bool:
    """Whether `data` reads as map[string][]string (the legacy form of filters)."""
    return all(v is None or (isinstance(v, list) and all(x is None or isinstance(x, str) for x in v))
               for v in data.values())


def parse_filters(request: web.Request, accepted: set[str]) -> dict[str, list[str]]:
    """`?filters=` as dockerd's filters.FromJSON reads it: JSON of map[string]map[string]bool, or the legacy
    map[string][]string; what is neither is refused with Go's json.Unmarshal message (that of the first
    form), as dockerd 20.10 relays it. Then every key must be one of `accepted`."""
    raw = request.query.get("filters")
    if not raw:
        return {}
    data = go_json_unmarshal(raw)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidArgument(cannot_unmarshal(data, "map[string]map[string]bool"))
    error = _filters_as_sets(data)
    if error and not _filters_as_lists(data):
        raise InvalidArgument(error)
    out: dict[str, list[str]] = {}
    for k, v in data.items():
        if k not in accepted:
            raise InvalidArgument(f"invalid filter '{k}'")
        if isinstance(v, dict):
            out[k] = [kk for kk, on in v.items() if on]
        else:
            out[k] = [x or "" for x in v or []]
    return out


def match_labels(labels: dict[str, str] | Any, wanted: list[str]) -> bool:
    for w in wanted:
        if "=" in w:
            k, v = w.split("=", 1)
            if labels.get(k) != v:
                return False
        elif w not in labels:
            return False
    return True


def prefix_any(value: str, prefixes: list[str]) -> bool:
    return any(value.startswith(p) for p in prefixes)


def task_name(t: Task, v: ReadTx) -> str:
    svc_name = t.service_annotations.name
    middle = str(t.slot) if t.slot else t.node_id
    return f"{svc_name}.{middle}.{t.id}"


def json_ok(data: Any, status: int = 200) -> web.Response:
    return json_response(data, status=status)


def parse_ts(raw: str | None, error: type[ShoalError] = InvalidArgument) -> float | None:
    """A `since`/`until` value as Go's timetypes reads it; what it cannot read is refused with `error`."""
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        try:
            return parse_go_time(raw)
        except Exception:
            # Go's timetypes.ParseTimestamps: what is no date is read as seconds[.nanoseconds].
            sec = raw.split(".", 1)[0]
            raise error(f'strconv.ParseInt: parsing "{sec}": invalid syntax') from None
