"""The one rule of whether stops cover a venue position (I2): every caller asks here.

The audit (`posguard.actors.lifecycle.repairs.assess`: is the position unprotected, which of
our stops still guard it), the audit's repair (is the stop we placed live and enough, though
not yet listed), a quarantined symbol's guard: all of them decide through `covered_qty` and
`covers`, so they can never disagree about a position being protected.

What covers:

* a stop the position itself holds (`Position.stop_price`: Bybit's trading stop) covers all
  of it;
* an armed stop order on the closing side covers its ``qty``, except a whole-position stop
  (`Order.closes_position`, Binance ``closePosition=true``), which covers the position at any
  size: it closes whatever is open when it triggers, so a grown position needs no second stop.
"""

from __future__ import annotations

from collections.abc import Iterable

from posguard.actors.records import PositionRecord, is_protected
from posguard.streams.venue.events import Order, Position, closing_side
from posguard.streams.venue.markets import QTY_TOLERANCE

__all__ = ["armed_orders", "covered_qty", "covers", "guards", "record_stop_covers_any_size"]


def armed_orders(orders: Iterable[Order]) -> list[Order]:
    """The open orders the audit weighs: stops (which may cover a position) and take-profits
    (which never do, `guards`, but which a live record must own, or they are stale and
    cancelled like a stale stop: a reduce-only order left armed waits for the next position)."""
    return [o for o in orders if o.kind in ("stop", "take_profit")]


def guards(stop: Order, position: Position) -> bool:
    """Whether an armed stop order would close (part of) this position."""
    return stop.kind == "stop" and stop.status == "open" and stop.side == closing_side(position.side)


def covered_qty(position: Position, stops: Iterable[Order]) -> float:
    """How much of the position the stops would close: all of it with a position-held stop or
    an armed whole-position stop, else the sum of the guarding stops' sizes."""
    if position.stop_price is not None:
        return position.size
    guarding = [o for o in stops if guards(o, position)]
    if any(o.closes_position for o in guarding):
        return position.size
    return sum(o.qty for o in guarding)


def covers(position: Position, stops: Iterable[Order]) -> bool:
    """Whether the stops cover the whole position (within `QTY_TOLERANCE`)."""
    return covered_qty(position, stops) >= position.size - QTY_TOLERANCE


def record_stop_covers_any_size(record: PositionRecord) -> bool:
    """Whether the record's live stop covers its position whatever size it turns out to be: a
    whole-position stop (the rule above, as the record knows it), so that protecting the
    verified fill needs no second stop (the venue would refuse it: one per side)."""
    return is_protected(record) and record.stop_scope == "whole_position"
