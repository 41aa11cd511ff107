"""Properties of the audit's assessment (`assess`) over random (record, venue position, stops)
triples, with hypothesis: whatever the snapshot shows, the findings never shrink a record
below its proven fills, never end a record whose position the venue holds, never leave a
position without a live record unadopted (unless a proof of flat is newer than the
snapshot), and never cancel the only stop guarding a position. Pure: no I/O, seconds.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from posguard.actors import ids
from posguard.actors.coverage import guards
from posguard.actors.findings import Finding
from posguard.actors.lifecycle.repairs import assess
from posguard.actors.records import PositionRecord, Protection, State
from posguard.streams.venue.events import Order, Position, position_side_of

SYMBOL = "SOL/USDT:USDT"
ACCOUNT = "prop"
INTENTS = ("a", "b", "c")

sizes = st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0])
times = st.integers(min_value=0, max_value=20)


@st.composite
def records(draw: st.DrawFn) -> PositionRecord | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    intent = draw(st.sampled_from(INTENTS))
    state = draw(st.sampled_from(list(State)))
    qty = draw(sizes)
    return PositionRecord(
        symbol=SYMBOL, intent_id=intent, state=state, side=draw(st.sampled_from(["buy", "sell"])), qty=qty,
        filled_qty=draw(st.sampled_from([0.0, qty])), entry_price=150.0, stop_price=140.0,
        client_order_id=ids.entry_id(ACCOUNT, intent), sent_ms=draw(times), flat_ms=draw(times),
        settled_ms=draw(times) if state.is_terminal else 0,
        stop_client_order_id=ids.stop_id(ACCOUNT, intent, 1) if draw(st.booleans()) else "",
    )


@st.composite
def positions(draw: st.DrawFn) -> Position | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    return Position(symbol=SYMBOL, side=draw(st.sampled_from(["long", "short"])), size=draw(sizes),
                    entry_price=150.0, stop_price=draw(st.sampled_from([None, 140.0])), ts_ms=draw(times))


@st.composite
def stop_orders(draw: st.DrawFn) -> list[Order]:
    coids = st.one_of(
        st.builds(lambda i, n: ids.stop_id(ACCOUNT, i, n), st.sampled_from(INTENTS), st.integers(1, 3)),
        st.just("manual-stop"),
    )
    return [
        Order(symbol=SYMBOL, order_id=f"o{n}", client_order_id=draw(coids), side=draw(st.sampled_from(["buy", "sell"])),
              kind="stop", qty=draw(sizes), filled=0.0, avg_price=None, status="open", reduce_only=True,
              stop_price=140.0, ts_ms=1, closes_position=draw(st.booleans()))
        for n in range(draw(st.integers(0, 3)))
    ]


def holds(record: PositionRecord, position: Position | None) -> bool:
    """The venue holds the record's position (as far as this snapshot shows)."""
    return position is not None and position.is_open and position.side == position_side_of(record.side)


def check(record: PositionRecord | None, position: Position | None, stops: list[Order], findings: list[Finding]) -> None:
    kinds = [f.kind for f in findings]
    live = record is not None and record.state.is_live
    if record is not None:
        for finding in findings:
            if finding.kind == "size_mismatch":
                assert finding.position is not None
                assert finding.position.size > record.filled_qty, "a smaller snapshot never shrinks a record"
        if holds(record, position):
            assert "not_visible" not in kinds, "never ended while the venue holds the position"
    if position is not None and position.is_open and not live:
        proven_flat_later = record is not None and 0 < position.ts_ms < record.flat_ms
        assert "orphan" in kinds or proven_flat_later, "a position with no live record is adopted"
    placed_first = {"orphan", "unprotected"} & set(kinds)
    stale = {f.stop_client_order_id for f in findings if f.kind == "stale_stop"}
    if position is not None and position.is_open and position.stop_price is None and stale and not placed_first:
        guarding = [s for s in stops if guards(s, position)]
        assert not guarding or any(s.client_order_id not in stale for s in guarding), (
            "the only stops guarding the position are cancelled and nothing is placed first")
    if position is not None and position.is_open and "unprotected" in kinds:
        kept = [s for s in stops if guards(s, position) and s.client_order_id not in stale]
        assert not any(s.closes_position for s in kept), "a whole-position stop kept armed covers any size"


@settings(max_examples=600, deadline=None)
@given(record=records(), position=positions(), stops=stop_orders(), busy=st.booleans())
def test_assess_keeps_the_invariants_for_any_snapshot(
    record: PositionRecord | None, position: Position | None, stops: list[Order], busy: bool
) -> None:
    findings = assess(SYMBOL, record, position, stops, actor_busy=busy)
    check(record, position, stops, findings)


def test_a_lagging_list_never_shrinks_a_record_below_its_proven_fills() -> None:
    record = PositionRecord(symbol=SYMBOL, intent_id="a", state=State.PROTECTED, side="buy", qty=2.0, filled_qty=2.0,
                            entry_price=150.0, stop_price=140.0, client_order_id=ids.entry_id(ACCOUNT, "a"),
                            protection=Protection.ATTACHED_CONFIRMED, sent_ms=1)
    first_part = Position(symbol=SYMBOL, side="long", size=1.0, entry_price=150.0, stop_price=140.0, ts_ms=2)
    assert assess(SYMBOL, record, first_part, [], actor_busy=False) == []


def test_a_position_that_outlives_its_record_is_adopted_whatever_its_timestamp() -> None:
    """The remainder of a close that ended without proof: older than the record's settling,
    but no proof of flat is newer than it."""
    record = PositionRecord(symbol=SYMBOL, intent_id="a", state=State.CLOSED, side="buy", qty=2.0, filled_qty=1.0,
                            entry_price=150.0, stop_price=140.0, client_order_id=ids.entry_id(ACCOUNT, "a"),
                            sent_ms=1, settled_ms=10, flat_ms=0)
    remainder = Position(symbol=SYMBOL, side="long", size=1.0, entry_price=150.0, stop_price=140.0, ts_ms=5)
    assert [f.kind for f in assess(SYMBOL, record, remainder, [], actor_busy=False)] == ["orphan"]
    proven = PositionRecord(**{**{f: getattr(record, f) for f in record.__struct_fields__}, "flat_ms": 6})
    assert assess(SYMBOL, proven, remainder, [], actor_busy=False) == [], "a lagging list after the proof is lag"


def test_the_only_stop_guarding_a_position_is_not_cancelled_while_the_actor_is_busy() -> None:
    record = PositionRecord(symbol=SYMBOL, intent_id="b", state=State.VERIFYING, side="buy", qty=1.0,
                            entry_price=150.0, stop_price=140.0, client_order_id=ids.entry_id(ACCOUNT, "b"), sent_ms=1)
    held = Position(symbol=SYMBOL, side="long", size=1.0, entry_price=150.0, stop_price=None, ts_ms=2)
    old_stop = Order(symbol=SYMBOL, order_id="o1", client_order_id=ids.stop_id(ACCOUNT, "a", 1), side="sell",
                     kind="stop", qty=1.0, filled=0.0, avg_price=None, status="open", reduce_only=True,
                     stop_price=140.0, ts_ms=1)
    for busy in (True, False):
        findings = assess(SYMBOL, record, held, [old_stop], actor_busy=busy)
        check(record, held, [old_stop], findings)
