"""Go's `encoding/json` as dockerd's decoder answers: the same refusals (NaN, nesting, integers) with the
same messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from shoal.api import messages as M
from shoal.errors import InvalidArgument


class _NonFinite(Exception):
    """A NaN/Infinity literal: JSON has none and Go's decoder refuses them as a syntax error."""


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


def _parse_int(s: str) -> int:
    if len(s) > 100:  # past any Go integer type (and Python's int-from-string digit limit)
        raise _TooLong(s)
    return int(s)


class _TooLong(Exception):
    pass


_GO_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_int=_parse_int)


def go_json_decode(text: str, start: int = 0) -> tuple[Any, int]:
    """One JSON value from `text[start:]` as Go's encoding/json reads it, or InvalidArgument with Go's message:
    Python's extensions (NaN, Infinity, -Infinity) are syntax errors, and nesting deeper than Python's parser
    recurses is refused with Go's "exceeded max depth" (Go's own limit is 10,000 levels; no Engine API type
    nests more than a few dozen, so what is refused here is never a body dockerd would act on)."""
    try:
        return _GO_DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise InvalidArgument(M.invalid_json(go_json_error(e))) from None
    except _NonFinite:
        raise InvalidArgument(M.invalid_json(_non_finite_error(text, start))) from None
    except RecursionError:
        raise InvalidArgument(M.invalid_json("exceeded max depth")) from None
    except _TooLong as e:
        raise InvalidArgument(M.invalid_json(f"json: cannot unmarshal number {e} into Go value of type int64")) \
            from None


def _outside_strings(doc: str, start: int, stop: int) -> Iterator[int]:
    """The positions in doc[start:stop] that are not inside a JSON string (the quotes themselves count as inside)."""
    in_str = esc = False
    for i in range(start, stop):
        c = doc[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        else:
            yield i


def _non_finite_error(doc: str, start: int) -> str:
    """Go's text for the first NaN/Infinity literal: the first capital N or I outside a string (true, false and
    null are lower case), after a minus sign a malformed number."""
    for i in _outside_strings(doc, start, len(doc)):
        c = doc[i]
        if c in "NI":
            if i > 0 and doc[i - 1] == "-":
                return f"invalid character '{c}' in numeric literal"
            return f"invalid character '{c}' looking for beginning of value"
    return "invalid character looking for beginning of value"


def _go_char(c: str) -> str:
    return {"'": "\\'", "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c, c)


def _innermost_container(doc: str, pos: int) -> str:
    """'{' or '[' : the innermost object or array open at `pos` (strings skipped)."""
    stack: list[str] = []
    for i in _outside_strings(doc, 0, pos):
        c = doc[i]
        if c in "[{":
            stack.append(c)
        elif c in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def go_json_error(e: json.JSONDecodeError) -> str:
    """The text Go's encoding/json gives for the syntax error Python's decoder reports."""
    doc, pos = e.doc, e.pos
    if pos >= len(doc) or e.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    ch = _go_char(doc[pos])
    if e.msg.startswith("Expecting property name"):
        return f"invalid character '{ch}' looking for beginning of object key string"
    if e.msg.startswith("Expecting value"):
        return f"invalid character '{ch}' looking for beginning of value"
    if e.msg.startswith("Expecting ':'"):
        return f"invalid character '{ch}' after object key"
    if e.msg.startswith("Expecting ','"):
        if _innermost_container(doc, pos) == "[":
            return f"invalid character '{ch}' after array element"
        return f"invalid character '{ch}' after object key:value pair"
    if e.msg.startswith("Invalid control character"):
        return f"invalid character '{ch}' in string literal"
    if e.msg.startswith("Invalid \\escape"):  # Python points at the backslash, Go at the character after it
        return f"invalid character '{_go_char(doc[pos + 1])}' in string escape code"
    return e.msg


_JSON_SPACE = " \t\r\n"


def go_json_unmarshal(text: str) -> Any:
    """`text` as Go's json.Unmarshal reads it: the whole text is one JSON value (what follows it is a syntax
    error too), or InvalidArgument with Go's bare message ("unexpected end of JSON input" where its decoder
    says "unexpected EOF")."""
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    if start == len(text):
        raise InvalidArgument("unexpected end of JSON input")
    try:
        value, end = go_json_decode(text, start)
    except InvalidArgument as e:
        said = e.message.removeprefix(M.invalid_json(""))
        raise InvalidArgument("unexpected end of JSON input" if said == "unexpected EOF" else said) from None
    rest = text[end:].lstrip(_JSON_SPACE)
    if rest:
        raise InvalidArgument(f"invalid character '{_go_char(rest[0])}' after top-level value")
    return value


def _go_kind(v: Any) -> str:
    """The JSON kind Go's UnmarshalTypeError names."""
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    if isinstance(v, str):
        return "string"
    if isinstance(v, bool):
        return "bool"
    return "number"


def cannot_unmarshal(v: Any, go_type: str) -> str:
    return f"json: cannot unmarshal {_go_kind(v)} into Go value of type {go_type}"
