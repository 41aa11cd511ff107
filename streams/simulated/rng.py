"""The simulated venue's random decisions, each from its own seeded generator.

Every random decision is drawn from an RNG derived from the seed and a stable key (the client
order id, the call number), so a run is reproducible whatever order concurrent tasks happen
to run in.
"""

from __future__ import annotations

import random

__all__ = ["KeyedRandom"]


class KeyedRandom:
    """A fresh generator per (purpose, key), the same one every run for the same seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, purpose: str, key: object) -> random.Random:
        return random.Random(f"{self.seed}:{purpose}:{key}")
