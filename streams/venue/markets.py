"""What a venue accepts for a symbol, and how close two quantities must be to count as equal.

`QTY_TOLERANCE` is the one tolerance for comparing quantities anywhere in posguard (filled
against asked, exits against held, stop cover against size): quantities are floats built from
venue steps, so exact equality would call a fully closed position "still open" over a rounding
error.
"""

from __future__ import annotations

import math

import msgspec

__all__ = ["MAX_STEPS", "QTY_TOLERANCE", "MarketRules"]

QTY_TOLERANCE = 1e-9
"""Two quantities closer than this are the same quantity."""

STEP_ROUNDING_GUARD = 1e-9
"""Added to ``qty / step`` before flooring, so 0.3 / 0.1 = 2.9999999999999996 is 3 steps."""

MAX_STEPS = 10**15
"""The most steps (or ticks) a quantity (or price) may count when the venue names no maximum:
far beyond any real order, and small enough that ``steps * step`` is still an exact float."""


class MarketRules(msgspec.Struct, frozen=True, kw_only=True):
    """What the venue accepts for one symbol. Checked before anything is sent (I7)."""

    symbol: str
    qty_step: float
    min_qty: float
    price_tick: float
    min_notional: float = 0.0
    max_qty: float = 0.0
    """The venue's largest order quantity (ccxt ``limits.amount.max``); 0: the venue names none."""

    @property
    def largest_qty(self) -> float:
        """The largest quantity one order may carry: the venue's maximum, or `MAX_STEPS` steps."""
        return self.max_qty if self.max_qty > 0 else self.qty_step * MAX_STEPS

    @property
    def largest_price(self) -> float:
        """The largest price that can be rounded to the tick: `MAX_STEPS` ticks."""
        return self.price_tick * MAX_STEPS

    def round_qty(self, qty: float) -> float:
        """Round *down* to the step: never send more than was asked for."""
        steps = math.floor(qty / self.qty_step + STEP_ROUNDING_GUARD)
        return _clean(steps * self.qty_step, self.qty_step)

    def round_price(self, price: float) -> float:
        steps = round(price / self.price_tick)
        return _clean(steps * self.price_tick, self.price_tick)


def _clean(value: float, step: float) -> float:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return round(value, decimals + 2)
