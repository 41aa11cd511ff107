"""The venue's own liquidation price, checked once the position is visible (issue 13, defect 10).

The entry was checked against an estimate (the symbol's leverage, the price at intake); the
fill may come at another price, or the venue may count margin differently. A stop the venue's
`Position.liq_price` shows to be beyond liquidation would never fire, so it is tightened to
halfway between the mark price and the liquidation price (an alert says so), and if no stop can
be placed there the position is closed, as any position that cannot be protected is (I2).
"""

from __future__ import annotations

import logging

from posguard.actors.context import ActorContext
from posguard.actors.lifecycle.protection import Protected, protect_with_stop_order
from posguard.actors.liquidation import beyond_liquidation
from posguard.actors.records import PositionRecord, open_size
from posguard.streams.venue.errors import VenueError
from posguard.streams.venue.events import Position

__all__ = ["recheck_liquidation"]

log = logging.getLogger("posguard.actor")


async def recheck_liquidation(ctx: ActorContext, record: PositionRecord, seen: Position | None) -> None:
    """Tighten (or close) a protected position whose stop the venue shows beyond its liquidation."""
    position = seen if seen is not None and seen.liq_price else ctx.board.position(record.symbol)
    if position is None or not position.is_open or not position.liq_price or position.ts_ms < record.sent_ms:
        return  # the venue has not said where it liquidates: the estimate at intake stands
    liq = position.liq_price
    if not beyond_liquidation(record.side, record.stop_price, liq):
        return
    reference = position.mark_price or position.entry_price
    rules = ctx.rules.get(record.symbol)
    raw = (reference + liq) / 2
    tightened = rules.round_price(raw) if rules is not None else raw
    old_stop, old_order = record.stop_price, record.stop_client_order_id
    await ctx.alert(record.symbol, f"stop {old_stop} is beyond the venue's liquidation price {liq}: it would never"
                                   f" fire; tightening it to {tightened}")
    record.stop_price = tightened
    if not isinstance(await protect_with_stop_order(ctx, record, open_size(record), replacing=True),
                      Protected):
        return  # an exit or a close, recorded as such
    record.reason = f"stop tightened from {old_stop} to {tightened}: beyond the venue's liquidation price {liq}"
    await ctx.save(record, record.reason)
    if old_order:
        try:
            await ctx.venue.cancel_order(record.symbol, old_order)
        except VenueError as exc:  # a reduce-only stop beyond liquidation never fires: harmless if left
            log.warning("%s: could not cancel the old stop %s (%s); it is beyond liquidation and never fires",
                        record.symbol, old_order, exc)
