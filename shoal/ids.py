"""Object IDs the way swarmkit makes them: 25 characters of base36 from 128 random bits."""

from __future__ import annotations

import random

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id(rng: random.Random) -> str:
    n = rng.getrandbits(128)
    out = []
    for _ in range(25):
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def new_hex_id(rng: random.Random, nbytes: int = 32) -> str:
    return "".join(f"{rng.getrandbits(8):02x}" for _ in range(nbytes))
