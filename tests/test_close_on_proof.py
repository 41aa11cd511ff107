"""Closes that close the venue's whole position, records that end only on proof (I1), and
entries that never reached the venue (issue 13, defects 1 and 8).

Trio, mock clock, the simulated venue, real Redis; every outcome asserted against the
venue's ground truth, and I1 checked at every transition.
"""

from __future__ import annotations

import anyio
import msgspec
import pytest

from posguard.actors import ids
from posguard.actors.intents import CloseIntent
from posguard.actors.proof import outlives, proven_gone
from posguard.actors.records import PositionRecord, Protection, State
from posguard.actors.settings import ActorSettings, VerificationSettings
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.events import Execution, Order, Position
from posguard.streams.venue.protocol import OrderRequest, StopRequest
from posguard.supervisor.engine import Engine
from posguard.supervisor.supervision import AuditSettings
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, open_intent, running_engine, wait_streams_healthy

SYMBOL = "SOL/USDT:USDT"
TOPICS = ("positions", "orders", "executions")
GONE = (State.CLOSED, State.CLOSED_EXTERNALLY, State.REJECTED)


class NeverFalselyGone:
    """I1 at every transition: a record that says gone while the venue holds its position."""

    def __init__(self, venue: FakeVenue) -> None:
        self.venue = venue
        self.violations: list[str] = []

    def __call__(self, record: PositionRecord, note: str) -> None:
        held = self.venue.truth.position(record.symbol)
        if record.state in GONE and held is not None:
            self.violations.append(f"record {record.state} ({record.reason}) while the venue holds {held.size}")


async def audits(engine: Engine, count: int) -> None:
    """Wait until ``count`` more periodic audits have run."""
    target = engine.auditor.runs + count
    with anyio.fail_after(120):
        while engine.auditor.runs < target:
            await anyio.sleep(0.1)


async def test_a_close_after_an_audit_read_a_lagging_list_closes_the_venues_whole_position(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """Defect 1: the entry fills in two parts 5 s apart, the position list lags 6 s, the audit
    runs every second: it saw the first part only. The close must still close everything,
    and say `closed` only once the venue is flat."""
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS}, position_lag=Lag.fixed(6.0),
                       split_fill_rate=1.0, split_fill_over=Lag.fixed(5.0))
    async with FakeVenue(seed=131, knobs=knobs) as venue, running_engine(
        redis_url, venue, clock, audit=AuditSettings(interval=1.0)
    ) as engine:
        watch = NeverFalselyGone(venue)
        engine.ctx.observers.append(watch)
        await wait_streams_healthy(engine)
        opened = await (await engine.submit(open_intent("two-parts", symbol=SYMBOL, qty=2.0))).wait()
        assert opened.outcome == "protected"
        assert venue.truth.position(SYMBOL).size == 2.0
        await audits(engine, 4)  # the list shows the first part (1.0) for these
        record = await engine.store.load_record(SYMBOL)
        assert record.filled_qty == 2.0, "a lagging list never shrinks a record below its proven fills"

        closed = await (await engine.submit(CloseIntent(intent_id="two-parts-close", symbol=SYMBOL))).wait()

        assert venue.truth.position(SYMBOL) is None, f"the close left {venue.truth.position(SYMBOL)} open"
        assert closed.outcome == "closed"
        assert watch.violations == []
        await audits(engine, 8)  # and the lagging list, still showing a position, adopts nothing
        record = await engine.store.load_record(SYMBOL)
        assert record.state is State.CLOSED and record.intent_id == "two-parts"
        assert venue.truth.open_stops(SYMBOL) == []


async def test_a_close_sizes_from_the_executions_when_the_record_knows_less_than_the_venue(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """The entry was still filling at the verification deadline (the record's size is a lower
    bound) and the stream went down before the rest filled: no push says how much is held.
    The close must not stop at the record's size: the executions say what is left."""
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS}, split_fill_rate=1.0, split_fill_over=Lag.fixed(5.0))
    settings = ActorSettings(account=ACCOUNT, verification=VerificationSettings(push_deadline=1.0, hard_deadline=3.0))
    async with FakeVenue(seed=134, knobs=knobs) as venue, running_engine(
        redis_url, venue, clock, settings=settings, audit=AuditSettings(interval=1000.0)
    ) as engine:
        watch = NeverFalselyGone(venue)
        engine.ctx.observers.append(watch)
        await wait_streams_healthy(engine)
        opened = await (await engine.submit(open_intent("lower-bound", symbol=SYMBOL, qty=2.0))).wait()
        assert opened.outcome == "protected"
        assert (await engine.store.load_record(SYMBOL)).filled_qty == 1.0  # still filling at the deadline
        venue.disconnect()
        with anyio.fail_after(30):
            while venue.truth.position(SYMBOL).size < 2.0:  # the rest fills, unpushed
                await anyio.sleep(0.5)

        closed = await (await engine.submit(CloseIntent(intent_id="lower-bound-close", symbol=SYMBOL))).wait()

        assert venue.truth.position(SYMBOL) is None, f"the close left {venue.truth.position(SYMBOL)} open"
        assert closed.outcome == "closed" and watch.violations == []


