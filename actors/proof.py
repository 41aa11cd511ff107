"""When the venue's position for a record is proven gone, and by what: the one home of I1's
"closed on proof".

Every writer of a gone state (our own close, a stop or liquidation seen while verifying or
protecting, a flat push between audits, an audit's `not_visible`) asks `proven_gone`, and
every exit quantity is `exit_qty`. Proof is one of:

* ``exits``: fills that are not our entry, on the closing side since the entry was sent,
  sum to the size held (a stop, a liquidation, our own close orders);
* ``flat_after_close``: a position snapshot saying flat, taken at or after our own close's
  last fill (I1: "the exchange confirms it flat after our own close");
* ``nothing_to_reduce``: the venue refused our reduce-only order because it holds nothing.

None of them while the entry order is known to be still filling (the position may grow
again). "Not in the list" is never proof. The size held is the record's size or the entry's own
fills, whichever is larger: a lagging snapshot never shrinks it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal

import msgspec

from posguard.actors import ids
from posguard.actors.context import ActorContext
from posguard.actors.records import PositionRecord, State
from posguard.streams.ingestion.evidence import newer_order
from posguard.streams.venue.errors import VenueUnavailable
from posguard.streams.venue.events import Execution, Order, Position, closing_side, position_side_of
from posguard.streams.venue.markets import QTY_TOLERANCE

__all__ = [
    "Gone",
    "GoneBy",
    "Known",
    "Ledger",
    "entry_qty",
    "exit_qty",
    "known",
    "ledger",
    "never_reached",
    "outlives",
    "prove_gone",
    "proven_gone",
    "reduced_by",
    "settle_window",
    "take_profit_qty",
    "trace_of_entry",
    "unknown_grace_passed",
]

log = logging.getLogger("posguard.actor")

GoneBy = Literal["exits", "flat_after_close", "nothing_to_reduce"]


class Gone(msgspec.Struct, frozen=True, kw_only=True):
    """The proof that the venue no longer holds a record's position."""

    by: GoneBy
    held: float
    """The size that was held: the record's, or the entry's fills if more."""
    exits: float
    """Quantity closed by fills that are not our entry (stops, liquidation, our closes)."""
    ours: float
    """Of ``exits``, what our own close orders filled."""
    flat_ms: int
    """Venue time (ms) at which the venue was proven flat: a position snapshot older than
    this that still shows the position is lag, not a position (see `outlives`)."""
    take_profit: float = 0.0
    """Of ``exits``, what the record's take-profit filled (`take_profit_qty`)."""
    partly_closed: float = 0.0
    """Of ``exits``, what our earlier partial closes took (`PositionRecord.closed_qty`): the
    position that was left to end is ``held - partly_closed``."""

    @property
    def state(self) -> State:
        """`closed_by_take_profit` when the take-profit's fills account for what was left
        after our partial closes; else `closed_externally` when the venue's own closes (a stop,
        a liquidation, a take-profit with a stop) do; `closed` when our close did (or the venue
        refused to reduce more)."""
        if self.held <= QTY_TOLERANCE:
            return State.CLOSED
        left = self.held - self.partly_closed
        if self.take_profit >= left - QTY_TOLERANCE:
            return State.CLOSED_BY_TAKE_PROFIT
        external = self.exits - self.ours - self.partly_closed
        return State.CLOSED_EXTERNALLY if external >= left - QTY_TOLERANCE else State.CLOSED

    def describe(self) -> str:
        match self.by:
            case "exits":
                by_tp = f", take-profit {self.take_profit:g}" if self.take_profit else ""
                return f"exits {self.exits:g} of {self.held:g} (ours {self.ours:g}{by_tp})"
            case "flat_after_close":
                return f"the venue shows it flat after our close (exits {self.exits:g} of {self.held:g})"
            case "nothing_to_reduce":
                return f"the venue holds nothing to reduce (exits seen {self.exits:g} of {self.held:g})"


def _after_entry(record: PositionRecord, executions: Iterable[Execution]) -> dict[str, Execution]:
    return {e.exec_id: e for e in executions if e.symbol == record.symbol and e.ts_ms >= record.sent_ms}


def exit_qty(record: PositionRecord, executions: Iterable[Execution]) -> float:
    """Quantity closed since the entry was sent: fills on the closing side that are not the
    entry's own (each fill counted once, however many times it was seen)."""
    side = closing_side(position_side_of(record.side))
    return sum(e.qty for e in _after_entry(record, executions).values()
               if e.side == side and e.client_order_id != record.client_order_id)


