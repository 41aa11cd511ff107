"""Amending a protected position: its stop moved (a price, a distance, breakeven), its
take-profit changed or removed, the position never bare during the change (I2).

Two ways, by what the venue can do:

* In place, where the position holds its own stop (`Venue.supports_attached_stop` and the
  record's stop is the attached one: Bybit V5 ``POST /v5/position/trading-stop``,
  ``tpslMode=Full``, https://bybit-exchange.github.io/docs/v5/position/trading-stop): the
  venue swaps the values on the position; the old stop holds until the new one is taken.
* Otherwise (Binance's closePosition algo stops, a separate stop order anywhere) the new stop
  is placed first and the old one cancelled only once the new one is live, never the other way
  round: `place_stop(..., replacing=True)`, then the cancel, as the liquidation re-check does
  (`liquidation_guard`, through `protect_with_stop_order`, which closes the position when
  no stop holds: right for a stop beyond liquidation, wrong here, where the old stop still
  does). A separate take-profit (Binance) is not protection: its old order is cancelled, then
  the new one placed (one closePosition take-profit per side), and the stop guards the
  position throughout.

The new values are written ahead in the record (``stop_price``, ``take_profit``,
``amend_intent_id``, the stop being replaced in ``replaced_stop_client_order_id``) before
anything is sent (I5); a restart finishes the amend from there (`resume_amend`). A refusal by
the venue (the price already through the new stop) keeps the old stop and answers the intent
``rejected``; the record is put back as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec

from posguard.actors import ids
from posguard.actors.context import ActorContext
from posguard.actors.intents import AmendIntent, IntentRefused
from posguard.actors.lifecycle.protection import place_stop
from posguard.actors.lifecycle.replies import IntentConflict, Owned
from posguard.actors.lifecycle.take_profit import arm_take_profit
from posguard.actors.records import PositionRecord, Protection, State, is_protected, open_size
from posguard.streams.backoff import Deadline, sleep_within
from posguard.streams.venue.errors import OrderRejected, StopWouldTrigger, VenueError, VenueUnavailable
from posguard.streams.venue.protocol import AmendRequest

__all__ = ["AmendCheck", "Amendment", "amend_on_request", "in_place", "resume_amend"]

log = logging.getLogger("posguard.actor")


class OutcomeUnknown(StopWouldTrigger):
    """The venue did not answer an in-place amend in time: the position holds a stop (in place
    never removes one), the old or the new; what it holds is read back and recorded."""


class TakeProfitRefused(Exception):
    """The stop was moved, then the venue refused the take-profit's change: the new stop
    stays, the take-profit goes back to what it was."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Amendment(msgspec.Struct, frozen=True, kw_only=True):
    """An amend as prices, checked against the market (`AmendCheck`): what the record's stop
    and take-profit become. None: unchanged; ``take_profit`` 0: removed."""

    stop_price: float | None = None
    take_profit: float | None = None


AmendCheck = Callable[[AmendIntent, PositionRecord], Awaitable[Amendment]]
"""The amend's checks that need the market (the supervisor's risk rules: the stop on the right
side of the last price, inside the liquidation price; a take-profit on the profit side):
distances and breakeven turned into prices, or `IntentRefused`."""


def in_place(ctx: ActorContext, record: PositionRecord) -> bool:
    """Whether the record's stop is the position's own, changed in place (`AmendRequest`):
    the venue attaches stops and the one the venue showed is the attached one."""
    return ctx.venue.supports_attached_stop and record.protection is Protection.ATTACHED_CONFIRMED


