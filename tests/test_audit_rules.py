"""The audit's assessment of one symbol (`assess`), a pure function: no I/O, no repairs."""

from __future__ import annotations

from posguard.actors import ids
from posguard.actors.lifecycle.repairs import assess
from posguard.actors.records import PositionRecord, Protection, State
from posguard.streams.venue.events import Order, Position

SYMBOL = "SOL/USDT:USDT"


def stop(client_order_id: str, *, side: str = "sell", qty: float = 1.0, closes_position: bool = False) -> Order:
    return Order(symbol=SYMBOL, order_id="o1", client_order_id=client_order_id, side=side, kind="stop", qty=qty,
                 filled=0.0, avg_price=None, status="open", reduce_only=not closes_position, stop_price=140.0, ts_ms=1,
                 closes_position=closes_position)


def long(size: float = 1.0) -> Position:
    return Position(symbol=SYMBOL, side="long", size=size, entry_price=150.0, stop_price=None, ts_ms=5)


def test_a_stop_of_ours_that_guards_an_unknown_position_is_kept_until_it_is_adopted() -> None:
    """After Redis lost its records, our stop still holds the venue's position: cancelling it
    before the adoption's own stop is live would leave the position bare (I2)."""
    guarding = stop(ids.stop_id("main", "lost-intent", 0))
    findings = assess(SYMBOL, None, long(), [guarding], actor_busy=False)
    assert [f.kind for f in findings] == ["orphan"]


def test_a_stop_of_ours_that_no_live_record_owns_is_stale_once_nothing_needs_it() -> None:
    leftover = stop(ids.stop_id("main", "old-intent", 0))
    assert [f.kind for f in assess(SYMBOL, None, None, [leftover], actor_busy=False)] == ["stale_stop"]
    record = PositionRecord(symbol=SYMBOL, intent_id="new", state=State.PROTECTED, side="buy", qty=1.0,
                            filled_qty=1.0, entry_price=150.0, stop_price=140.0,
                            client_order_id=ids.entry_id("main", "new"), protection=Protection.ATTACHED_CONFIRMED)
    held = Position(symbol=SYMBOL, side="long", size=1.0, entry_price=150.0, stop_price=140.0, ts_ms=5)
    assert [f.kind for f in assess(SYMBOL, record, held, [leftover], actor_busy=False)] == ["stale_stop"]


def test_someone_elses_stop_is_never_touched() -> None:
    assert assess(SYMBOL, None, None, [stop("manual-1")], actor_busy=False) == []


def test_a_close_position_stop_covers_a_grown_position() -> None:
    """Binance's closePosition stop closes whatever is open at trigger (its qty reads 0): a
    position that grew past the record (a late part of the fill) needs no second stop, and
    the stop is the record's own, so it is not stale either."""
    record = PositionRecord(symbol=SYMBOL, intent_id="grown", state=State.PROTECTED, side="buy", qty=1.0,
                            filled_qty=1.0, entry_price=150.0, stop_price=140.0,
                            client_order_id=ids.entry_id("main", "grown"), protection=Protection.STOP_ORDER,
                            stop_client_order_id=ids.stop_id("main", "grown", 1))
    whole = stop(ids.stop_id("main", "grown", 1), qty=0.0, closes_position=True)
    findings = assess(SYMBOL, record, long(size=3.0), [whole], actor_busy=False)
    assert [f.kind for f in findings] == ["size_mismatch"]  # the record takes the size; nothing else
    sized = stop(ids.stop_id("main", "grown", 1), qty=1.0)
    assert [f.kind for f in assess(SYMBOL, record, long(size=3.0), [sized], actor_busy=False)] == [
        "size_mismatch", "unprotected"]  # a sized stop for 1 of 3 does not cover it
    # On the wrong side it guards nothing, whatever it closes.
    wrong_side = stop(ids.stop_id("main", "grown", 1), side="buy", qty=0.0, closes_position=True)
    assert "unprotected" in [f.kind for f in assess(SYMBOL, record, long(size=3.0), [wrong_side], actor_busy=False)]