def take_profit_qty(record: PositionRecord, executions: Iterable[Execution]) -> float:
    """Quantity the record's take-profit closed: the one rule of which exits are the
    take-profit's. A fill of its own order (`ids` role ``take_profit``, Binance), or a fill the
    venue marks as made by a take-profit it holds (`Execution.by_take_profit`: Bybit's attached
    one, which fills under no client order id), on the closing side since the entry was sent."""
    if not record.take_profit:
        return 0.0
    side = closing_side(position_side_of(record.side))
    return sum(e.qty for e in _after_entry(record, executions).values()
               if e.side == side and e.client_order_id != record.client_order_id
               and (e.by_take_profit
                    or ids.same_intent(e.client_order_id, record.client_order_id, role="take_profit")))


def reduced_by(record: PositionRecord, close_key_id: str, executions: Iterable[Execution],
               closes: Iterable[Order] = ()) -> float:
    """What one close's orders filled (every attempt of the close whose ids share
    ``close_key_id``'s stem, `ids` role ``close``) since the entry was sent: their executions,
    each counted once, and what an order of theirs reports filled beyond its listed executions
    (a fill is in the order's state before its executions are listed; Binance's trade list
    carries no client ids). The proof of a partial close's reduction."""
    fills = [e for e in _after_entry(record, executions).values()
             if ids.same_intent(e.client_order_id, close_key_id, role="close")]
    orders = {c.client_order_id: c for c in closes
              if ids.same_intent(c.client_order_id, close_key_id, role="close") and c.ts_ms >= record.sent_ms}
    unlisted = sum(max(0.0, c.filled - sum(e.qty for e in fills if e.client_order_id == coid))
                   for coid, c in orders.items())
    return sum(e.qty for e in fills) + unlisted


def entry_qty(record: PositionRecord, executions: Iterable[Execution]) -> float:
    """Quantity the entry order itself filled, by its executions."""
    return sum(e.qty for e in _after_entry(record, executions).values() if e.client_order_id == record.client_order_id)


class Ledger(msgspec.Struct, frozen=True, kw_only=True):
    """What the executions (and our close orders) say was held and closed, counted once."""

    held: float
    """The record's size, or the entry's own fills if more: a snapshot never lowers it."""
    exits: float
    """Closed since the entry was sent by fills that are not the entry's."""
    ours: float
    """Of ``exits``, what our own close orders filled."""
    last_exit_ms: int
    last_close_ms: int
    """Venue time of our close's last fill (0: none)."""
    take_profit: float = 0.0
    """Of ``exits``, what the take-profit closed (`take_profit_qty`)."""

    @property
    def open_qty(self) -> float:
        """What the evidence says is still held (0 once the exits cover it)."""
        return max(0.0, self.held - self.exits)


def ledger(record: PositionRecord, executions: Iterable[Execution], closes: Iterable[Order] = (),
           entry: Order | None = None) -> Ledger:
    """Held and closed, from the executions since the entry was sent, the entry order's own
    state (``entry``: its fill may be listed before its executions) and our close orders as
    last seen: a close's fill counts even before its executions are listed, and executions
    of our closes (`ids` role ``close``, any attempt) count as ours."""
    after = _after_entry(record, executions)
    closes = [c for c in closes if c.filled > QTY_TOLERANCE and c.ts_ms >= record.sent_ms]  # not an older record's
    close_ids = {c.client_order_id for c in closes}
    our_fills = [e for e in after.values()
                 if any(ids.same_intent(e.client_order_id, c, role="close") for c in close_ids)]
    unlisted = sum(max(0.0, c.filled - sum(e.qty for e in our_fills if e.client_order_id == c.client_order_id))
                   for c in closes)
    side = closing_side(position_side_of(record.side))
    return Ledger(
        held=max(record.filled_qty or record.qty, entry_qty(record, after.values()),
                 entry.filled if entry is not None and entry.client_order_id == record.client_order_id else 0.0),
        exits=exit_qty(record, after.values()) + unlisted,
        ours=sum(e.qty for e in our_fills) + unlisted,
        last_exit_ms=max((e.ts_ms for e in after.values()
                          if e.side == side and e.client_order_id != record.client_order_id), default=0),
        last_close_ms=max([c.ts_ms for c in closes] + [e.ts_ms for e in our_fills], default=0),
        take_profit=take_profit_qty(record, after.values()),
    )


