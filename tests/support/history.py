"""Engine API operations recorded into a linearizability history (shoal/testing/linearizability.py).

Two kinds of objects are exercised through whichever manager a client picks:
- configs by name, in the `Objects` model: `create` (201 -> True, 409 -> False), `read` (200 -> present, 404 ->
  absent);
- a register: the label `n` of one service, written with its version (`update`, unique values) and read back.
Any other answer, a timeout or a dropped connection, leaves the operation's effect unknown (`info`), which the
checker may place anywhere after its invocation or nowhere; a refusal that certainly changed nothing (out of
sequence, 503 before anything was proposed is *not* certain) is a `fail`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from shoal.testing.linearizability import History, KeySpace, Model, Objects, Register
from tests.support.shoal_node import ShoalNode

REGISTER = "service-label"
OUT_OF_SEQUENCE = "update out of sequence"


def model() -> Model[Any]:
    return KeySpace(Objects(), per_key={REGISTER: Register(initial="0")})


def _call(n: ShoalNode, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = json.dumps(body).encode() if body is not None else None
    try:
        return n.api(method, path, raw)
    except OSError as e:  # socket gone (kill -9) or the 30 s client timeout
        return 0, str(e)


def create_config(h: History, client: str, n: ShoalNode, name: str) -> int:
    op = h.invoke(client, "create", f"config/{name}")
    status, _ = _call(n, "POST", "/v1.47/configs/create",
                      {"Name": name, "Data": base64.b64encode(name.encode()).decode()})
    if status == 201:
        h.ok(op, True)
    elif status == 409:
        h.ok(op, False)
    else:
        h.info(op)
    return status


def read_config(h: History, client: str, n: ShoalNode, name: str) -> int:
    op = h.invoke(client, "read", f"config/{name}")
    status, _ = _call(n, "GET", f"/v1.47/configs/{name}")
    if status == 200:
        h.ok(op, True)
    elif status == 404:
        h.ok(op, None)
    else:
        h.info(op)  # a read that failed tells nothing; it cannot be wrong
    return status


def write_label(h: History, client: str, n: ShoalNode, service: str, value: str) -> int:
    """Read-modify-write of the label with the version read: a register write that applies or is refused."""
    status, svc = _call(n, "GET", f"/v1.47/services/{service}")
    if status != 200:
        return status
    spec = svc["Spec"]
    spec["Labels"] = {**spec.get("Labels", {}), "n": value}
    op = h.invoke(client, "write", REGISTER, value)
    status, body = _call(n, "POST", f"/v1.47/services/{service}/update?version={svc['Version']['Index']}", spec)
    if status == 200:
        h.ok(op)
    elif isinstance(body, dict) and OUT_OF_SEQUENCE in str(body.get("message", "")):
        h.fail(op)  # refused by the version check: nothing changed
    else:
        h.info(op)
    return status


def read_label(h: History, client: str, n: ShoalNode, service: str) -> int:
    op = h.invoke(client, "read", REGISTER)
    status, svc = _call(n, "GET", f"/v1.47/services/{service}")
    if status == 200:
        h.ok(op, svc["Spec"].get("Labels", {}).get("n", "0"))
    else:
        h.info(op)
    return status


__all__ = ["REGISTER", "create_config", "model", "read_config", "read_label", "write_label"]