async def amend_on_request(ctx: ActorContext, symbol: str, intent: AmendIntent, owned: Owned,
                           check: AmendCheck | None) -> PositionRecord:
    """An amend intent: only a protected record, with nothing else under way, is amended."""
    record = await ctx.store.load_record(symbol)
    if record is None or record.state is not State.PROTECTED or not is_protected(record):
        state = "none" if record is None else f"{record.state}, stop {record.protection}"
        raise IntentConflict(f"{symbol}: only a protected position can be amended (record state: {state});"
                             " nothing was sent: send the amend once the position is protected")
    if record.amend_intent_id and record.amend_intent_id != intent.intent_id:
        raise IntentConflict(f"{symbol}: amend {record.amend_intent_id} is still under way; nothing was sent")
    if check is None:
        raise IntentRefused("amend: this service has no market checks for amends configured; nothing was sent")
    amendment = await check(intent, record)
    old_stop, old_take_profit = record.stop_price, record.take_profit
    new_stop = amendment.stop_price if amendment.stop_price is not None else old_stop
    new_take_profit = amendment.take_profit if amendment.take_profit is not None else old_take_profit
    if new_stop == old_stop and new_take_profit == old_take_profit:
        raise IntentRefused(f"amend: the stop {old_stop:g} and take-profit {old_take_profit:g} are already as asked;"
                            " nothing was sent")
    record.amend_intent_id = intent.intent_id
    record.stop_price, record.take_profit = new_stop, new_take_profit
    if new_stop != old_stop and not in_place(ctx, record):
        record.replaced_stop_client_order_id = record.stop_client_order_id
    await ctx.save(record, f"amend {intent.intent_id}: stop {old_stop:g} -> {new_stop:g},"
                           f" take-profit {old_take_profit:g} -> {new_take_profit:g}")  # write ahead (I5)
    owned()
    try:
        await _carry_out(ctx, record, stop_changed=new_stop != old_stop,
                         take_profit_changed=new_take_profit != old_take_profit)
    except TakeProfitRefused as exc:
        await _refused(ctx, record, intent.intent_id, record.stop_price, old_take_profit,
                       f"the stop was moved to {record.stop_price:g}; the take-profit was not: {exc.reason}")
    except OutcomeUnknown as exc:
        stop, take_profit = await _held_by_venue(ctx, record)
        await ctx.alert(symbol, f"amend {intent.intent_id}: {exc.reason}; recorded what the venue shows"
                                f" (stop {stop:g}, take-profit {take_profit:g})")
        await _refused(ctx, record, intent.intent_id, stop, take_profit, exc.reason)
    except StopWouldTrigger as exc:
        await _refused(ctx, record, intent.intent_id, old_stop, old_take_profit, exc.reason)
    return record


async def resume_amend(ctx: ActorContext, record: PositionRecord) -> None:
    """After a restart: finish an amend the record says was under way. Its new values are in
    the record; sending them again is harmless (in place: the same values; a separate stop: a
    new one under a new id, the replaced one cancelled after)."""
    if not record.amend_intent_id or record.state is not State.PROTECTED:
        return
    log.info("%s: finishing amend %s after a restart", record.symbol, record.amend_intent_id)
    stop_pending = bool(record.replaced_stop_client_order_id) or in_place(ctx, record)
    intent_id = record.amend_intent_id
    try:
        await _carry_out(ctx, record, stop_changed=stop_pending, take_profit_changed=True)
    except (StopWouldTrigger, TakeProfitRefused) as exc:
        # The values as they were are not in Redis: the venue says what it holds (the
        # position's own, or the kept stop order's trigger).
        stop, take_profit = await _held_by_venue(ctx, record)
        if isinstance(exc, TakeProfitRefused):
            position = ctx.board.position(record.symbol)
            take_profit = position.take_profit or 0.0 if position is not None else 0.0
        try:
            await _refused(ctx, record, intent_id, stop, take_profit, exc.reason)
        except IntentRefused as refusal:
            awaited = ctx.still_awaited(record.symbol, intent_id)
            if awaited is not None:  # answered here: no step of an intent is running to answer it
                awaited.reply.status, awaited.reply.reason = "rejected", f"finished after a restart: {refusal}"
                await ctx.store.save_intent(awaited.reply)


