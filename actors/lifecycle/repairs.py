"""Reconciliation of one symbol: the venue's snapshot against the Redis record, and repairs.

`assess` is pure: given what the venue shows and what Redis says, it lists findings. `repair`
carries one out; only the symbol's actor calls it (I4), so a repair never races an intent.
The audit (supervisor/audit.py) takes one snapshot of the whole venue and hands each symbol's
part to its actor; a restarted actor reconciles its own symbol before taking new work.

Findings close a record only on the evidence rules of I1: a record whose position the venue
does not list is checked against the executions; "not in the list" alone changes nothing.
The same rule holds between audits: a position the venue pushes as flat (`follow_venue`) is
recorded closed only when the executions prove it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from posguard.actors import ids
from posguard.actors.context import ActorContext
from posguard.actors.coverage import armed_orders, covered_qty, covers, guards
from posguard.actors.findings import Finding
from posguard.actors.lifecycle import quarantine, stop_fill
from posguard.actors.lifecycle.closing import settle_closed, settle_closed_externally
from posguard.actors.lifecycle.protection import (
    Protected,
    describe_outcome,
    orphan_stop_price,
    protect,
    protect_with_stop_order,
    read_position,
    record_for_venue_position,
)
from posguard.actors.orders import cancel_leftover_stops
from posguard.actors.proof import never_reached, outlives, prove_gone
from posguard.actors.records import (
    IN_FLIGHT_STATES,
    BadRecord,
    PositionRecord,
    RecordDefect,
    State,
    is_protected,
    utc_now,
)
from posguard.actors.verification import ClosedExternally, EntryEvidence, Filled, Rejected, ask_over_rest
from posguard.streams.backoff import Deadline
from posguard.streams.venue.errors import VenueUnavailable
from posguard.streams.venue.events import Order, Position
from posguard.streams.venue.markets import QTY_TOLERANCE

__all__ = ["Resume", "assess", "carry_out", "follow_venue", "reconcile_symbol", "repair"]

log = logging.getLogger("posguard.audit")
actor_log = logging.getLogger("posguard.actor")

Resume = Callable[[], Awaitable[None]]
"""The symbol's actor resuming its in-flight step: an ``in_flight`` finding's repair."""


def assess(
    symbol: str,
    record: PositionRecord | None,
    position: Position | None,
    stops: list[Order],
    *,
    actor_busy: bool,
    defect: RecordDefect | None = None,
) -> list[Finding]:
    """What is wrong with one symbol, from one snapshot. No I/O, no repairs.

    ``defect``: the symbol's hash is not a usable record (``record`` is then None). Its
    symbol is quarantined: one ``bad_record`` finding, and none of its stops is called stale
    (whatever the unreadable record placed keeps guarding its position).
    """
    if defect is not None:
        return [quarantine.assess_quarantined(symbol, defect, position, stops)]
    live = record is not None and record.state.is_live
    stale = _stale_stops(symbol, record if live else None, position, stops)
    stale_ids = {f.stop_client_order_id for f in stale}
    # A stale stop is about to be cancelled, so it covers nothing; and it is cancelled only
    # after the repairs before it (a new stop placed first, never the other way round).
    kept = [s for s in stops if s.client_order_id not in stale_ids]
    findings = _state_findings(symbol, record, position, kept, actor_busy=actor_busy)
    if position is not None and position.stop_price is None and not any(guards(s, position) for s in kept) \
            and not {"orphan", "unprotected"} & {f.kind for f in findings}:
        # Nothing else guards the position and nothing places a stop first (the actor is
        # mid-step): the stale stops that guard it stay until something does.
        guarding = {s.client_order_id for s in stops if guards(s, position)}
        stale = [f for f in stale if f.stop_client_order_id not in guarding]
    return findings + stale


def _stale_stops(symbol: str, owner: PositionRecord | None, position: Position | None,
                 stops: list[Order]) -> list[Finding]:
    """Our stops that no live record owns (``owner``: the live record, if any)."""
    stale = []
    for stop in stops:
        if position is not None and owner is None and guards(stop, position):
            continue  # it holds a position about to be adopted: cancelled once the new stop is live
        owned = owner is not None and ids.same_intent(stop.client_order_id, owner.client_order_id)
        if ids.is_ours(stop.client_order_id) and not owned:
            what = "take-profit" if stop.kind == "take_profit" else "stop"
            stale.append(Finding(
                symbol=symbol, kind="stale_stop", stop_client_order_id=stop.client_order_id,
                seen=f"{what} {stop.client_order_id} armed, but no live record owns it",
                action="cancel it",
            ))
    return stale


def _state_findings(symbol: str, record: PositionRecord | None, position: Position | None, stops: list[Order],
                    *, actor_busy: bool) -> list[Finding]:
    findings: list[Finding] = []
    live = record is not None and record.state.is_live
    if position is not None and not live:
        # A lagging list can still show the position a record has since proven gone: only a
        # position that changed after that proof contradicts it; without a proof, any does.
        if record is None or outlives(record, position):
            was = f"record says {record.state}" if record is not None else "no record"
            findings.append(Finding(
                symbol=symbol, kind="orphan", position=position,
                seen=f"venue holds {position.side} {position.size} at {position.entry_price}; {was}",
                action="adopt it and protect it with a stop",
            ))
        return findings
    if record is None or not live:
        return findings
    if actor_busy:
        return findings  # the actor is mid-step; its own step will settle the record
    if record.state in IN_FLIGHT_STATES:
        findings.append(Finding(symbol=symbol, kind="in_flight", position=position,
                                seen=f"record in {record.state} with no step running",
                                action="look the entry up by client order id and finish verifying it"))
        return findings
    if record.state is State.UNVERIFIED:
        findings.append(Finding(symbol=symbol, kind="unverified", position=position,
                                seen=f"unverified since {record.updated_at}: {record.reason}",
                                action="resolve from order and execution history"))
    if position is None:
        if record.state in (State.OPEN, State.PROTECTED):
            findings.append(Finding(symbol=symbol, kind="not_visible",
                                    seen=f"record {record.state}, venue lists no position",
                                    action="close the record only if executions prove the exit"))
        return findings
    if position.size > record.filled_qty + QTY_TOLERANCE:
        # Only upwards, and against what the entry filled: a smaller size is a lagging list, or
        # exits (a partial close of ours among them: `closed_qty`), which the executions prove
        # and `prove_gone` counts; it never lowers the record's proven fills. Against the open
        # size (`open_size`), a list lagging behind a partial close would raise them.
        findings.append(Finding(symbol=symbol, kind="size_mismatch", position=position,
                                seen=f"venue size {position.size}, record filled_qty {record.filled_qty}",
                                action="take the venue's larger size"))
    if not covers(position, stops):
        findings.append(Finding(symbol=symbol, kind="unprotected", position=position,
                                seen=f"venue position {position.size} covered by stops for {covered_qty(position, stops)}",
                                action="place a reduce-only stop for the whole position"))
    return findings


async def repair(ctx: ActorContext, finding: Finding) -> str:
    """Carry out one finding; returns what was done. Runs inside the symbol's actor."""
    try:
        record = await ctx.store.load_record(finding.symbol)
    except BadRecord as exc:
        return f"not repaired: the record became unusable ({exc}); the next audit quarantines it"
    match finding.kind:
        case "stale_stop":
            try:
                await ctx.venue.cancel_order(finding.symbol, finding.stop_client_order_id)
                return "cancelled"
            except VenueUnavailable as exc:
                return f"cancel failed ({exc}); next audit retries"
        case "orphan":
            assert finding.position is not None
            if record is not None and record.state.is_live:
                return "a live record appeared meanwhile; nothing to adopt"
            return await _adopt(ctx, finding.position)
        case _ if record is None or not record.state.is_live:
            return f"record is {record.state if record else 'gone'} now; nothing to do"
        case "size_mismatch":
            assert finding.position is not None
            if finding.position.size <= record.filled_qty:
                return "the record already holds at least the venue's size; nothing to do"
            # What the venue holds is what is open: the partial closes' part stays counted apart.
            record.filled_qty = round(finding.position.size + record.closed_qty, 12)
            await ctx.save(record, f"audit: size taken from the venue ({finding.position.size} open)")
            return "record updated"
        case "unprotected":
            assert finding.position is not None
            return await _protect_now(ctx, record, finding.position)
        case "unverified":
            return await _resolve(ctx, record, finding.position)
        case "not_visible":
            return await _prove_gone(ctx, record)
    return "no repair for this kind"


