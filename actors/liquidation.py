"""Where a position is liquidated, and whether a stop sits beyond it (issue 13, defect 10).

A stop beyond the liquidation price never fires: the venue liquidates first, at a worse price
and with a fee. `beyond_liquidation` is the one rule for "is this stop past it", used on every
entry before anything is sent (against an estimate from the symbol's leverage) and again once
the venue shows the position's own liquidation price (`Position.liq_price`).
"""

from __future__ import annotations

from posguard.streams.venue.events import OrderSide

__all__ = ["beyond_liquidation", "estimated_liquidation_price"]


def estimated_liquidation_price(side: OrderSide, price: float, leverage: float, maintenance_margin: float) -> float:
    """Isolated-margin estimate for a position opened at ``price``: the margin (1/leverage of
    the notional) is gone, less the maintenance margin the venue keeps back. Venues differ in
    fees and tiers; the venue's own figure is checked again once the position is visible."""
    loss = 1 / leverage - maintenance_margin
    return price * (1 - loss) if side == "buy" else price * (1 + loss)


def beyond_liquidation(side: OrderSide, stop_price: float, liq_price: float) -> bool:
    """True when the stop would trigger only after the liquidation: below it for a long,
    above it for a short (a stop exactly at it is liquidated too)."""
    return stop_price <= liq_price if side == "buy" else stop_price >= liq_price
