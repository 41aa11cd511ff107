"""Delay distributions for the fake venue's fault knobs.

Exchange lag is not a constant: most position-list updates land within half a second, and a
few take many seconds under load. The seed's bot assumed a constant (sleep 1 s) and lost. A
`Lag` is sampled per event, so tests and benchmarks see the heavy tail the seed met.
"""

from __future__ import annotations

import random

import msgspec

__all__ = ["Lag"]


class Lag(msgspec.Struct, frozen=True, kw_only=True):
    """Uniform ``[low, high]`` seconds, except that with probability ``tail_p`` the delay is
    uniform ``[tail_low, tail_high]`` instead (the slow tail)."""

    low: float = 0.0
    high: float = 0.0
    tail_p: float = 0.0
    tail_low: float = 0.0
    tail_high: float = 0.0

    @classmethod
    def fixed(cls, seconds: float) -> Lag:
        return cls(low=seconds, high=seconds)

    @classmethod
    def realistic_position_list(cls) -> Lag:
        """Most updates within 0.5 s, 2 % taking 5-15 s (the seed's 1 s + 5 s gives up first)."""
        return cls(low=0.05, high=0.5, tail_p=0.02, tail_low=5.0, tail_high=15.0)

    def sample(self, rng: random.Random) -> float:
        if self.tail_p and rng.random() < self.tail_p:
            return rng.uniform(self.tail_low, self.tail_high)
        if self.high <= self.low:
            return self.low
        return rng.uniform(self.low, self.high)
