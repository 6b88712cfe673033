"""Names for services created without one: `adjective_noun`, as dockerd's namesgenerator (ours uses fish)."""

from __future__ import annotations

import random

_ADJECTIVES = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lively", "merry", "nimble",
               "proud", "quiet", "rapid", "sharp", "swift", "tender", "vivid", "witty", "zealous")
_NOUNS = ("anchovy", "barracuda", "carp", "dolphin", "eel", "flounder", "grouper", "halibut", "marlin", "minnow",
          "mackerel", "perch", "pike", "salmon", "sardine", "shark", "sturgeon", "trout", "tuna", "wrasse")


def random_service_name(rng: random.Random) -> str:
    return f"{rng.choice(_ADJECTIVES)}_{rng.choice(_NOUNS)}"
