"""A whole-position stop armed while a position may be bare and its fate is being settled (I2,
issue 14): an entry whose outcome is unknown, or a close of a bare position that has not gone
through.

Where the venue attaches no stop to the entry (Binance), an entry whose answer was lost is bare
from its fill until some evidence of that fill arrives or the hard deadline makes it
`unverified`: with pushes dropped and REST views lagging, 20-60 s, counted again after each
restart. A whole-position stop (`StopRequest.whole_position`: Binance ``closePosition=true``)
needs no size and covers whatever position appears, so it is armed at once, alongside the
lookups and the verification's waits, not after them.

A close of a position no stop is known to hold (an emergency close: every stop was refused)
is the other such wait: while its orders fail or their outcome is unknown, the position is
bare until one goes through, though the stop service may be back (the standby crash test
measured 21 s). The same stop is armed beside the close once an attempt of it fails; the
close goes on, and `settle_closed` cancels the stop once the position is proven gone.

The venue refuses such a stop while there is nothing to close yet (`NothingToClose`, Binance
-4509): that is no evidence about the entry either way (I1), only a reason to try again at
`ProtectionSettings.armed_stop_retry` until the stop is accepted or the entry's outcome is
known. The stop's id is in the record before each send (I5). A second whole-position stop on
the side is refused (`StopSlotTaken`, Binance -4130): one is armed already (ours, from an
attempt whose answer was lost or from before a restart), which covers the position just as well.
"""

from __future__ import annotations

import logging

import anyio

from posguard.actors import ids
from posguard.actors.context import ActorContext
from posguard.actors.coverage import record_stop_covers_any_size
from posguard.actors.orders import cancel_leftover_stops, send_once
from posguard.actors.records import CLOSING_STATES, PositionRecord, Protection, is_protected
from posguard.streams.backoff import Deadline
from posguard.streams.venue.errors import NothingToClose, OrderRejected, StopSlotTaken, StopWouldTrigger
from posguard.streams.venue.events import closing_side, position_side_of
from posguard.streams.venue.markets import QTY_TOLERANCE
from posguard.streams.venue.protocol import StopRequest

__all__ = ["ArmedStop", "disarm", "needs_armed_stop"]

log = logging.getLogger("posguard.actor")


def needs_armed_stop(ctx: ActorContext, record: PositionRecord) -> bool:
    """Whether the record's position may be bare while its step runs. A close: no stop is
    known live for it (`is_protected`). An entry: the venue attaches no stop to entries (asked
    of the venue, no venue names here), and no whole-position stop is known armed for it yet."""
    if record.state in CLOSING_STATES:
        return not is_protected(record)
    return not ctx.venue.supports_attached_stop and not record_stop_covers_any_size(record)


class ArmedStop:
    """Arms the record's whole-position stop once `arm` is called, until `stop`.

    Runs as a task beside the step (`run`): an entry's send and verification, or a close's
    orders. The record it mutates is that step's own object, so whatever the step saves carries
    the stop's fields too. ``why`` says in the journal what made the position's fate unknown.
    """

    def __init__(self, ctx: ActorContext, record: PositionRecord, why: str = "the entry's outcome is unknown") -> None:
        self._ctx = ctx
        self._record = record
        self._why = why
        self._unknown = anyio.Event()
        self._done = anyio.Event()
        self._finished = anyio.Event()
        self.tried = False
        """A stop was sent (or may have been): the settling step cancels it if the entry is
        proven rejected."""
        self._maybe_live = record.stop_client_order_id if record.stop_attempts else ""

    def arm(self) -> None:
        """The position may be on the venue, bare, and the step cannot say yet: arm the stop now."""
        self._unknown.set()

    def stop(self) -> None:
        """The step's outcome is known: no new attempt (one in flight finishes)."""
        self._done.set()
        self._unknown.set()

    async def finish(self) -> None:
        """`stop`, then wait for an attempt in flight to end (bounded by its own deadline), so
        that what follows (protection, a cancel) sees the stop's outcome in the record."""
        self.stop()
        await self._finished.wait()

    async def run(self) -> None:
        try:
            await self._arm()
        finally:
            self._finished.set()

    async def _arm(self) -> None:
        await self._unknown.wait()
        ctx, record = self._ctx, self._record
        settings = ctx.settings.protection
        side = closing_side(position_side_of(record.side))
        while not self._done.is_set():
            self.tried = True
            record.stop_attempts += 1
            coid = ids.stop_id(ctx.account, record.intent_id, record.stop_attempts)
            record.stop_client_order_id = coid
            await ctx.save(record, f"arming whole-position stop {coid} at {record.stop_price}: {self._why}")
            request = StopRequest(symbol=record.symbol, side=side, qty=record.qty, stop_price=record.stop_price,
                                  client_order_id=coid, whole_position=True)
            try:
                order = await send_once(ctx, record, coid, lambda: ctx.venue.place_stop(request),
                                        Deadline(settings.stop_deadline / settings.stop_attempts))
            except NothingToClose:
                order = None  # nothing to close yet: no evidence about the entry, try again
            except StopSlotTaken as exc:
                # A whole-position stop is armed on that side already: it covers the position.
                record.stop_client_order_id = self._maybe_live or coid
                await self._armed(f"a whole-position stop is armed already ({exc.reason})")
                return
            except StopWouldTrigger as exc:
                log.warning("%s: armed stop %s would trigger at once (%s); left to the step (%s)",
                            record.symbol, coid, exc.reason, self._why)
                return
            except OrderRejected as exc:
                log.warning("%s: armed stop %s refused: %s; trying again", record.symbol, coid, exc.reason)
                order = None
            else:
                if order is None:
                    self._maybe_live = coid  # outcome unknown: it may be the one armed
            if order is not None and order.status == "open":
                await self._armed(f"whole-position stop {coid} armed: {self._why}")
                return
            if order is not None and order.filled > QTY_TOLERANCE:
                return  # it triggered at once: the verification sees the exit in the executions
            with anyio.move_on_after(settings.armed_stop_retry):
                await self._done.wait()

    async def _armed(self, why: str) -> None:
        record = self._record
        record.protection = Protection.STOP_ORDER
        record.stop_scope = "whole_position"
        await self._ctx.save(record, why)


async def disarm(ctx: ActorContext, record: PositionRecord) -> None:
    """The entry is settled rejected: cancel a stop armed for it. The venue would not have
    accepted one without a position, but it is cancelled anyway, as `proof.never_reached`'s
    stray stop is (found by listing, so an attempt whose answer was lost is found too)."""
    if not record.stop_attempts:
        return
    record.protection = Protection.NONE
    record.stop_scope = ""
    cancelled = await cancel_leftover_stops(ctx, record, Deadline(ctx.settings.protection.stop_deadline))
    if cancelled:
        await ctx.save(record, f"armed stop cancelled: the entry was rejected ({', '.join(cancelled)})")