async def _held_by_venue(ctx: ActorContext, record: PositionRecord) -> tuple[float, float]:
    """The stop and take-profit the venue holds for the record now, as well as it tells
    (the record's own values where it does not)."""
    if in_place(ctx, record):
        position = ctx.board.position(record.symbol)
        if position is None:  # nothing pushed since the restart: the venue's list
            try:
                position = await ctx.listed_position(record.symbol, record)
            except VenueError as exc:
                log.warning("%s: could not read the position's stop (%s)", record.symbol, exc)
        if position is not None and position.stop_price:
            return position.stop_price, position.take_profit or 0.0
        return record.stop_price, record.take_profit
    try:
        order = await ctx.venue.fetch_order(record.symbol, record.stop_client_order_id, conditional=True)
    except VenueError as exc:
        log.warning("%s: could not read the kept stop %s (%s)", record.symbol, record.stop_client_order_id, exc)
        order = None
    stop = order.stop_price if order is not None and order.stop_price else record.stop_price
    return stop, record.take_profit


async def _carry_out(ctx: ActorContext, record: PositionRecord, *, stop_changed: bool,
                     take_profit_changed: bool) -> None:
    attached_take_profit = ctx.venue.supports_attached_stop
    if in_place(ctx, record):
        request = AmendRequest(symbol=record.symbol, stop_loss=record.stop_price if stop_changed else None,
                               take_profit=record.take_profit if take_profit_changed else None)
        await _amend_in_place(ctx, record, request)
    elif stop_changed:
        await _replace_stop(ctx, record)
        if not record.amend_intent_id:
            return  # the new stop filled at once: an exit, recorded as such
        if take_profit_changed and attached_take_profit:
            try:
                await _amend_in_place(ctx, record, AmendRequest(symbol=record.symbol, take_profit=record.take_profit))
            except StopWouldTrigger as exc:
                raise TakeProfitRefused(exc.reason) from exc
    elif take_profit_changed and attached_take_profit:
        await _amend_in_place(ctx, record, AmendRequest(symbol=record.symbol, take_profit=record.take_profit))
    if take_profit_changed and not attached_take_profit:
        await _replace_take_profit(ctx, record)
    record.amend_intent_id = ""
    record.reason = f"amended: stop {record.stop_price:g}, take-profit {record.take_profit:g}"
    await ctx.save(record, record.reason)  # answers the amend (`intents.answers`)


async def _amend_in_place(ctx: ActorContext, record: PositionRecord, request: AmendRequest) -> None:
    """``trading-stop``, retried while its outcome is unknown within the stop deadline (the
    same values again change nothing); `StopWouldTrigger` goes to the caller."""
    settings = ctx.settings.protection
    budget = Deadline(settings.stop_deadline)
    delays = settings.stop_backoff.delays(ctx.rng)
    while True:
        try:
            await ctx.venue.amend_attached(request)
            return
        except VenueUnavailable as exc:
            log.warning("%s: amend in place: outcome unknown (%s); sending it again", record.symbol, exc)
            if not await sleep_within(next(delays), budget):
                raise OutcomeUnknown(f"no answer from the venue within {settings.stop_deadline:g} s ({exc})",
                                     code="posguard-unknown") from exc
        except StopWouldTrigger:
            raise
        except OrderRejected as exc:
            raise StopWouldTrigger(exc.reason, code=exc.code) from exc


async def _replace_stop(ctx: ActorContext, record: PositionRecord) -> None:
    """The new stop first, the old one cancelled once it is live (never the other way round).

    `place_stop` with ``replacing`` (a venue holding one whole-position stop per side gets the
    new one sized). While it is placed the record says no stop is known live
    (`Protection.NONE`): a restart then places it again (`entry._drive`) before the old one
    is cancelled here. Refused (the market through it) or not placed at all, the old stop,
    never touched, is the record's again and the amend is refused."""
    old = record.replaced_stop_client_order_id
    if record.stop_client_order_id == old or not is_protected(record):
        old_scope = record.stop_scope if record.stop_client_order_id == old else ""
        record.protection = Protection.NONE
        record.stop_scope = ""
        # Sized (where it must be) for all the entry may hold, less what partial closes took
        # off: a part still to fill is covered from the start, and a reduce-only stop larger
        # than the position is cut to it.
        result = await place_stop(ctx, record, max(open_size(record), record.qty - record.closed_qty), replacing=True)
        match result:
            case "live" | "armed_already":
                record.protection = Protection.STOP_ORDER
                record.stop_scope = "whole_position" if result == "armed_already" else ""
            case "filled":
                # The new stop triggered as soon as it was placed: an exit, which the venue's flat
                # push settles (`repairs.follow_venue`) from the executions' proof.
                record.protection = Protection.STOP_ORDER
                record.amend_intent_id = ""
                await ctx.save(record, record.reason)
                return
            case "would_trigger" | "failed" | "nothing_to_close":
                record.stop_client_order_id, record.stop_scope = old, old_scope
                record.protection = Protection.STOP_ORDER
                raise StopWouldTrigger(record.reason, code="posguard-amend")
        await ctx.save(record, f"stop {record.stop_client_order_id} live at {record.stop_price:g}; cancelling {old}")
    if old and old != record.stop_client_order_id:
        try:
            await ctx.venue.cancel_order(record.symbol, old)
        except VenueError as exc:  # a reduce-only stop looser than the new one: the audit finds it
            log.warning("%s: could not cancel the replaced stop %s (%s); the new stop %s is live",
                        record.symbol, old, exc, record.stop_client_order_id)
    record.replaced_stop_client_order_id = ""
    await ctx.save(record, f"replaced stop {old} cancelled; {record.stop_client_order_id} live at {record.stop_price:g}")


