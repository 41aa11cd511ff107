"""Where a position is liquidated, and whether a stop sits beyond it (issue 13, defect 10).

A stop beyond the liquidation price never fires: the venue liquidates first, at a worse price
and with a fee. `beyond_liquidation` is the one rule for "is this stop past it", used on every
entry before anything is sent (against `estimated_liquidation_price` from the symbol's leverage,
in `posguard.streams.venue.liquidation`, where the simulated venues estimate it too) and again once
the venue shows the position's own liquidation price (`Position.liq_price`).
"""

from __future__ import annotations

from posguard.streams.venue.events import OrderSide

__all__ = ["beyond_liquidation"]


def beyond_liquidation(side: OrderSide, stop_price: float, liq_price: float) -> bool:
    """True when the stop would trigger only after the liquidation: below it for a long,
    above it for a short (a stop exactly at it is liquidated too)."""
    return stop_price <= liq_price if side == "buy" else stop_price >= liq_price
