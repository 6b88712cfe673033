"""Go's encoding/json messages for bad request bodies depend on where the error is outside JSON strings: the
scanners behind them (shoal.engineapi.gojson._outside_strings) must skip strings, escaped quotes included."""

from __future__ import annotations

import pytest

from shoal.engineapi.gojson import go_json_decode
from shoal.errors import InvalidArgument


@pytest.mark.parametrize(("body", "said"), [
    # NaN/Infinity: the first capital N or I outside a string, not the ones in a key or value before it.
    ('{"I":"-N", "x":NaN}', "invalid character 'N' looking for beginning of value"),
    ('{"x\\"I":1, "y":-Infinity}', "invalid character 'I' in numeric literal"),
    # A missing comma: the innermost container open at the error, brackets in strings not counted.
    ('["{", 1 2]', "invalid character '2' after array element"),
    ('{"a":"\\"[", "b":1 2}', "invalid character '2' after object key:value pair"),
])
def test_errors_are_placed_by_what_is_outside_strings(body: str, said: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        go_json_decode(body)
    assert str(e.value) == f"invalid JSON: {said}"
