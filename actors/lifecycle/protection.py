"""Making sure a filled position carries a live stop-loss, or is closed (I2).

In order of preference:
1. The stop attached to the entry order, confirmed on the venue's position (push or REST).
2. A separate reduce-only stop order, sized to what filled, confirmed by the venue's answer.
3. If no stop can be placed after bounded retries, or the market is already through the
   stop price: close the position (reduce-only). A position is never left bare.

An attached stop that cannot be confirmed in time is backed by a separate stop rather than
trusted: two reduce-only stops are harmless, a missing one is not.

Every way this can end is recorded here, not by the caller: protected (the record's
`Protection` says by what), closed by the venue first (settled `closed_externally` on the
executions' proof, a stop that fills as soon as it is placed included: an exit, never
protection), or closed reduce-only instead. `ProtectOutcome` tells the caller which.
"""

from __future__ import annotations

import logging
from typing import Literal, assert_never

import anyio
import msgspec

from posguard.actors import ids
from posguard.actors.context import ActorContext
from posguard.actors.coverage import record_stop_covers_any_size
from posguard.actors.lifecycle.closing import close_key, close_position, settle_closed
from posguard.actors.lifecycle.take_profit import arm_take_profit, attached_take_profit_seen
from posguard.actors.orders import send_once
from posguard.actors.proof import Gone, prove_gone
from posguard.actors.records import CLOSING_STATES, PositionRecord, Protection, State, utc_now
from posguard.streams.backoff import Deadline, sleep_within
from posguard.streams.ingestion.evidence import newer_position
from posguard.streams.venue.errors import NothingToClose, OrderRejected, StopSlotTaken, StopWouldTrigger, VenueUnavailable
from posguard.streams.venue.events import Position, closing_side, position_side_of
from posguard.streams.venue.markets import QTY_TOLERANCE, MarketRules
from posguard.streams.venue.protocol import StopRequest

__all__ = [
    "ClosedInstead",
    "ExitedOnVenue",
    "PositionView",
    "ProtectOutcome",
    "NothingToProtect",
    "Protected",
    "StopResult",
    "confirm_attached_stop",
    "describe_outcome",
    "emergency_close",
    "orphan_stop_for",
    "orphan_stop_price",
    "place_stop",
    "protect",
    "protect_with_stop_order",
    "read_position",
    "record_for_venue_position",
]

log = logging.getLogger("posguard.actor")

StopResult = Literal["live", "armed_already", "filled", "would_trigger", "nothing_to_close", "failed"]
PositionView = Literal["stop_on", "stop_off", "flat", "unknown"]


class Protected(msgspec.Struct, frozen=True, tag="protected"):
    """A stop is live; ``protection`` is what the record now says about it."""

    protection: Protection


class ExitedOnVenue(msgspec.Struct, frozen=True, tag="closed_externally"):
    """The venue closed the position first (a stop, a liquidation); the record is settled
    `closed_externally` on the executions' proof."""

    exit_qty: float


class ClosedInstead(msgspec.Struct, frozen=True, tag="closed"):
    """No stop could be made to hold: the position was closed reduce-only, and the record settled."""

    outcome: Gone


class NothingToProtect(msgspec.Struct, frozen=True, tag="nothing_to_protect"):
    """An `unverified` entry for which the venue's own engine has nothing to close: every
    whole-position stop was refused for want of a position (`NothingToClose`, Binance -4509).
    The record stays `unverified`, for the audit (`proof.never_reached` settles an entry that
    never reached the venue, and a position that does appear is adopted and protected). Not
    closed instead: a close of nothing would record a position that never existed, with an
    emergency alert for it."""


ProtectOutcome = Protected | ExitedOnVenue | ClosedInstead | NothingToProtect


def describe_outcome(outcome: ProtectOutcome) -> str:
    """For the audit stream and logs."""
    match outcome:
        case Protected(protection=protection):
            return f"protected ({protection})"
        case ExitedOnVenue(exit_qty=exit_qty):
            return f"closed by the venue first (exits {exit_qty}); recorded closed_externally"
        case ClosedInstead(outcome=closed):
            return f"no stop could be made to hold; closed reduce-only ({closed.describe()})"
        case NothingToProtect():
            return "the venue has nothing to close for this unverified entry; left unverified for the audit"
    assert_never(outcome)


