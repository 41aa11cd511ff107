"""A position's liquidation price, estimated from its entry and leverage.

The simulated venue and the Bybit emulator report a liquidation price with each position
(`Position.liq_price`), as a real venue does; both estimate it here, the same way, so a test
on either venue sees the same number. Isolated margin on a linear contract: the position is
liquidated when its loss has eaten the initial margin (1 / leverage of its value) down to the
maintenance margin.
"""

from __future__ import annotations

from posguard.streams.venue.events import PositionSide

__all__ = ["DEFAULT_LEVERAGE", "MAINTENANCE_MARGIN_RATE", "estimated_liquidation_price"]

DEFAULT_LEVERAGE = 10.0
"""Bybit's default leverage for a linear perpetual, and the emulator's only one."""
MAINTENANCE_MARGIN_RATE = 0.005
"""Bybit's lowest risk tier for the large linear perpetuals (0.5 % of the position's value)."""


def estimated_liquidation_price(side: PositionSide, entry_price: float, leverage: float) -> float | None:
    """Where a ``side`` position entered at ``entry_price`` with ``leverage`` is liquidated;
    None for a flat position (there is nothing to liquidate)."""
    if side == "flat" or entry_price <= 0:
        return None
    distance = 1.0 / leverage - MAINTENANCE_MARGIN_RATE
    return entry_price * (1.0 - distance if side == "long" else 1.0 + distance)
