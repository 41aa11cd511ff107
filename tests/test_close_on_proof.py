"""Closes that close the venue's whole position, records that end only on proof (I1), and
entries that never reached the venue (issue 13, defects 1 and 8).

Trio, mock clock, the simulated venue, real Redis; every outcome asserted against the
venue's ground truth, and I1 checked at every transition.
"""

from __future__ import annotations

import anyio

from posguard.actors import ids
from posguard.actors.intents import CloseIntent
from posguard.actors.records import PositionRecord, State
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.protocol import StopRequest
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
                       split_fill_after=Lag.fixed(5.0))
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


async def test_an_entry_that_never_reached_the_venue_is_settled_rejected_and_its_stray_stop_cancelled(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    """Defect 8: the entry's send and every lookup failed (a REST outage), the record went
    `unverified` with a reduce-only stop armed. Once the venue answers again it does not know
    the client order id, lists no position and no fill: the entry never reached it."""
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in TOPICS})
    async with FakeVenue(seed=132, knobs=knobs) as venue, running_engine(
        redis_url, venue, clock, audit=AuditSettings(interval=1000.0)
    ) as engine:
        await wait_streams_healthy(engine)
        intent = open_intent("never-sent", symbol=SYMBOL)
        stray = ids.stop_id(ACCOUNT, intent.intent_id, 1)
        await venue.place_stop(StopRequest(symbol=SYMBOL, side="sell", qty=intent.qty, stop_price=intent.stop_price,
                                           client_order_id=stray))
        await engine.store.save_record(PositionRecord(
            symbol=SYMBOL, intent_id=intent.intent_id, state=State.UNVERIFIED, side="buy", qty=intent.qty,
            stop_price=intent.stop_price, client_order_id=ids.entry_id(ACCOUNT, intent.intent_id),
            stop_source="order", stop_client_order_id=stray, stop_attempts=1, sent_ms=venue.now_ms() - 1,
            reason="no evidence of the entry order's fate by the verification deadline",
        ))
        # Within the lookup grace "unknown" may still be the venue's lag: nothing is concluded.
        report = await engine.audit_now()
        assert report is not None and [f.kind for f in report.findings] == ["unverified"]
        assert (await engine.store.load_record(SYMBOL)).state is State.UNVERIFIED
        assert venue.truth.orders[stray].status == "open"

        await anyio.sleep(engine.ctx.settings.verification.lookup_grace + 1)
        report = await engine.audit_now()

        record = await engine.store.load_record(SYMBOL)
        assert record.state is State.REJECTED, record
        assert "never reached the venue" in record.reason
        assert venue.truth.orders[stray].status == "cancelled", "the stray stop is cancelled"
        assert venue.truth.position(SYMBOL) is None and venue.truth.entries_filled[SYMBOL] == 0