async def _replace_take_profit(ctx: ActorContext, record: PositionRecord) -> None:
    """A separate take-profit (Binance): the old one cancelled, then the new one placed (one
    closePosition take-profit per side; the stop guards the position meanwhile), under the
    entry's intent id with the next attempt number, so the audit knows it as the record's.

    Sent again after a restart: a take-profit the venue holds open at the record's price is
    the one this amend placed, and is kept. A removed one's id stays in the record (its order
    cancelled), so that a take-profit set later takes the next number."""
    old = record.take_profit_client_order_id
    if old:
        try:
            order = await ctx.venue.fetch_order(record.symbol, old, conditional=True)
        except VenueError as exc:
            log.warning("%s: could not look the take-profit %s up (%s)", record.symbol, old, exc)
            order = None
        rules = ctx.rules.get(record.symbol)
        tick = rules.price_tick if rules is not None else 0.0
        if (order is not None and order.status == "open" and record.take_profit
                and order.stop_price is not None and abs(order.stop_price - record.take_profit) <= tick / 2):
            return  # already as asked (placed before a restart)
        if order is None or order.status == "open":
            try:
                await ctx.venue.cancel_order(record.symbol, old)
            except VenueError as exc:
                log.warning("%s: could not cancel the take-profit %s (%s)", record.symbol, old, exc)
                await ctx.alert(record.symbol, f"take-profit {old} could not be cancelled for amend"
                                               f" {record.amend_intent_id}: {exc}; it may still be armed")
        await ctx.save(record, f"take-profit {old} cancelled for amend {record.amend_intent_id}")
    if record.take_profit:
        parsed = ids.parse(old) if old else None
        record.take_profit_client_order_id = ""
        await arm_take_profit(ctx, record, attempt=parsed.attempt + 1 if parsed is not None else 1)


async def _refused(ctx: ActorContext, record: PositionRecord, intent_id: str, stop: float, take_profit: float,
                   reason: str) -> None:
    """The venue refused the new values: the old stop stays (it was never touched), the record
    goes back to it, and the amend is answered ``rejected`` (`IntentRefused`)."""
    record.stop_price, record.take_profit = stop, take_profit
    record.amend_intent_id = ""
    record.replaced_stop_client_order_id = ""
    message = f"amend {intent_id} refused by the venue ({reason}); the stop stays at {stop:g}, nothing changed"
    if reason.startswith("the stop was moved"):
        message = f"amend {intent_id} refused in part by the venue: {reason}; the take-profit stays at {take_profit:g}"
    elif reason.startswith("no answer from the venue"):
        message = f"amend {intent_id} not confirmed ({reason}); the venue shows the stop at {stop:g}"
    record.reason = message
    # The restored record must not answer the amend as done: the refusal is its answer.
    awaited = ctx.still_awaited(record.symbol, intent_id)
    await ctx.save(record, message)
    if awaited is not None:
        ctx.await_reply(record.symbol, awaited.reply, after_restart=awaited.after_restart)
    raise IntentRefused(message)