def read_position(position: Position | None, record: PositionRecord) -> PositionView:
    """What a venue position snapshot says about our filled entry and its stop.

    Only a snapshot taken after the entry was sent says anything; "flat" is the venue's own
    word that the position is gone, which sends us to the executions for the proof.
    """
    if position is None or position.ts_ms < record.sent_ms:
        return "unknown"
    if not position.is_open:
        return "flat"
    if position.side != position_side_of(record.side):
        return "unknown"
    return "stop_on" if position.stop_price is not None else "stop_off"


def freshest_position(ctx: ActorContext, symbol: str, seen: Position | None) -> Position | None:
    """The later of a snapshot a step saw and the board's (by `newer_position`): the board may
    have heard of a change (a stop-out, a fill) after the step took its snapshot."""
    pushed = ctx.board.position(symbol)
    if seen is None or pushed is None:
        return seen or pushed
    return newer_position(pushed, seen)


async def confirm_attached_stop(ctx: ActorContext, record: PositionRecord, seen: Position | None) -> PositionView:
    """Wait (push first, then one REST look) for the venue to show the position and its stop."""
    view = read_position(freshest_position(ctx, record.symbol, seen), record)
    deadline = Deadline(ctx.settings.protection.stop_confirm_deadline)
    while view == "unknown" and not deadline.passed and ctx.board.is_healthy():
        with anyio.move_on_after(min(deadline.remaining, ctx.board.seconds_until_stale())):
            await ctx.board.wait_for_change(record.symbol)
        view = read_position(ctx.board.position(record.symbol), record)
    if view == "unknown":
        try:
            view = read_position(await ctx.listed_position(record.symbol, record), record)
        except VenueUnavailable as exc:
            log.warning("%s: could not read positions to confirm the attached stop: %s", record.symbol, exc)
    return view


def orphan_stop_price(ctx: ActorContext, position: Position) -> float:
    """The stop for a position posguard did not open (an orphan, a quarantined symbol's):
    `ProtectionSettings.orphan_stop_distance` from its entry price, on the venue's tick."""
    return orphan_stop_for(position, ctx.settings.protection.orphan_stop_distance, ctx.rules.get(position.symbol))


def orphan_stop_for(position: Position, distance: float, rules: MarketRules | None) -> float:
    """`orphan_stop_price` without an actor: ``posguard audit`` predicts with it, before any
    actor exists, whether an adopted position's stop would already be through the market."""
    raw_stop = position.entry_price * (1 - distance if position.side == "long" else 1 + distance)
    return rules.round_price(raw_stop) if rules is not None else raw_stop


def record_for_venue_position(ctx: ActorContext, position: Position, *, intent_id: str, stop_price: float,
                              reason: str, filled_at: str = "") -> PositionRecord:
    """A record for a position the venue holds that posguard did not open through an intent
    (an orphan adopted by the audit, a quarantined symbol's guard): what the venue shows."""
    return PositionRecord(
        symbol=position.symbol,
        intent_id=intent_id,
        state=State.OPEN,
        side="buy" if position.side == "long" else "sell",
        qty=position.size,
        filled_qty=position.size,
        entry_price=position.entry_price,
        stop_price=stop_price,
        client_order_id=ids.entry_id(ctx.account, intent_id),
        reason=reason,
        sent_ms=position.ts_ms,
        filled_at=filled_at,
    )


