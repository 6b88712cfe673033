"""Placement constraints, parsed and matched the way swarmkit's manager/constraint does.

Syntax: `key == value` or `key != value`. Keys: node.id, node.hostname, node.role, node.platform.os,
node.platform.arch, node.ip (an address or a CIDR), node.labels.<key>, engine.labels.<key>. Keys are
case-insensitive, label names are case-sensitive, values compare case-insensitively. An unknown key parses
(swarmkit accepts it) but matches no node, so such a task stays pending with a constraints message.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shoal.errors import InvalidArgument
from shoal.model.objects import Node

NODE_LABEL_PREFIX = "node.labels."
ENGINE_LABEL_PREFIX = "engine.labels."
OPERATORS = ("==", "!=")

_KEY = re.compile(r"[a-z_][a-z0-9\-_.]+", re.IGNORECASE)
# No operators (present or future: <, >, ~...) may appear in a value.
_VALUE = re.compile(r"[a-z0-9:\-_\s.*()?+\[\]\\^$|/]+", re.IGNORECASE)

_Getter = Callable[[Node], str]

_FIELDS: dict[str, _Getter] = {
    "node.id": lambda n: n.id,
    "node.hostname": lambda n: n.description.hostname,
    "node.role": lambda n: n.role,
    "node.platform.os": lambda n: n.description.platform.os,
    "node.platform.arch": lambda n: n.description.platform.architecture,
}


def _label_getter(key: str) -> _Getter | None:
    low = key.lower()
    if len(key) > len(NODE_LABEL_PREFIX) and low.startswith(NODE_LABEL_PREFIX):
        name = key[len(NODE_LABEL_PREFIX):]
        return lambda n: n.spec.annotations.labels.get(name, "")
    if len(key) > len(ENGINE_LABEL_PREFIX) and low.startswith(ENGINE_LABEL_PREFIX):
        name = key[len(ENGINE_LABEL_PREFIX):]
        return lambda n: n.description.engine.labels.get(name, "")
    return None


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    equal: bool  # True for ==, False for !=
    value: str

    def matches(self, node: Node) -> bool:
        low = self.key.lower()
        if low == "node.ip":
            return self._match_ip(node.status.addr)
        getter = _FIELDS.get(low) or _label_getter(self.key)
        if getter is None:
            return False  # key outside the known syntax: never satisfied, whatever the operator
        # a missing field or label compares as "": == fails, != matches
        return (getter(node).casefold() == self.value.casefold()) == self.equal

    def _match_ip(self, addr: str) -> bool:
        try:
            node_ip = ipaddress.ip_address(addr)
        except ValueError:
            node_ip = None
        try:
            if "/" in self.value:
                net = ipaddress.ip_network(self.value, strict=False)
                hit = node_ip is not None and node_ip.version == net.version and node_ip in net
            else:
                hit = node_ip is not None and node_ip == ipaddress.ip_address(self.value)
        except ValueError:
            return False  # malformed address or network: rejects every node
        return hit == self.equal

    def __str__(self) -> str:
        return f"{self.key}{'==' if self.equal else '!='}{self.value}"


def parse_constraint(expr: str) -> Constraint:
    for op in OPERATORS:
        if op not in expr:
            continue
        left, right = expr.split(op, 1)
        key = left.strip()
        if not _KEY.fullmatch(key):
            raise InvalidArgument(f"key '{key}' is invalid")
        value = right.strip()
        if not _VALUE.fullmatch(value):
            raise InvalidArgument(f"value '{value}' is invalid")
        return Constraint(key, op == "==", value)
    raise InvalidArgument(f"constraint expected one operator from {', '.join(OPERATORS)}")


def parse_constraints(exprs: Iterable[str]) -> list[Constraint]:
    """Parse every expression; the first invalid one raises InvalidArgument with swarmkit's text."""
    return [parse_constraint(e) for e in exprs]


def matches_all(constraints: Iterable[Constraint], node: Node) -> bool:
    return all(c.matches(node) for c in constraints)
