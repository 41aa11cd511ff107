"""A take-profit kept as its own order, where the venue attaches none to the entry (Binance).

Protection comes first, never the other way round (I2): the take-profit is placed only once
the record says its stop is live (`is_protected`), so a position is never holding a
take-profit without a stop. Where the venue attaches one to the entry (Bybit's ``takeProfit``
with ``tpslMode=Full``, `Venue.supports_attached_stop`) there is nothing to place here: the
position holds it, and it goes with the position.

The order is a reduce-only TAKE_PROFIT_MARKET for the whole position (Binance
``closePosition=true`` through the algo-order API, "New Algo Order":
https://developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api/New-Algo-Order),
its client order id written ahead like a stop's (`place_stop`), sent once (`send_once`).

A take-profit that cannot be placed leaves the position as it was: protected by its stop. It
is an alert and a reason on the record, never a close: the take-profit is the strategy's
wish for a better exit, the stop is what guards it. Which fills were the take-profit's, and so
whether a record ends ``closed_by_take_profit``, is `proof.take_profit_qty`'s to say.
"""

from __future__ import annotations

import logging

from posguard.actors import ids
from posguard.actors.context import ActorContext
from posguard.actors.orders import send_once
from posguard.actors.records import PositionRecord, State, is_protected, open_size
from posguard.streams.backoff import Deadline
from posguard.streams.venue.errors import OrderRejected, StopSlotTaken, StopWouldTrigger
from posguard.streams.venue.events import closing_side, position_side_of
from posguard.streams.venue.protocol import StopRequest

__all__ = ["arm_take_profit", "attached_take_profit_seen", "needs_take_profit_order"]

log = logging.getLogger("posguard.actor")


def attached_take_profit_seen(ctx: ActorContext, record: PositionRecord) -> bool | None:
    """Whether the venue's position, as last pushed, shows the take-profit attached to the
    entry (Bybit's position ``takeProfit``): True, False (a snapshot since the entry shows the
    position without it), or None (no take-profit asked for, or nothing pushed to tell)."""
    if not record.take_profit or not ctx.venue.supports_attached_stop:
        return None
    position = ctx.board.position(record.symbol)
    if position is None or not position.is_open or position.ts_ms < record.sent_ms:
        return None
    rules = ctx.rules.get(record.symbol)
    tick = rules.price_tick if rules is not None else 0.0
    return position.take_profit is not None and abs(position.take_profit - record.take_profit) <= tick / 2


def needs_take_profit_order(ctx: ActorContext, record: PositionRecord) -> bool:
    """Whether the record's take-profit is still to be placed as its own order: it asked for
    one, the venue attached none to the entry, none was placed yet, and the stop is live
    (protection first)."""
    return (bool(record.take_profit) and not ctx.venue.supports_attached_stop
            and not record.take_profit_client_order_id
            and record.state is State.PROTECTED and is_protected(record))


async def arm_take_profit(ctx: ActorContext, record: PositionRecord, *, attempt: int = 1) -> bool:
    """Place the record's take-profit after its stop (`needs_take_profit_order`); True when the
    venue answered it armed. Its id is written ahead (I5); ``attempt``: its number (an amend's
    new take-profit takes the next one)."""
    if not needs_take_profit_order(ctx, record):
        return False
    coid = ids.take_profit_id(ctx.account, record.intent_id, attempt)
    record.take_profit_client_order_id = coid
    qty = open_size(record)
    await ctx.save(record, f"placing take-profit {coid} at {record.take_profit} (the stop is live)")
    request = StopRequest(symbol=record.symbol, side=closing_side(position_side_of(record.side)), qty=qty,
                          stop_price=record.take_profit, client_order_id=coid, whole_position=True, take_profit=True)
    why = ""
    try:
        order = await send_once(ctx, record, coid, lambda: ctx.venue.place_stop(request),
                                Deadline(ctx.settings.protection.stop_deadline))
    except StopSlotTaken as exc:
        # One closePosition take-profit per direction: one is armed already (an earlier attempt
        # whose answer was lost is under this very id, so this is another's): it is not ours to
        # replace. Left as it is, and said.
        why = f"the venue holds a whole-position take-profit already: {exc.reason}"
        order = None
    except StopWouldTrigger as exc:
        why = f"the market is already past the take-profit: {exc.reason}"
        order = None
    except OrderRejected as exc:
        why = f"take-profit rejected: {exc.reason}"
        order = None
    if order is not None and order.status == "open":
        await ctx.save(record, f"take-profit {coid} live at {record.take_profit}")
        return True
    if order is not None and order.filled > 0:
        # It triggered as soon as it was placed: an exit, settled from the executions by the
        # flat push that follows (`repairs.follow_venue`) or by the audit.
        log.info("%s: take-profit %s filled %s as soon as it was placed", record.symbol, coid, order.filled)
        return False
    why = why or "its outcome is still unknown at the deadline"
    record.reason = f"take-profit not placed ({why}); the position keeps its stop"
    await ctx.save(record)
    await ctx.alert(record.symbol, f"take-profit {coid} at {record.take_profit} not placed: {why};"
                                   " the position is protected by its stop only")
    return False