async def reconcile_symbol(ctx: ActorContext, symbol: str, resume: Resume) -> list[Finding]:
    """This symbol's own audit: one look at the venue, then the repairs it calls for."""
    position = await ctx.listed_position(symbol)
    stops = armed_orders(await ctx.venue.fetch_open_orders(symbol))
    try:
        record, defect = await ctx.store.load_record(symbol), None
    except BadRecord as exc:
        record, defect = None, exc.defect
    findings = assess(symbol, record, position, stops, actor_busy=False, defect=defect)
    for finding in findings:
        if finding.kind == "in_flight":
            await resume()
            finding.action = "resumed"
        elif finding.kind == "bad_record":
            finding.action = await quarantine.guard(ctx, finding, alert=True)
        else:
            finding.action = await repair(ctx, finding)
        await ctx.store.append_audit(finding)
    return findings


async def carry_out(ctx: ActorContext, finding: Finding, resume: Resume, *, alerted: RecordDefect | None = None) -> str:
    """An audit finding handed to the symbol's actor; returns what was done.

    ``alerted``: the bad record this actor already raised an alert for (one alert per
    defect, not one per audit).
    """
    if finding.kind == "in_flight":
        await resume()
        return "resumed: the entry was looked up and driven on"
    if finding.kind == "bad_record":
        return await quarantine.guard(ctx, finding, alert=finding.defect != alerted)
    if finding.kind == "stop_not_filled":
        return await stop_fill.close_unfilled_stop(ctx, finding)
    return await repair(ctx, finding)