async def stray_unverified_entry(engine: Engine, venue: FakeVenue, intent_id: str) -> tuple[PositionRecord, str]:
    """What a REST outage through the whole entry leaves: the send and every lookup failed,
    verification gave up, protection armed a reduce-only stop. Nothing reached the venue."""
    intent = open_intent(intent_id, symbol=SYMBOL)
    stray = ids.stop_id(ACCOUNT, intent.intent_id, 1)
    await venue.place_stop(StopRequest(symbol=SYMBOL, side="sell", qty=intent.qty, stop_price=intent.stop_price,
                                       client_order_id=stray))
    record = PositionRecord(
        symbol=SYMBOL, intent_id=intent.intent_id, state=State.UNVERIFIED, side="buy", qty=intent.qty,
        stop_price=intent.stop_price, client_order_id=ids.entry_id(ACCOUNT, intent.intent_id),
        protection=Protection.STOP_ORDER, stop_client_order_id=stray, stop_attempts=1, sent_ms=venue.now_ms() - 1,
        reason="no evidence of the entry order's fate by the verification deadline",
    )
    await engine.store.save_record(record)
    return record, stray


async def test_an_entry_that_never_reached_the_venue_is_settled_rejected_and_its_stray_stop_cancelled(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """Defect 8: once the venue answers again it does not know the client order id, lists no
    position and no fill: the entry never reached it. A late fill of it is adopted."""
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
    async with FakeVenue(seed=132, knobs=knobs) as venue, running_engine(
        redis_url, venue, clock, audit=AuditSettings(interval=1000.0)
    ) as engine:
        await wait_streams_healthy(engine)
        record, stray = await stray_unverified_entry(engine, venue, "never-sent")
        # Within the lookup grace "unknown" may still be the venue's lag: nothing is concluded.
        report = await engine.audit_now()
        assert report is not None and [f.kind for f in report.findings] == ["unverified"]
        assert (await engine.store.load_record(SYMBOL)).state is State.UNVERIFIED
        assert venue.truth.orders[stray].status == "open"

        await anyio.sleep(engine.ctx.settings.verification.lookup_grace + 1)
        report = await engine.audit_now()

        settled = await engine.store.load_record(SYMBOL)
        assert settled.state is State.REJECTED, settled
        assert "never reached the venue" in settled.reason
        assert venue.truth.orders[stray].status == "cancelled", "the stray stop is cancelled"
        assert venue.truth.position(SYMBOL) is None and venue.truth.entries_filled[SYMBOL] == 0

        # Any later evidence of it (the venue's gateway delivered it after all): adopted.
        await venue.create_order(OrderRequest(symbol=SYMBOL, side="buy", qty=record.qty,
                                              client_order_id=record.client_order_id))
        report = await engine.audit_now()
        assert report is not None and [f.kind for f in report.findings] == ["orphan"]
        assert (await engine.store.load_record(SYMBOL)).state is State.PROTECTED
        assert venue.truth.is_protected(SYMBOL)


async def test_where_unknown_is_not_final_the_entry_stays_unverified_and_protected(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """Binance-like ids (reusable, "does not exist" for a while): unknown proves nothing."""
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS}, reject_duplicate_client_ids=False)
    async with FakeVenue(seed=133, knobs=knobs) as venue, running_engine(
        redis_url, venue, clock, audit=AuditSettings(interval=1000.0)
    ) as engine:
        await wait_streams_healthy(engine)
        _record, stray = await stray_unverified_entry(engine, venue, "maybe-sent")
        await anyio.sleep(engine.ctx.settings.verification.lookup_grace + 1)
        await engine.audit_now()
        assert (await engine.store.load_record(SYMBOL)).state is State.UNVERIFIED
        assert venue.truth.orders[stray].status == "open"


# -- the proof, as a pure rule --------------------------------------------------------------

