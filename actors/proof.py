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

"Not in the list" is never proof. The size held is the record's size or the entry's own
fills, whichever is larger: a lagging snapshot never shrinks it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal

import msgspec

from posguard.actors.context import ActorContext
from posguard.actors.records import PositionRecord, State
from posguard.streams.venue.errors import VenueUnavailable
from posguard.streams.venue.events import Execution, Order, Position, closing_side, position_side_of
from posguard.streams.venue.markets import QTY_TOLERANCE

__all__ = ["Gone", "GoneBy", "entry_qty", "exit_qty", "outlives", "prove_gone", "proven_gone"]

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

    @property
    def state(self) -> State:
        """`closed_externally` when the venue's own closes (a stop, a liquidation) account for
        the whole size; `closed` when our close did (or the venue refused to reduce more)."""
        external = self.exits - self.ours
        return State.CLOSED_EXTERNALLY if self.held > QTY_TOLERANCE and external >= self.held - QTY_TOLERANCE else State.CLOSED

    def describe(self) -> str:
        match self.by:
            case "exits":
                return f"exits {self.exits:g} of {self.held:g} (ours {self.ours:g})"
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


def entry_qty(record: PositionRecord, executions: Iterable[Execution]) -> float:
    """Quantity the entry order itself filled, by its executions."""
    return sum(e.qty for e in _after_entry(record, executions).values() if e.client_order_id == record.client_order_id)


def proven_gone(
    record: PositionRecord,
    executions: Iterable[Execution],
    position: Position | None,
    *,
    closes: Iterable[Order] = (),
    refused_ms: int = 0,
) -> Gone | None:
    """Whether the evidence proves the venue's position for ``record`` gone, and by what.

    ``position``: the freshest snapshot of the symbol known (None: none; absence proves
    nothing). ``closes``: our own close orders, as last seen (their fills count as exits even
    before their executions are listed). ``refused_ms``: venue time at which the venue refused
    our reduce-only order for having nothing to reduce (0: it did not).
    """
    executions = list(executions)
    closes = [c for c in closes if c.filled > QTY_TOLERANCE]
    by_close: dict[str, float] = {}
    for execution in _after_entry(record, executions).values():
        for close in closes:
            if execution.order_id == close.order_id or execution.client_order_id == close.client_order_id:
                by_close[close.order_id] = by_close.get(close.order_id, 0.0) + execution.qty
    ours_listed = sum(by_close.values())
    ours = sum(max(c.filled, by_close.get(c.order_id, 0.0)) for c in closes)
    exits = exit_qty(record, executions) - ours_listed + ours
    held = max(record.filled_qty or record.qty, entry_qty(record, executions))
    last_close_ms = max((c.ts_ms for c in closes), default=0)
    last_close_ms = max([last_close_ms] + [e.ts_ms for e in executions
                                           if any(e.order_id == c.order_id for c in closes)])

    def gone(by: GoneBy, flat_ms: int) -> Gone:
        return Gone(by=by, held=held, exits=exits, ours=ours, flat_ms=flat_ms)

    if refused_ms:
        return gone("nothing_to_reduce", refused_ms)
    if position is not None and not position.is_open and last_close_ms and position.ts_ms >= last_close_ms:
        return gone("flat_after_close", position.ts_ms)
    if exits >= held - QTY_TOLERANCE:
        exit_side = closing_side(position_side_of(record.side))
        last_exit_ms = max((e.ts_ms for e in _after_entry(record, executions).values()
                            if e.side == exit_side and e.client_order_id != record.client_order_id),
                           default=last_close_ms)
        return gone("exits", max(last_exit_ms, last_close_ms))
    return None


def outlives(record: PositionRecord, position: Position) -> bool:
    """Whether a venue position contradicts a record that is no longer live: it changed
    after the venue was last proven flat (an older snapshot is a lagging list showing what
    the record's proof already ended). Without a timestamp it always does."""
    return position.ts_ms == 0 or position.ts_ms > record.flat_ms


async def prove_gone(
    ctx: ActorContext,
    record: PositionRecord,
    *,
    ask_rest: bool,
    closes: Iterable[Order] = (),
    refused_ms: int = 0,
) -> Gone | None:
    """`proven_gone` on everything known: the pushed executions and position, and (with
    ``ask_rest``) the venue's execution list."""
    executions = ctx.board.executions(record.symbol, record.sent_ms)
    if ask_rest:
        try:
            ctx.count_rest(record, "fetch_executions")
            executions = executions + await ctx.venue.fetch_executions(record.symbol, record.sent_ms)
        except VenueUnavailable as exc:
            log.warning("%s: could not read executions: %s", record.symbol, exc)
    return proven_gone(record, executions, ctx.board.position(record.symbol), closes=closes, refused_ms=refused_ms)