FOLLOWED_STATES = frozenset({State.OPEN, State.PROTECTED, State.UNVERIFIED})
"""Records whose position a flat push may have ended (`follow_venue`)."""


async def follow_venue(ctx: ActorContext, symbol: str) -> None:
    """A live record whose position the venue pushed as flat: find the proof, record it.

    Only executions prove a stop-out or liquidation (I1); a flat push without them
    changes nothing here, and the audit looks again later. Nudges are sent only for symbols
    with a live record (`Store.may_be_live`), and one queued while the record was live is
    dropped here unread once it no longer is (a settled symbol's closing fills).
    """
    if not ctx.store.may_be_live(symbol):
        return
    try:
        record = await ctx.store.load_record(symbol)
    except BadRecord:
        return  # quarantined: the audit guards the venue's position
    if record is None or record.state not in FOLLOWED_STATES:
        return
    if read_position(ctx.board.position(symbol), record) != "flat":
        return
    gone = await prove_gone(ctx, record, ask_rest=True)
    if gone is not None:
        await settle_closed(ctx, record, gone, "closed by the venue (stop or liquidation)")
    else:
        actor_log.warning("%s: venue pushed flat but the executions do not prove it; leaving it to the audit", symbol)


async def _adopt(ctx: ActorContext, position: Position) -> str:
    record = record_for_venue_position(
        ctx, position, intent_id=ids.internal_intent_id("adopt", position.ts_ms),
        stop_price=position.stop_price or orphan_stop_price(ctx, position),
        reason="adopted by the audit: the venue held a position Redis did not know", filled_at=utc_now(),
    )
    await ctx.save(record, "audit: orphan adopted")
    await ctx.alert(position.symbol, f"orphan position adopted: {position.side} {position.size}")
    outcome = await protect(ctx, record, position.size, position, anyio.current_time())
    return f"adopted; {describe_outcome(outcome)} (stop {record.stop_price})"


async def _protect_now(ctx: ActorContext, record: PositionRecord, position: Position) -> str:
    if record.stop_client_order_id:
        # The stop we placed may just not be listed yet: ask for it by id first.
        try:
            known = await ctx.fetch_order(record, record.stop_client_order_id)
        except VenueUnavailable:
            known = None
        if known is not None and covers(position, [known]):
            return f"stop {known.client_order_id} is live (not yet listed) and covers {position.size}; nothing to do"
    outcome = await protect_with_stop_order(ctx, record, position.size)
    if isinstance(outcome, Protected):
        return f"stop {record.stop_client_order_id} placed"
    return describe_outcome(outcome)


async def _resolve(ctx: ActorContext, record: PositionRecord, position: Position | None) -> str:
    evidence = EntryEvidence(record)
    evidence.take_board(ctx)
    evidence.take_position(position, "rest")
    verdict = await ask_over_rest(ctx, record, evidence)
    match verdict:
        case Rejected(reason=reason):
            record.transition(State.REJECTED, f"audit: {reason}")
            await ctx.save(record)
            await cancel_leftover_stops(ctx, record, Deadline(ctx.settings.protection.stop_deadline))
            return "resolved: never filled"
        case ClosedExternally(filled_qty=filled):
            record.filled_qty = filled
            if await settle_closed_externally(ctx, record, f"audit: filled {filled}, closed by the venue"):
                return "resolved: filled and closed by the venue"
            return "the executions do not prove the exit yet; stays unverified and protected"
        case Filled():
            record.filled_qty, record.entry_price = verdict.filled_qty, verdict.avg_price
            record.evidence = "rest"
            settled = State.PROTECTED if is_protected(record) else State.OPEN
            record.transition(settled, "audit: fill confirmed from order history")
            await ctx.save(record)
            return f"resolved: filled {verdict.open_qty}; {record.state}"
    why = await never_reached(ctx, record)  # the one home of that verdict (and of why not a resend)
    if why is not None:
        record.transition(State.REJECTED, f"audit: never reached the venue: {why}")
        await ctx.save(record)
        await cancel_leftover_stops(ctx, record, Deadline(ctx.settings.protection.stop_deadline))
        return "resolved: the entry never reached the venue; its stray stop cancelled"
    return "still no evidence either way; stays unverified and protected"


async def _prove_gone(ctx: ActorContext, record: PositionRecord) -> str:
    gone = await prove_gone(ctx, record, ask_rest=True)
    if gone is None:
        return "the executions do not prove the exit; left open (the list may lag)"
    await settle_closed(ctx, record, gone, "audit: closed by the venue")
    return f"{record.state} ({gone.describe()})"
