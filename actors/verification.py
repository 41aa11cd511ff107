"""Deciding what an entry order did, from evidence and never from absence (I1).

The seed bot slept, asked for the position list, found nothing and concluded "no position".
Here, "nothing found yet" never decides anything. A verdict is reached only when:

* the order is final with nothing filled                     -> `Rejected`
* its fill is complete, and executions show it closed again -> `ClosedExternally`
* it filled (order state, executions or a position we see)   -> `Filled`
* none of the above by the hard deadline                     -> `Unverified` (protect, audit)

Evidence is gathered first from pushes (the in-memory board) up to the push deadline, or
until the stream is known to be unhealthy; then over REST, in one fixed order (order by client
order id, executions, the position list) with backoff and jitter, still accepting pushes that
arrive meanwhile.
"""

from __future__ import annotations

import logging
from typing import Literal

import anyio
import msgspec

from posguard.actors.belonging import belongs_to
from posguard.actors.context import ActorContext
from posguard.actors.proof import exit_qty
from posguard.actors.records import PositionRecord
from posguard.streams.backoff import Deadline
from posguard.streams.ingestion.evidence import newer_order, newer_position
from posguard.streams.venue.errors import VenueUnavailable
from posguard.streams.venue.events import Execution, Order, Position, position_side_of
from posguard.streams.venue.markets import QTY_TOLERANCE

__all__ = [
    "ClosedExternally",
    "EntryEvidence",
    "Filled",
    "Rejected",
    "Source",
    "Unverified",
    "Verdict",
    "ask_over_rest",
    "partly_filled",
    "verify_entry",
]

log = logging.getLogger("posguard.actor")

Source = Literal["push", "rest"]


class Filled(msgspec.Struct, frozen=True, tag="filled"):
    """The entry filled and, as far as the evidence shows, is (partly) still open."""

    filled_qty: float
    open_qty: float
    avg_price: float
    source: Source
    complete: bool
    """False when the deadline came while the order was still filling: size is a lower bound."""
    position_seen: Position | None
    """A venue position snapshot taken after the fill, if one was seen (it carries the stop)."""


class ClosedExternally(msgspec.Struct, frozen=True, tag="closed_externally"):
    filled_qty: float
    exit_qty: float
    avg_price: float
    source: Source


class Rejected(msgspec.Struct, frozen=True, tag="rejected"):
    reason: str
    source: Source


class Unverified(msgspec.Struct, frozen=True, tag="unverified"):
    reason: str


Verdict = Filled | ClosedExternally | Rejected | Unverified