RECORD = PositionRecord(symbol=SYMBOL, intent_id="p", state=State.CLOSING, side="buy", qty=2.0, filled_qty=2.0,
                        stop_price=140.0, client_order_id=ids.entry_id(ACCOUNT, "p"), sent_ms=100)
CLOSE_ID = ids.close_id(ACCOUNT, "p-close", 0)


def fill(exec_id: str, coid: str, side: str, qty: float, ts: int) -> Execution:
    return Execution(symbol=SYMBOL, exec_id=exec_id, order_id=f"o-{coid}", client_order_id=coid, side=side,  # type: ignore[arg-type]
                     qty=qty, price=150.0, ts_ms=ts)


def close_order(qty: float, ts: int) -> Order:
    return Order(symbol=SYMBOL, order_id=f"o-{CLOSE_ID}", client_order_id=CLOSE_ID, side="sell", kind="market",
                 qty=qty, filled=qty, avg_price=150.0, status="filled", reduce_only=True, stop_price=None, ts_ms=ts)


def flat(ts: int) -> Position:
    return Position(symbol=SYMBOL, side="flat", size=0.0, entry_price=0.0, stop_price=None, ts_ms=ts)


def test_a_close_of_part_of_what_is_held_proves_nothing() -> None:
    entry = [fill("x1", RECORD.client_order_id, "buy", 1.0, 101), fill("x2", RECORD.client_order_id, "buy", 1.0, 105)]
    assert proven_gone(RECORD, entry, None, closes=[close_order(1.0, 110)]) is None
    lagging = Position(symbol=SYMBOL, side="long", size=1.0, entry_price=150.0, stop_price=None, ts_ms=101)
    assert proven_gone(RECORD, entry, lagging, closes=[close_order(1.0, 110)]) is None


def test_exits_summing_to_the_held_size_prove_it_and_say_whose() -> None:
    ours = proven_gone(RECORD, [fill("x3", CLOSE_ID, "sell", 2.0, 110)], None, closes=[close_order(2.0, 110)])
    assert ours is not None and (ours.by, ours.state, ours.flat_ms) == ("exits", State.CLOSED, 110)
    stop_out = proven_gone(RECORD, [fill("x4", ids.stop_id(ACCOUNT, "p", 1), "sell", 2.0, 120)], None)
    assert stop_out is not None and (stop_out.state, stop_out.flat_ms) == (State.CLOSED_EXTERNALLY, 120)
    seen_twice = [fill("x5", "", "sell", 1.0, 120)] * 2
    assert proven_gone(RECORD, seen_twice, None) is None, "a fill seen twice counts once"


def test_a_flat_snapshot_proves_it_only_when_taken_after_our_close_filled() -> None:
    assert proven_gone(RECORD, [], flat(109), closes=[close_order(1.0, 110)]) is None
    gone = proven_gone(RECORD, [], flat(110), closes=[close_order(1.0, 110)])
    assert gone is not None and (gone.by, gone.flat_ms, gone.state) == ("flat_after_close", 110, State.CLOSED)
    assert proven_gone(RECORD, [], flat(200)) is None, "flat without a close of ours needs the executions (I1)"


@pytest.mark.parametrize(("ts", "adopted"), [(0, True), (105, False), (110, True), (200, True)])
def test_a_position_outlives_a_record_unless_the_proof_of_flat_is_newer(ts: int, adopted: bool) -> None:
    record = PositionRecord(**{**{f: getattr(RECORD, f) for f in RECORD.__struct_fields__},
                               "state": State.CLOSED, "flat_ms": 110})
    snapshot = Position(symbol=SYMBOL, side="long", size=1.0, entry_price=150.0, stop_price=None, ts_ms=ts)
    assert outlives(record, snapshot) is adopted


def test_nothing_is_proven_gone_while_the_entry_may_still_be_filling() -> None:
    """Found by the fault schedules with split fills and 1 s audits: the venue refused our
    reduce-only close (flat at that moment) while the entry's last part was still to fill."""
    working = Order(symbol=SYMBOL, order_id="o-entry", client_order_id=RECORD.client_order_id, side="buy",
                    kind="market", qty=2.0, filled=1.0, avg_price=150.0, status="partially_filled",
                    reduce_only=False, stop_price=None, ts_ms=101)
    assert proven_gone(RECORD, [], None, entry=working, refused_ms=120) is None
    assert proven_gone(RECORD, [], None, entry_settled=False, refused_ms=120) is None, "its state unknown"
    done = msgspec.structs.replace(working, status="filled", filled=2.0)
    assert proven_gone(RECORD, [], None, entry=done, refused_ms=120) is not None