def proven_gone(
    record: PositionRecord,
    executions: Iterable[Execution],
    position: Position | None,
    *,
    closes: Iterable[Order] = (),
    entry: Order | None = None,
    entry_settled: bool = True,
    refused_ms: int = 0,
) -> Gone | None:
    """Whether the evidence proves the venue's position for ``record`` gone, and by what.

    ``position``: the freshest snapshot of the symbol known (None: none; absence proves
    nothing). ``closes``, ``entry``: our close orders and the entry order as last seen (see
    `ledger`). ``entry_settled``: the entry order is known not to be working any more (final,
    or unknown to the venue); while it may still be filling, whatever is flat now may not stay
    flat. ``refused_ms``: venue time at which the venue refused our reduce-only order for
    having nothing to reduce (0: it did not).
    """
    if not entry_settled or (entry is not None and entry.client_order_id == record.client_order_id
                             and not entry.is_final):
        return None
    book = ledger(record, executions, closes, entry)

    def gone(by: GoneBy, flat_ms: int) -> Gone:
        return Gone(by=by, held=book.held, exits=book.exits, ours=book.ours, flat_ms=flat_ms,
                    take_profit=book.take_profit, partly_closed=min(record.closed_qty, book.held))

    if refused_ms:
        return gone("nothing_to_reduce", refused_ms)
    if position is not None and not position.is_open and book.last_close_ms and position.ts_ms >= book.last_close_ms:
        return gone("flat_after_close", position.ts_ms)
    if book.exits >= book.held - QTY_TOLERANCE:
        return gone("exits", max(book.last_exit_ms, book.last_close_ms))
    return None


def outlives(record: PositionRecord, position: Position) -> bool:
    """Whether a venue position contradicts a record that is no longer live: it changed at
    or after the moment the venue was last proven flat (our close's own fill moves the
    position at that very ms, so a snapshot of that ms showing a size is what the close left).
    An older snapshot is a lagging list showing what the proof already ended. Without a
    timestamp, or without any proof, it always does."""
    return position.ts_ms == 0 or position.ts_ms >= record.flat_ms


class Known(msgspec.Struct, frozen=True, kw_only=True):
    """Everything known of a record's exits at one moment (the input of `proven_gone`)."""

    executions: list[Execution]
    entry: Order | None
    entry_settled: bool
    """The entry order is final, or the venue answered that it does not know it."""
    position: Position | None

    def proves(self, record: PositionRecord, *, closes: Iterable[Order] = (), refused_ms: int = 0) -> Gone | None:
        return proven_gone(record, self.executions, self.position, closes=closes, entry=self.entry,
                           entry_settled=self.entry_settled, refused_ms=refused_ms)

    def left(self, record: PositionRecord, closes: Iterable[Order] = ()) -> float:
        """What this evidence says is still open."""
        return ledger(record, self.executions, closes, self.entry).open_qty


async def known(ctx: ActorContext, record: PositionRecord, *, ask_rest: bool) -> Known:
    """What was pushed (fills since the entry was sent, the entry order, the position), and
    with ``ask_rest`` the venue's execution list and entry order too (a venue that cannot
    answer adds nothing)."""
    executions = ctx.board.executions(record.symbol, record.sent_ms)
    entry = ctx.board.order(record.client_order_id)
    unknown_to_venue = False
    if ask_rest:
        try:
            ctx.count_rest(record, "fetch_executions")
            executions = executions + await ctx.venue.fetch_executions(record.symbol, record.sent_ms)
            fetched = await ctx.fetch_order(record, record.client_order_id)
            entry = newer_order(entry, fetched) if fetched is not None else entry
            unknown_to_venue = entry is None
        except VenueUnavailable as exc:
            log.warning("%s: could not read executions and the entry order: %s", record.symbol, exc)
    settled = (ids.is_internal(record.intent_id)  # adopted: there is no entry of ours that could still fill
               or (entry is not None and entry.is_final)
               or entry_qty(record, executions) >= record.qty - QTY_TOLERANCE
               or (unknown_to_venue and _unknown_means_not_working(ctx, record, executions)))
    return Known(executions=executions, entry=entry, entry_settled=settled, position=ctx.board.position(record.symbol))


def _unknown_means_not_working(ctx: ActorContext, record: PositionRecord, executions: Iterable[Execution]) -> bool:
    """Whether the venue's "no such order" may be taken to mean the entry is not working: only
    if nothing says it ever reached the venue (no acknowledgement, no fill, no execution) and
    the venue's grace has passed since it was sent. A venue's REST lags its own orders (seconds
    on Bybit, tens on Binance): "unknown" of an entry known to have filled is that lag, and a
    close concluded from it left the entry's later parts open (a fault schedule found it)."""
    if record.order_id or record.filled_qty > QTY_TOLERANCE or entry_qty(record, executions) > QTY_TOLERANCE:
        return False
    return unknown_grace_passed(ctx, record)


async def trace_of_entry(ctx: ActorContext, record: PositionRecord) -> str | None:
    """What says the entry may have reached the venue though the venue calls it unknown, or
    None: the silence `UnknownOrderRule.entry_needs_silence` asks for. Any execution on the
    symbol since the send counts, not only those under the entry's id: a venue's trade list may
    not carry client ids (Binance ``userTrades``), and the actor owns the symbol (I4), so no
    other order of ours should be filling there. A position counts if open, or if dated since
    the send (opened and closed again). Raises `VenueUnavailable`."""
    symbol, since = record.symbol, record.sent_ms
    ctx.count_rest(record, "fetch_executions")
    executions = ctx.board.executions(symbol, since) + await ctx.venue.fetch_executions(symbol, since)
    if executions:
        return f"{len(executions)} execution(s) on {symbol} since it was sent"
    seen: list[Position | None] = [ctx.board.position(symbol), await ctx.listed_position(symbol, record)]
    if any(p is not None and (p.is_open or p.ts_ms >= since) for p in seen):
        return f"the {symbol} position changed since it was sent"
    return None