class EntryEvidence:
    """Everything known about one entry order, merged from pushes and REST answers."""

    def __init__(self, record: PositionRecord) -> None:
        self.record = record
        self.order: Order | None = None
        self.fills: dict[str, Execution] = {}
        self.exits: dict[str, Execution] = {}
        """Fills on the symbol since the entry was sent that are not the entry's (`exit_qty` counts the closing side)."""
        self.position: Position | None = None
        self.recorded = 0.0
        """The record's own proven fill (`take_recorded_fill`)."""
        self.source: Source = "push"

    def take_order(self, order: Order | None, source: Source) -> None:
        if order is None or not belongs_to(self.record, order):
            return
        merged = newer_order(self.order, order)
        if merged is not self.order:
            self.order = merged
            self.source = source

    def take_executions(self, executions: list[Execution], source: Source) -> None:
        coid = self.record.client_order_id
        for execution in executions:
            if execution.ts_ms < self.record.sent_ms or not belongs_to(self.record, execution):
                continue
            if execution.client_order_id == coid:
                if execution.exec_id not in self.fills:
                    self.fills[execution.exec_id] = execution
                    self.source = source
            else:
                self.exits.setdefault(execution.exec_id, execution)

    def take_position(self, position: Position | None, source: Source) -> None:
        """Only a position of our symbol, seen after we sent, says anything about our fill; of
        two snapshots the later state counts, whichever arrived last."""
        if position is None or position.ts_ms < self.record.sent_ms or not belongs_to(self.record, position):
            return
        if newer_position(self.position, position) is position:
            ours = position.is_open and position.side == position_side_of(self.record.side)
            if ours and self.filled_qty() <= QTY_TOLERANCE:
                self.source = source
            self.position = position

    def take_recorded_fill(self) -> None:
        """The fill the record holds from before (the answer to the send, written with the
        record in `submitted`): proven then, so a floor now, whatever a restart forgot."""
        if self.record.filled_qty > self.recorded + QTY_TOLERANCE:
            self.recorded = self.record.filled_qty
            if self.filled_qty() <= self.recorded:
                self.source = "rest"

    def take_board(self, ctx: ActorContext) -> None:
        board = ctx.board
        self.take_order(board.order(self.record.client_order_id), "push")
        self.take_executions(board.fills(self.record.client_order_id), "push")
        self.take_executions(board.executions(self.record.symbol, self.record.sent_ms), "push")
        self.take_position(board.position(self.record.symbol), "push")

    # -- reading the evidence ---------------------------------------------------------------

    def visible_position(self) -> Position | None:
        position = self.position
        if position is not None and position.is_open and position.side == position_side_of(self.record.side):
            return position
        return None

    def filled_qty(self) -> float:
        by_order = self.order.filled if self.order is not None else 0.0
        by_fills = sum(e.qty for e in self.fills.values())
        visible = self.visible_position()
        by_position = visible.size + self.exits_shown_by(visible) if visible is not None else 0.0
        return max(by_order, by_fills, min(by_position, self.record.qty), self.recorded)

    def exits_shown_by(self, position: Position) -> float:
        """The exits a position snapshot already shows (those up to its time): its size plus
        these is what the entry had filled then. An exit after the snapshot (a stop-out while
        the entry still fills) did not lower it, and counting it too would call the entry
        filled by more than it was, complete, while its last part is still to come (seed 173
        of the fault schedules). A snapshot without a time shows them all."""
        if not position.ts_ms:
            return self.exit_qty()
        return exit_qty(self.record, (e for e in self.exits.values() if e.ts_ms <= position.ts_ms))

    def exit_qty(self) -> float:
        return exit_qty(self.record, self.exits.values())

    def avg_price(self) -> float:
        if self.order is not None and self.order.avg_price:
            return self.order.avg_price
        if self.recorded and self.record.entry_price:
            return self.record.entry_price
        qty = sum(e.qty for e in self.fills.values())
        if qty > 0:
            return sum(e.qty * e.price for e in self.fills.values()) / qty
        visible = self.visible_position()
        return visible.entry_price if visible is not None else 0.0

    def fill_complete(self) -> bool:
        filled = self.filled_qty()
        return (self.order is not None and self.order.is_final) or filled >= self.record.qty - QTY_TOLERANCE

    def decide(self, *, final: bool) -> Verdict | None:
        """The verdict the evidence supports, or None to keep looking (unless ``final``)."""
        filled = self.filled_qty()
        if filled <= QTY_TOLERANCE:
            if self.order is not None and self.order.is_final:
                return Rejected(f"entry order {self.order.status} with nothing filled", self.source)
            if final:
                return Unverified("no evidence of the entry order's fate by the verification deadline")
            return None
        if not self.fill_complete() and not final:
            return None
        exit_qty = self.exit_qty()
        if exit_qty >= filled - QTY_TOLERANCE:
            if not self.fill_complete():
                # Exits cover what is known filled, but the order may have filled more after
                # them (a stop-out between two parts reopens the position): "closed" would be
                # concluded from the absence of the rest.
                return Unverified(
                    f"filled at least {filled} and closed {exit_qty} by the deadline, but the entry order's "
                    "final fill is unknown: the rest may be open"
                )
            return ClosedExternally(filled, exit_qty, self.avg_price(), self.source)
        return Filled(
            filled_qty=filled,
            open_qty=filled - exit_qty,
            avg_price=self.avg_price(),
            source=self.source,
            complete=self.fill_complete(),
            position_seen=self.visible_position(),
        )


