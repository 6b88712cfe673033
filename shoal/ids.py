"""Object IDs the way swarmkit makes them: 25 characters of base36 from 128 random bits."""

from __future__ import annotations

import random

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


# Two base36 digits at a time: 13 divisions instead of 25 (every task's creation makes an ID).
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def new_id(rng: random.Random) -> str:
    n = rng.getrandbits(128)
    pairs = _PAIRS
    out = []
    for _ in range(13):
        n, r = divmod(n, 1296)
        out.append(pairs[r])
    return "".join(out[::-1])[1:]  # 26 digits; 36**25 > 2**128, so the first is always 0


def new_hex_id(rng: random.Random, nbytes: int = 32) -> str:
    return "".join(f"{rng.getrandbits(8):02x}" for _ in range(nbytes))