async def place_stop(ctx: ActorContext, record: PositionRecord, qty: float, *, replacing: bool = False) -> StopResult:
    """Place a separate reduce-only stop, retrying with backoff up to the attempt limit,
    all within one `ProtectionSettings.stop_deadline`: that is how long the position may be
    bare waiting for a stop, whatever each attempt meets (a refusal, an unknown outcome and
    its lookups). Each attempt with a deadline of its own kept a position bare for the
    attempts times the deadline (82 s with the defaults) when the venue's stop service was
    down, where the bound promised 18.

    No backoff follows the last attempt: the position is bare until the caller closes it.
    A stop the venue reports filled (it triggered at once) is an exit: "filled", never "live".

    The stop is asked for as a whole-position stop (`StopRequest.whole_position`: Binance's
    closePosition, which covers the position at any size). A venue that holds one such stop
    per side refuses a second (`StopSlotTaken`). When ``replacing`` (a tightened stop: the new
    stop always goes first, the caller cancels the old one after), the replacement is then
    sent at once, sized to ``qty``, under a new id: the refusal placed nothing, and it spends
    no attempt. Otherwise the refusal is the venue's own word that a whole-position stop is
    armed on that side, which covers the position at any size: "armed_already", and nothing
    is added (a sized second stop beside it was the standby crash test's double stop, placed
    by an audit whose lists lagged behind the armed one).
    """
    settings = ctx.settings.protection
    delays = settings.stop_backoff.delays(ctx.rng)
    budget = Deadline(settings.stop_deadline)
    side = closing_side(position_side_of(record.side))
    whole = True
    armed_before = record.stop_client_order_id
    attempt = 1
    nothing_to_close = True  # until an attempt is refused (or lost) for another reason
    while True:
        record.stop_attempts += 1
        coid = ids.stop_id(ctx.account, record.intent_id, record.stop_attempts)
        record.stop_client_order_id = coid
        sized = "" if whole else " (sized: the venue holds a whole-position stop already)"
        await ctx.save(record, f"placing stop {coid} at {record.stop_price} for {qty}{sized}")
        request = StopRequest(symbol=record.symbol, side=side, qty=qty, stop_price=record.stop_price,
                              client_order_id=coid, whole_position=whole)
        try:
            order = await send_once(
                ctx, record, coid, lambda: ctx.venue.place_stop(request), _attempt_share(budget, settings.stop_attempts - attempt + 1)
            )
        except StopWouldTrigger as exc:
            record.reason = f"market already through the stop: {exc.reason}"
            return "would_trigger"
        except StopSlotTaken as exc:
            if whole and not replacing:
                log.info("%s: stop %s refused, a whole-position stop is armed already: %s", record.symbol, coid, exc.reason)
                record.stop_client_order_id = armed_before or coid
                return "armed_already"
            if whole:
                log.info("%s: a whole-position stop is already armed (%s); sending %s sized to %s",
                         record.symbol, exc.reason, coid, qty)
                whole = False
                continue
            log.warning("%s: stop %s rejected: %s", record.symbol, coid, exc.reason)
            record.reason = f"stop rejected: {exc.reason}"
            order = None
        except NothingToClose as exc:
            log.info("%s: stop %s refused, nothing to close on the venue: %s", record.symbol, coid, exc.reason)
            record.reason = f"stop refused, nothing to close on the venue: {exc.reason}"
            order = None
        except OrderRejected as exc:
            log.warning("%s: stop %s rejected: %s", record.symbol, coid, exc.reason)
            record.reason = f"stop rejected: {exc.reason}"
            nothing_to_close = False
            order = None
        else:
            nothing_to_close = False  # placed, filled, or its outcome unknown
        if order is not None and order.status == "open":
            return "live"
        if order is not None and order.filled > QTY_TOLERANCE:
            record.reason = f"stop {coid} filled {order.filled} as soon as it was placed"
            return "filled"
        if attempt >= settings.stop_attempts or not await sleep_within(next(delays), budget):
            break
        attempt += 1
    record.reason = f"no stop could be placed in {attempt} attempts within {settings.stop_deadline:g} s ({record.reason})"
    return "nothing_to_close" if nothing_to_close else "failed"


def _attempt_share(budget: Deadline, attempts_left: int) -> Deadline:
    """One stop attempt's part of what is left of the budget. An attempt whose outcome is
    unknown looks its stop up for this long, then the next goes out under a new id (two
    reduce-only stops are harmless; the spare is cancelled once one is live), rather than
    waiting out `lookup_grace` for leave to resend the same one: under a burst of 5xx that
    wait spent the whole budget on one attempt."""
    return Deadline(budget.remaining / max(1, attempts_left))


async def protect(
    ctx: ActorContext, record: PositionRecord, qty: float, seen: Position | None, sent_at: float
) -> ProtectOutcome:
    """Take a record in `open` or `unverified` to protected, or to its end, and record which.

    ``qty`` is the size to protect; ``seen`` a post-fill position snapshot if one was seen.
    An `unverified` record stays `unverified` (the audit owns it) but gets its stop.
    """
    if record.protection is Protection.ATTACHED_REQUESTED:
        view = await confirm_attached_stop(ctx, record, seen)
    else:
        view = read_position(freshest_position(ctx, record.symbol, seen), record)
    if view == "flat" or (view != "stop_on" and ctx.board.executions(record.symbol, record.sent_ms)):
        # The venue says it is gone, or fills arrived since: look for the proof (I1).
        exited = await _exit_if_proven(ctx, record, ask_rest=view == "flat")
        if exited is not None:
            return exited
    if view == "stop_on":
        return await _protected(ctx, record, Protection.ATTACHED_CONFIRMED, sent_at)
    if record_stop_covers_any_size(record):
        # The whole-position stop armed while the entry's outcome was unknown is live and
        # covers whatever filled: a second would only be refused (one per side).
        return await _protected(ctx, record, record.protection, sent_at)
    if record.protection is Protection.ATTACHED_REQUESTED:
        log.warning("%s: attached stop %s; placing a separate stop", record.symbol,
                    "missing" if view == "stop_off" else "not confirmed")
    return await protect_with_stop_order(ctx, record, qty, sent_at)


