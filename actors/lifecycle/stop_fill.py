"""A stop that triggered but did not fill: the rules, and the close it calls for.

A venue can refuse the market order a stop triggers, or trigger it on another price than the
one that crossed (a spike, freqtrade#12984): the stop stays armed, the position open, the
market past the stop. posguard's stop-fill watch (`posguard.supervisor.stop_fill_watch`)
keeps time; what is watched (`is_watched`), which price counts (`market_price`), what "past
the stop" means (`stop_crossed`) and what is done about it (`close_unfilled_stop`, run by the
symbol's actor) are decided here.
"""

from __future__ import annotations

import logging

from posguard.actors.context import ActorContext
from posguard.actors.findings import Finding
from posguard.actors.lifecycle.protection import describe_outcome, emergency_close, read_position
from posguard.actors.records import BadRecord, PositionRecord, State, is_protected
from posguard.streams.venue.errors import VenueError

__all__ = ["close_unfilled_stop", "is_watched", "market_price", "stop_crossed"]

log = logging.getLogger("posguard.actor")


def is_watched(record: PositionRecord) -> bool:
    """A position that its stop is trusted to end: protected, and no close of ours under way."""
    return record.state in (State.PROTECTED, State.UNVERIFIED) and is_protected(record)


def stop_crossed(record: PositionRecord, price: float) -> bool:
    """Whether the market is at or past the record's stop (the side a stop-out happens on)."""
    return price <= record.stop_price if record.side == "buy" else price >= record.stop_price


async def market_price(ctx: ActorContext, symbol: str) -> float | None:
    """The freshest price there is: the mark price of the venue's last pushed position if it
    is less than half `ProtectionSettings.stop_fill_timeout` old, else one ticker read over
    REST. None if the venue gives none (not a price: nothing is decided from it)."""
    pushed = ctx.board.position(symbol)
    max_age_ms = ctx.settings.protection.stop_fill_timeout * 500
    if pushed is not None and pushed.mark_price is not None and ctx.venue.now_ms() - pushed.ts_ms <= max_age_ms:
        return pushed.mark_price
    try:
        return await ctx.venue.fetch_price(symbol)
    except VenueError as exc:  # unavailable, refused, a symbol gone: no price this time
        log.warning("%s: no price for the stop-fill watch (%s); looking again next time", symbol, exc)
        return None


async def close_unfilled_stop(ctx: ActorContext, finding: Finding) -> str:
    """The price has stayed past the stop for the whole timeout (``finding.seen`` says how
    far and how long): unless the stop filled meanwhile, close the position reduce-only and
    alert. Looked at again here, in the actor, because the record may have moved on."""
    try:
        record = await ctx.store.load_record(finding.symbol)
    except BadRecord as exc:
        return f"not closed: the record became unusable ({exc}); the audit guards the symbol"
    if record is None or not is_watched(record):
        return f"record is {record.state if record else 'gone'} now; nothing to do"
    if read_position(ctx.board.position(record.symbol), record) == "flat":
        return "the venue pushed the position flat: the stop filled after all"
    price = await market_price(ctx, record.symbol)
    if price is None or not stop_crossed(record, price):
        return f"price {price} is no longer past the stop {record.stop_price}; nothing to do"
    record.reason = f"the stop did not fill: {finding.seen}, and the position is not seen closed"
    outcome = await emergency_close(ctx, record, record.filled_qty or record.qty)
    return describe_outcome(outcome)
