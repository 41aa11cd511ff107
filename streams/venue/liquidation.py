"""A position's liquidation price, estimated from its entry, leverage and maintenance margin.

One estimate for everyone who needs one before the venue says: intake refuses a stop beyond it
(`posguard.supervisor.risk`), and the simulated venue and the Bybit emulator report it with
each position (`Position.liq_price`) as a real venue does, so a test on either venue sees the
same number. Isolated margin on a linear contract: the position is liquidated when its loss
has eaten the initial margin (1 / leverage of its value) down to the maintenance margin.
Venues differ in fees and tiers; the venue's own figure is checked again once it is visible.
"""

from __future__ import annotations

from posguard.streams.venue.events import PositionSide

__all__ = ["DEFAULT_LEVERAGE", "MAINTENANCE_MARGIN_RATE", "estimated_liquidation_price"]

DEFAULT_LEVERAGE = 10.0
"""Bybit's default leverage for a linear perpetual: the emulator's only one, and the simulated
venue's for every symbol until a test sets another (`FakeVenue.set_leverage`)."""
MAINTENANCE_MARGIN_RATE = 0.005
"""Bybit's lowest risk tier for the large linear perpetuals (0.5 % of the position's value)."""


def estimated_liquidation_price(side: PositionSide, entry_price: float, leverage: float,
                                maintenance_margin: float = MAINTENANCE_MARGIN_RATE) -> float:
    """Where a ``side`` position entered at ``entry_price`` with ``leverage`` is liquidated."""
    if side == "flat":
        raise ValueError("a flat position has no liquidation price")
    loss = 1.0 / leverage - maintenance_margin
    return entry_price * (1.0 - loss if side == "long" else 1.0 + loss)