async def protect_with_stop_order(
    ctx: ActorContext, record: PositionRecord, qty: float, sent_at: float | None = None, *, replacing: bool = False
) -> ProtectOutcome:
    """A separate reduce-only stop for ``qty``, or the position's end: a stop that fills at
    once is the venue closing it; a stop that cannot be placed means closing it ourselves.
    ``replacing``: the caller cancels the record's current stop once this one is live."""
    record.protection = Protection.NONE
    record.stop_scope = ""
    result = await place_stop(ctx, record, qty, replacing=replacing)
    match result:
        case "live":
            return await _protected(ctx, record, Protection.STOP_ORDER, sent_at)
        case "armed_already":
            record.stop_scope = "whole_position"
            return await _protected(ctx, record, Protection.STOP_ORDER, sent_at)
        case "filled":
            exited = await _exit_if_proven(ctx, record, ask_rest=True)
            if exited is not None:
                return exited
            # The executions do not show all of it closed yet: whatever is left is closed
            # reduce-only (the venue refuses it if nothing is), never left to a spent stop.
            return await emergency_close(ctx, record, qty)
        case "nothing_to_close" if record.state is State.UNVERIFIED:
            await ctx.save(record, f"left unverified for the audit: {record.reason}")
            return NothingToProtect()
        case "would_trigger" | "failed" | "nothing_to_close":
            return await emergency_close(ctx, record, qty)
    assert_never(result)


async def _exit_if_proven(ctx: ActorContext, record: PositionRecord, *, ask_rest: bool) -> ExitedOnVenue | None:
    """Settle the record if `prove_gone` proves the position gone (I1)."""
    gone = await prove_gone(ctx, record, ask_rest=ask_rest)
    if gone is None:
        return None
    await settle_closed(ctx, record, gone, "filled, then closed on the venue by a stop or a liquidation")
    return ExitedOnVenue(exit_qty=gone.exits)


async def _protected(ctx: ActorContext, record: PositionRecord, protection: Protection,
                     sent_at: float | None) -> Protected:
    record.protection = protection
    if sent_at is not None:
        record.sent_to_protected_ms = round((anyio.current_time() - sent_at) * 1000, 1)
    record.protected_at = utc_now()
    if record.state is State.OPEN:
        record.transition(State.PROTECTED)
    seen = attached_take_profit_seen(ctx, record) if protection is Protection.ATTACHED_CONFIRMED else None
    shown = {True: f"; take-profit {record.take_profit:g} seen on the position",
             False: f"; take-profit {record.take_profit:g} NOT on the position", None: ""}[seen]
    await ctx.save(record, f"stop live ({protection}){shown}")
    if seen is False:
        await ctx.alert(record.symbol, f"take-profit {record.take_profit:g} was attached to the entry but the"
                                       " venue's position does not show it; the position keeps its stop")
    await arm_take_profit(ctx, record)  # only now: protection first, never the other way round
    return Protected(protection=protection)


async def emergency_close(ctx: ActorContext, record: PositionRecord, qty: float) -> ClosedInstead:
    """No stop holds the position (none could be placed, or the one on it did not fill):
    close it reduce-only rather than leave it bare. ``record.reason`` says why."""
    why = record.reason
    record.protection = Protection.NONE
    record.partial_close_qty = 0.0  # a partial close cut short by it ends as a close of it all
    if record.state not in CLOSING_STATES:
        record.transition(State.EMERGENCY_CLOSING)
    await ctx.save(record, f"emergency close: {why}")
    await ctx.alert(record.symbol, f"emergency close: {why}")
    outcome = await close_position(ctx, record, id_key=close_key(record), qty=qty)
    # A stop of ours may still be armed (one that did not fill, one whose answer was lost):
    # `settle_closed` cancels it.
    await settle_closed(ctx, record, outcome, f"emergency close ({why})")
    return ClosedInstead(outcome=outcome)
