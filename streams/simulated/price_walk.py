"""Prices that move by themselves (`price_step_interval`, `price_volatility`).

A market that never moves never tests a stop. Each step is a seeded random walk over every
symbol, numbered by the step, and a step that crosses a stop triggers it like any move.
"""

from __future__ import annotations

from collections import Counter

from posguard.streams.simulated.knobs import FaultKnobs
from posguard.streams.simulated.matching import MatchingEngine
from posguard.streams.simulated.rng import KeyedRandom
from posguard.streams.simulated.scheduler import Scheduler

__all__ = ["PriceWalk"]


class PriceWalk:
    """One random-walk step for every symbol every `price_step_interval` seconds."""

    def __init__(
        self,
        *,
        knobs: FaultKnobs,
        calls: Counter[str],
        rng: KeyedRandom,
        scheduler: Scheduler,
        engine: MatchingEngine,
    ) -> None:
        self._knobs = knobs
        self._calls = calls
        self._rng = rng
        self._scheduler = scheduler
        self._engine = engine

    def start(self) -> None:
        self._scheduler.schedule(self._knobs.price_step_interval, self._step)

    def _step(self) -> None:
        step = self._calls["price_walk"]
        self._calls["price_walk"] += 1
        rng = self._rng("price", step)
        prices = self._engine.prices
        for symbol in list(prices):
            rules = self._engine.rules[symbol]
            moved = prices[symbol] * (1 + rng.gauss(0, self._knobs.price_volatility))
            self._engine.set_price(symbol, max(rules.price_tick, rules.round_price(moved)))
        self._scheduler.schedule(self._knobs.price_step_interval, self._step)
