"""What the simulated venue really holds, for tests to judge by.

The actor's record is what posguard believes; the ground truth is what is so. Tests and the
demo assert the invariants (I1 no false rollback, I2 always protected) against this, never
against the record, and never against the lagged REST views that posguard itself reads.
"""

from __future__ import annotations

from collections import Counter

from posguard.streams.venue.events import Execution, Order, Position, closing_side
from posguard.streams.venue.markets import QTY_TOLERANCE

__all__ = ["GroundTruth"]


class GroundTruth:
    """What is really on the venue, for tests to assert against. Never lags, never lies."""

    def __init__(self) -> None:
        self.positions: dict[str, Position] = {}
        self.orders: dict[str, Order] = {}  # by client order id (or venue id when it has none)
        self.executions: list[Execution] = []
        self.entries_filled: Counter[str] = Counter()  # symbol -> fills that opened or added
        self.unprotected_since: dict[str, float] = {}
        self.unprotected_windows: list[tuple[str, float, float]] = []

    def position(self, symbol: str) -> Position | None:
        position = self.positions.get(symbol)
        return position if position is not None and position.is_open else None

    def open_stops(self, symbol: str) -> list[Order]:
        return [
            o for o in self.orders.values() if o.symbol == symbol and o.kind == "stop" and o.status == "open"
        ]

    def open_take_profits(self, symbol: str) -> list[Order]:
        """Armed take-profit orders (never protection: `is_protected` does not count them)."""
        return [
            o for o in self.orders.values() if o.symbol == symbol and o.kind == "take_profit" and o.status == "open"
        ]

    def is_protected(self, symbol: str) -> bool:
        """An open position is protected when a stop would close all of it."""
        position = self.position(symbol)
        if position is None:
            return True
        if position.stop_price is not None:
            return True
        guarding = [o for o in self.open_stops(symbol) if o.side == closing_side(position.side)]
        if any(o.closes_position for o in guarding):
            return True  # a whole-position stop closes it at any size
        covering = sum(o.qty for o in guarding)
        return covering >= position.size - QTY_TOLERANCE

    def unprotected_now(self) -> list[str]:
        return sorted(s for s in self.positions if not self.is_protected(s))

    def unprotected_intervals(self, now: float) -> list[tuple[str, float, float]]:
        """Every stretch a position was open without a stop covering all of it, (symbol, start,
        end); one still under way ends ``now``."""
        running = [(symbol, start, now) for symbol, start in self.unprotected_since.items()]
        return [*self.unprotected_windows, *running]

    def max_unprotected_seconds(self, now: float) -> float:
        return max((end - start for _, start, end in self.unprotected_intervals(now)), default=0.0)
