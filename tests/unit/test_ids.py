"""Object IDs are swarmkit's: the 128 random bits in base36, 25 characters, leading zeros kept."""

from __future__ import annotations

import random

from shoal.ids import new_id


class Fixed(random.Random):
    """Hands out the given 128-bit numbers."""

    def __init__(self, values: list[int]) -> None:
        super().__init__(0)
        self.values = values

    def getrandbits(self, k: int) -> int:
        assert k == 128
        return self.values.pop(0)


def base36(n: int) -> str:
    digits = ""
    for _ in range(25):
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    return digits


def test_ids_are_the_random_bits_in_base36() -> None:
    rng = random.Random(7)
    values = [0, 1, 35, 36, 2**128 - 1, *(rng.getrandbits(128) for _ in range(1000))]
    fixed = Fixed(list(values))
    for n in values:
        got = new_id(fixed)
        assert len(got) == 25
        assert got == base36(n)
        assert int(got, 36) == n
    assert new_id(Fixed([2**128 - 1])) == "f5lxx1zz5pnorynqglhzmsp33"
