"""Sending an order exactly once, whatever the network does (I3).

A request whose response is lost may or may not have reached the venue. The only safe next
step is to ask the venue about that client order id. Whether its "unknown" is enough to send
again is the venue's rule (`Venue.unknown_order_rule`), never decided here by venue name: where
ids are refused for good once used (Bybit), the order is sent again, under the *same* id, after
the venue has kept saying "unknown" for `VerificationSettings.lookup_grace`, and any mistake
is a harmless `DuplicateClientOrderId`. Where a filled order's id is free again (Binance), an
entry is resent only after the venue's longer grace with no trace of it at all; a trace (a
fill, a position) sends it to verification instead, which protects whatever is open.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from posguard.actors import ids
from posguard.actors.belonging import belongs_to
from posguard.actors.context import ActorContext
from posguard.actors.proof import trace_of_entry
from posguard.actors.records import PositionRecord
from posguard.streams.backoff import Deadline, sleep_within
from posguard.streams.venue.errors import DuplicateClientOrderId, NotPlaced, VenueUnavailable
from posguard.streams.venue.events import Order

__all__ = ["ABSENT", "Absent", "cancel_leftover_stops", "look_up", "send_once"]

log = logging.getLogger("posguard.actor")


class Absent:
    """The venue answered, at a time after the grace period: it has no order with that id."""


ABSENT = Absent()


async def send_once(
    ctx: ActorContext,
    record: PositionRecord,
    client_order_id: str,
    send: Callable[[], Awaitable[Order]],
    deadline: Deadline,
    *,
    maybe_sent: bool = False,
) -> Order | None:
    """Send via ``send`` and return the venue's view of the order.

    ``maybe_sent``: an earlier attempt may have reached the venue (a restart found the
    record written but not updated): look it up before sending anything.

    None means the order's fate is still unknown at the deadline (the caller must not
    assume it was not placed). `OrderRejected` propagates: the venue placed nothing.
    """
    not_placed_delays = ctx.settings.verification.backoff.delays(ctx.rng)
    while True:
        if maybe_sent:
            answer = await _until_resend_allowed(ctx, record, client_order_id, deadline)
            if not isinstance(answer, Absent):
                return answer
            log.warning("%s: the venue does not know %s; sending it again under the same id", record.symbol, client_order_id)
        pushed = ctx.board.order(client_order_id)
        if pushed is not None and belongs_to(record, pushed):
            return pushed
        try:
            ctx.count_rest(record, "send")
            return await send()
        except DuplicateClientOrderId:
            log.info("%s: %s already on the venue; looking it up", record.symbol, client_order_id)
            found = await look_up(ctx, record, client_order_id, deadline)
            return found if isinstance(found, Order) else None
        except NotPlaced as exc:
            # Refused before it took effect (a clock the adapter has measured again, a rate
            # limit): send it again under the same id, paced, without the lookup an unknown
            # outcome needs.
            log.warning("%s: sending %s: refused before it took effect (%s); sending it again",
                        record.symbol, client_order_id, exc)
            if not await sleep_within(next(not_placed_delays), deadline):
                return None
        except VenueUnavailable as exc:
            log.warning("%s: sending %s: outcome unknown (%s); looking it up", record.symbol, client_order_id, exc)
            maybe_sent = True


async def _until_resend_allowed(
    ctx: ActorContext, record: PositionRecord, client_order_id: str, deadline: Deadline
) -> Order | Absent | None:
    """Look an order that may have been sent up until the venue's rule lets it be sent again.

    `ABSENT`: resend it. Resending rests on the venue's own word, given after the grace,
    that it has no such order: a venue that does not answer (an outage) never earns one. On a
    venue that reuses a filled order's id (`UnknownOrderRule.entry_needs_silence`) the entry
    also needs silence on every look over the grace; None then also means a trace of it was
    seen, and verification, not a second order, decides what it did.
    """
    rule = ctx.venue.unknown_order_rule
    is_entry = client_order_id == record.client_order_id
    lookup_grace = ctx.settings.verification.lookup_grace
    grace = rule.grace_for_entry(lookup_grace) if is_entry else lookup_grace
    resend_at = anyio.current_time() + grace
    if not (is_entry and rule.entry_needs_silence):
        return await look_up(ctx, record, client_order_id, deadline, absent_after=resend_at)
    delays = ctx.settings.verification.backoff.delays(ctx.rng)
    while True:
        answer = await look_up(ctx, record, client_order_id, deadline, absent_after=anyio.current_time())
        if not isinstance(answer, Absent):
            return answer
        try:
            trace = await trace_of_entry(ctx, record)
        except VenueUnavailable as exc:
            log.warning("%s: cannot tell whether %s reached the venue (%s); not resending", record.symbol, client_order_id, exc)
        else:
            if trace is not None:
                log.warning("%s: the venue does not know %s, but %s: not sending it again; verifying it",
                            record.symbol, client_order_id, trace)
                return None
            if anyio.current_time() >= resend_at:
                return ABSENT
        if not await sleep_within(next(delays), deadline):
            return None


async def look_up(
    ctx: ActorContext,
    record: PositionRecord,
    client_order_id: str,
    deadline: Deadline,
    *,
    absent_after: float | None = None,
) -> Order | Absent | None:
    """Ask for an order by client order id until it is found or the deadline passes.

    Pushed evidence counts as finding it; an order of another symbol (or side) under that id
    is not this record's (`belongs_to`) and counts as not found. With ``absent_after`` (anyio
    time), an answer of "unknown" given at or after that time returns `ABSENT`. None means no
    answer settled it by the deadline, which is not evidence that the order does not exist.
    """
    delays = ctx.settings.verification.backoff.delays(ctx.rng)
    while True:
        pushed = ctx.board.order(client_order_id)
        if pushed is not None and belongs_to(record, pushed):
            return pushed
        try:
            found = await ctx.fetch_order(record, client_order_id)
        except VenueUnavailable:
            pass
        else:
            if found is not None and belongs_to(record, found):
                return found
            if absent_after is not None and anyio.current_time() >= absent_after:
                return ABSENT
        if not await sleep_within(next(delays), deadline):
            return None


_LEFTOVER_ROLES = {"stop": "stop", "take_profit": "take_profit"}
"""Order kind -> the id role of ours it must carry to be one of the record's leftovers."""