async def never_reached(ctx: ActorContext, record: PositionRecord) -> str | None:
    """Whether an entry the actor gave up on (``unverified``) is proven never to have reached
    the venue; the proof as text, or None. The one home of that verdict (the audit settles the
    record ``rejected`` on it and cancels its stray stop).

    The proof is the venue's own word, asked now, that it has no such order, with nothing of
    ours saying otherwise (no acknowledged order id, no fill, no push of the order), past the
    venue's window (`settle_window`), and then the venue's rule:

    * ids kept for good (`UnknownOrderRule.unknown_is_final`, Bybit): no fill of the entry and
      no open position on the symbol;
    * ids reusable once closed (`UnknownOrderRule.entry_needs_silence`, Binance): the silence
      the resend rule asks for (`trace_of_entry`): no execution on the symbol since the send,
      no position open or dated since.

    Why ``rejected`` and not a resend once the same silence has held (the resend rule would
    allow one): the entry's deadline has passed and its intent was answered (``unverified``);
    the audit repairs what the venue holds, it never opens a position the client is no longer
    waiting for, minutes after the signal, at a price its stop was not set for. And of the two
    ways to be wrong about a silence, ``rejected`` is the one that stays safe: a fill that shows
    later is an orphan the audit adopts and protects (I2), where a resend would open a second
    position (I3). So it is never both: a settled record is never sent again.

    A venue that cannot answer proves nothing (None)."""
    rule = ctx.venue.unknown_order_rule
    if not (rule.unknown_is_final or rule.entry_needs_silence):
        return None
    coid = record.client_order_id
    if record.order_id or record.filled_qty > QTY_TOLERANCE or ctx.board.order(coid) is not None \
            or ctx.board.fills(coid):
        return None
    window = settle_window(ctx)
    if ctx.venue.now_ms() - record.sent_ms < window * 1000:
        return None
    try:
        if await ctx.fetch_order(record, coid) is not None:
            return None
        if rule.entry_needs_silence:
            if await trace_of_entry(ctx, record) is not None:
                return None
            return (f"{coid} still unknown (open and history) over {window:g} s after it was sent, with no execution"
                    f" on {record.symbol} and no position change since")
        ctx.count_rest(record, "fetch_executions")
        if entry_qty(record, await ctx.venue.fetch_executions(record.symbol, record.sent_ms)) > 0:
            return None
        listed = await ctx.listed_position(record.symbol, record)
        if listed is not None and listed.is_open:
            return None
    except VenueUnavailable:
        return None
    return f"{coid} still unknown (open and history) over {window:g} s after it was sent, no fill, no position"


def settle_window(ctx: ActorContext) -> float:
    """Seconds after the send before the audit may take an unknown entry as never placed.

    Where "unknown" is final (Bybit), the venue's entry grace: past it, a venue that refuses a
    reused id for good has had time to list its own order. Where ids are reused and REST calls
    fresh orders unknown for tens of seconds (Binance: 22 s and 62 s measured, against a 60 s
    grace), the grace counts from the entry's hand-off to the audit, its verification deadline:
    the audit never saw the actor's looks, and it has no reason to hurry. Waiting costs a slot
    for a while, since the unverified entry's stop guards whatever appears meanwhile; settling
    early cancels that stop while a fill may still be on its way (the issue's "fill at 61 s")."""
    rule = ctx.venue.unknown_order_rule
    grace = rule.grace_for_entry(ctx.settings.verification.lookup_grace)
    return grace + ctx.settings.verification.hard_deadline if rule.entry_needs_silence else grace


def unknown_grace_passed(ctx: ActorContext, record: PositionRecord) -> bool:
    """Whether the venue's grace for an entry (`UnknownOrderRule.grace_for_entry`) has passed
    since it was sent: before it, the venue calling the entry unknown may be its REST's lag."""
    grace = ctx.venue.unknown_order_rule.grace_for_entry(ctx.settings.verification.lookup_grace)
    return ctx.venue.now_ms() - record.sent_ms >= grace * 1000


async def prove_gone(
    ctx: ActorContext,
    record: PositionRecord,
    *,
    ask_rest: bool,
    closes: Iterable[Order] = (),
    refused_ms: int = 0,
) -> Gone | None:
    """`proven_gone` on everything `known`."""
    return (await known(ctx, record, ask_rest=ask_rest)).proves(record, closes=closes, refused_ms=refused_ms)
