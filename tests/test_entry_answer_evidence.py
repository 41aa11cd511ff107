"""The venue's answer to an entry is evidence (found by the Binance crash test, issue 14).

Binance answers a market entry with its final result (ccxt sends ``newOrderRespType=RESULT``;
the USD-M New Order page: "MARKET order: the final FILLED result of the order will be returned
directly"). With every push lost and the REST lists lagging past the hard deadline, posguard
used to ignore that answer, wait the whole hard deadline and settle `unverified`: 20 s of a
bare position on a venue without attached stops (the crash test's `no_evidence` run measured
about 40 s). The answer now decides once the pushes are late, and the stop goes on at once.

The answer's fill is also in the record's first write after the send (the stop's write
ahead, issue 16; `submitted` was its own write before): a process killed between that write
and the stop used to verify the entry again after the restart, over REST, queued in ccxt's
throttle behind the start-up's account-wide listings (about 9 s on Binance), while the
position was bare; with kills every few seconds it stayed bare for 38 s. A record that a
killed process left in `submitted` with the fill (an earlier version's) still resumes from it.

Run on the simulated venue (trio, mock clock, real Redis), without attached stops as on
Binance; asserted against the venue's ground truth.
"""

from __future__ import annotations

import anyio

from posguard.actors import ids
from posguard.actors.lifecycle import recovery
from posguard.actors.records import PositionRecord, State
from posguard.actors.store.keys import Keys
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.protocol import OrderRequest
from posguard.supervisor.supervision import AuditSettings
from tests.clock import IOAwareMockClock
from tests.support import ACCOUNT, open_intent, running_engine, wait_streams_healthy

SYMBOL = "SOL/USDT:USDT"
TOPICS = ("positions", "orders", "executions")
LAG = Lag.fixed(60.0)  # longer than the hard deadline: REST has nothing to say in time
SILENT = FaultKnobs(position_lag=LAG, order_lag=LAG, execution_lag=LAG, push_drop={t: 1.0 for t in TOPICS})
NO_AUDITS = AuditSettings(interval=3600.0)


async def test_a_filled_answer_protects_at_once_when_pushes_are_lost_and_lists_lag(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=1402, knobs=SILENT, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        reply = await (await engine.submit(open_intent("answered", symbol=SYMBOL))).wait()
        record = await engine.store.load_record(SYMBOL)
        settings = engine.settings.verification
        assert venue.truth.position(SYMBOL) is not None and venue.truth.is_protected(SYMBOL)
        assert venue.truth.entries_filled[SYMBOL] == 1
        assert record.state is State.PROTECTED, f"{record.state}: {record.reason} ({reply})"
        assert record.evidence == "rest"
        assert record.sent_to_protected_ms is not None
        # The pushes' deadline, then the stop: not the hard deadline.
        assert record.sent_to_protected_ms < (settings.push_deadline + 2.0) * 1000 < settings.hard_deadline * 1000
        # Written ahead of the stop: a restart before the stop knows what filled.
        journal = await engine.store.client.xrange(Keys(ACCOUNT).journal)
        written = [(e.field_values["state"], float(e.field_values["filled_qty"])) for e in journal
                   if e.field_values["symbol"] == SYMBOL]
        assert written[0] == ("submitting", 0.0), written
        assert written[1][1] == record.qty, f"the first write after the send did not hold the fill: {written}"


async def test_a_resumed_entry_whose_answer_reported_the_fill_is_protected_without_asking_again(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=1403, knobs=SILENT, supports_attached_stop=False) as venue, \
            running_engine(redis_url, venue, clock, audit=NO_AUDITS) as engine:
        await wait_streams_healthy(engine)
        intent = open_intent("resumed", symbol=SYMBOL)
        coid = ids.entry_id(ACCOUNT, intent.intent_id)
        sent_ms = venue.now_ms() - 1
        order = await venue.create_order(OrderRequest(symbol=SYMBOL, side="buy", qty=intent.qty, client_order_id=coid))
        # What the process wrote before it was killed: the entry sent, its answer "filled".
        record = PositionRecord(
            symbol=SYMBOL, intent_id=intent.intent_id, state=State.SUBMITTED, side="buy", qty=intent.qty,
            stop_price=intent.stop_price, client_order_id=coid, sent_ms=sent_ms, order_id=order.order_id,
            filled_qty=order.filled, entry_price=order.avg_price or 0.0,
        )
        await engine.store.save_record(record, "venue acknowledged: filled")
        started = anyio.current_time()
        await recovery.resume(engine.ctx, SYMBOL)
        after = await engine.store.load_record(SYMBOL)
        assert after.state is State.PROTECTED, f"{after.state}: {after.reason}"
        assert venue.truth.is_protected(SYMBOL) and venue.truth.entries_filled[SYMBOL] == 1
        assert anyio.current_time() - started < engine.settings.verification.push_deadline + 2.0, (
            "the restart asked the lagging lists again instead of the fill it had written"
        )