async def cancel_leftover_stops(ctx: ActorContext, record: PositionRecord, deadline: Deadline) -> list[str]:
    """Cancel every armed stop and take-profit this record's intent placed on the symbol:
    once one of them has filled (or the position is otherwise gone), the other is a leftover
    that could open a new position's worth of trouble (a reduce-only order waits for the next
    position on the symbol).

    Found by listing open orders (not by remembering ids), so stops from attempts whose
    responses were lost are cancelled too, and the record's take-profit by its id as well.
    Returns the ids cancelled.
    """
    delays = ctx.settings.verification.backoff.delays(ctx.rng)
    while True:
        try:
            ctx.count_rest(record, "fetch_open_orders")
            orders = await ctx.venue.fetch_open_orders(record.symbol)
            cancelled = []
            for order in orders:
                role = _LEFTOVER_ROLES.get(order.kind)
                if role is not None and ids.same_intent(order.client_order_id, record.client_order_id, role=role):
                    ctx.count_rest(record, "cancel_order")
                    await ctx.venue.cancel_order(record.symbol, order.client_order_id)
                    cancelled.append(order.client_order_id)
            listed = {order.client_order_id for order in orders}
            take_profit = record.take_profit_client_order_id
            if take_profit and take_profit not in listed:
                # Asked by id too: a take-profit placed moments before the stop filled may not
                # be listed yet, and no audit sweeps take-profits (they guard nothing). A venue
                # with no such open order answers None: nothing to cancel.
                ctx.count_rest(record, "cancel_order")
                if await ctx.venue.cancel_order(record.symbol, take_profit) is not None:
                    cancelled.append(take_profit)
            return cancelled
        except VenueUnavailable as exc:
            log.warning("%s: cancelling leftover stops failed (%s); retrying", record.symbol, exc)
            if not await sleep_within(next(delays), deadline):
                await ctx.alert(record.symbol, "leftover stop orders could not be cancelled; the audit will retry")
                return []