async def verify_entry(
    ctx: ActorContext, record: PositionRecord, sent_at: float, acknowledged: Order | None = None
) -> Verdict:
    """Wait for pushed evidence, fall back to REST, decide. ``sent_at`` is anyio time.

    ``acknowledged``: the venue's answer to the send (or the lookup that stood for it): once
    the pushes are late, the first REST evidence, before anything is asked again. Binance
    answers a market entry with its final result (ccxt sends ``newOrderRespType=RESULT``;
    "MARKET order: the final FILLED result of the order will be returned directly", New
    Order, USD-M futures REST docs): a fill it reports is the venue's word, as good as the
    same order read back by client id. Without it, an entry whose pushes are lost waits for
    lists that may lag past the hard deadline, bare on a venue without attached stops."""
    settings = ctx.settings.verification
    evidence = EntryEvidence(record)
    push_deadline = Deadline(sent_at + settings.push_deadline - anyio.current_time())
    hard_deadline = Deadline(sent_at + settings.hard_deadline - anyio.current_time())

    while True:
        evidence.take_board(ctx)
        verdict = evidence.decide(final=False)
        if verdict is not None:
            return verdict
        if push_deadline.passed or not ctx.board.is_healthy():
            break
        with anyio.move_on_after(min(push_deadline.remaining, ctx.board.seconds_until_stale())):
            await ctx.board.wait_for_change(record.symbol)

    reason = "stream unhealthy" if not ctx.board.is_healthy() else "push late"
    evidence.take_order(acknowledged, "rest")
    evidence.take_recorded_fill()
    verdict = evidence.decide(final=False)
    if verdict is not None:
        log.info("%s: %s: %s; the venue's answer to the send decides", record.symbol, record.client_order_id, reason)
        return verdict
    log.info("%s: %s: %s, asking over REST", record.symbol, record.client_order_id, reason)
    delays = settings.backoff.delays(ctx.rng)
    while True:
        verdict = await ask_over_rest(ctx, record, evidence) or partly_filled(evidence)
        if verdict is not None:
            return verdict
        if hard_deadline.passed:
            return evidence.decide(final=True) or Unverified("verification deadline passed")
        # Sleep the backoff, but a push that lands meanwhile is read at once.
        with anyio.move_on_after(min(next(delays), hard_deadline.remaining)):
            await ctx.board.wait_for_change(record.symbol)
        evidence.take_board(ctx)
        verdict = evidence.decide(final=False)
        if verdict is not None:
            return verdict


def partly_filled(evidence: EntryEvidence) -> Filled | None:
    """Past the push deadline, a fill seen (executions, a position) of an entry order whose
    state nobody has told us is decided at once: `Filled` with ``complete=False`` (its size a
    lower bound), so what is open is protected now (the entry path sizes that stop for all the
    entry may still fill) instead of sitting bare until the hard deadline, waiting for an order
    state that may not come (Binance's REST calls a fresh order unknown for tens of seconds;
    a thin book fills in parts meanwhile). An order known to be filling is waited for as
    before: its own updates say when it is done. Exits covering the known part decide nothing
    yet: the rest may be open or may not (`EntryEvidence.decide`)."""
    if evidence.order is not None or evidence.filled_qty() <= QTY_TOLERANCE:
        return None
    verdict = evidence.decide(final=True)
    return verdict if isinstance(verdict, Filled) else None


async def ask_over_rest(ctx: ActorContext, record: PositionRecord, evidence: EntryEvidence) -> Verdict | None:
    """One round of the one unified way to ask: order, executions, positions. Stops early."""
    venue = ctx.venue
    try:
        evidence.take_order(await ctx.fetch_order(record, record.client_order_id), "rest")
        if evidence.order is not None and evidence.order.filled <= QTY_TOLERANCE and evidence.order.is_final:
            return evidence.decide(final=False)
        ctx.count_rest(record, "fetch_executions")
        evidence.take_executions(await venue.fetch_executions(record.symbol, record.sent_ms), "rest")
        verdict = evidence.decide(final=False)
        if verdict is not None and not isinstance(verdict, Filled):
            return verdict
        if verdict is not None and verdict.position_seen is not None:
            return verdict
        evidence.take_position(await ctx.listed_position(record.symbol, record), "rest")
        return evidence.decide(final=False)
    except VenueUnavailable as exc:
        log.warning("%s: REST verification call failed (%s); backing off", record.symbol, exc)
        evidence.take_board(ctx)
        return evidence.decide(final=False)
