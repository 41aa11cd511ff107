"""A stop that triggered but did not fill: the rules, and the close it calls for.

A venue can refuse the market order a stop triggers, or trigger it on another price than the
one that crossed (a spike, freqtrade#12984): the stop stays armed, the position open, the
market past the stop. posguard's stop-fill watch (`posguard.supervisor.stop_fill_watch`)
keeps time and reads the price; what is watched (`is_watched`), what "past the stop" means
(`stop_crossed`) and what is done about it (`close_unfilled_stop`, run by the symbol's actor)
are decided here.
"""

from __future__ import annotations

from posguard.actors.context import ActorContext
from posguard.actors.findings import Finding
from posguard.actors.lifecycle.protection import describe_outcome, emergency_close, read_position
from posguard.actors.records import BadRecord, PositionRecord, State, is_protected, open_size
from posguard.streams.venue.events import OrderSide

__all__ = ["close_unfilled_stop", "is_watched", "stop_crossed"]


def is_watched(record: PositionRecord) -> bool:
    """A position that its stop is trusted to end: protected, and no close of ours under way."""
    return record.state in (State.PROTECTED, State.UNVERIFIED) and is_protected(record)


def stop_crossed(side: OrderSide, stop_price: float, price: float) -> bool:
    """Whether the market at ``price`` is at or through the stop of an entry on ``side``: a
    stop that should have fired, or (for an entry not yet sent) one on the wrong side."""
    return price <= stop_price if side == "buy" else price >= stop_price


async def close_unfilled_stop(ctx: ActorContext, finding: Finding) -> str:
    """The price has stayed past the stop for the whole timeout (``finding.seen`` says how
    far and how long): unless the stop filled meanwhile, close the position reduce-only and
    alert. The record is read again here, in the actor: it may have moved on while queued."""
    try:
        record = await ctx.store.load_record(finding.symbol)
    except BadRecord as exc:
        return f"not closed: the record became unusable ({exc}); the audit guards the symbol"
    if record is None or record.intent_id != finding.intent_id or not is_watched(record):
        now = f"{record.state}, intent {record.intent_id}" if record is not None else "gone"
        return f"the record is {now} now; nothing to do"
    if read_position(ctx.board.position(record.symbol), record) == "flat":
        return "the venue pushed the position flat: the stop filled after all"
    record.reason = f"the stop did not fill: {finding.seen}, and the position is not seen closed"
    outcome = await emergency_close(ctx, record, open_size(record))
    return describe_outcome(outcome)
