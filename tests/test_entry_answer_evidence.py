"""The venue's answer to an entry is evidence (found by the Binance crash test, issue 14).

Binance answers a market entry with its final result (ccxt sends ``newOrderRespType=RESULT``;
the USD-M New Order page: "MARKET order: the final FILLED result of the order will be returned
directly"). With every push lost and the REST lists lagging past the hard deadline, posguard
used to ignore that answer, wait the whole hard deadline and settle `unverified`: 20 s of a
bare position on a venue without attached stops (the crash test's `no_evidence` run measured
about 40 s). The answer now decides once the pushes are late, and the stop goes on at once.

Run on the simulated venue (trio, mock clock, real Redis), without attached stops as on
Binance; asserted against the venue's ground truth.
"""

from __future__ import annotations

from posguard.actors.records import State
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from tests.clock import IOAwareMockClock
from tests.support import open_intent, running_engine, wait_streams_healthy

SYMBOL = "SOL/USDT:USDT"
TOPICS = ("positions", "orders", "executions")


async def test_a_filled_answer_protects_at_once_when_pushes_are_lost_and_lists_lag(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    lag = Lag.fixed(60.0)  # longer than the hard deadline: REST has nothing to say in time
    knobs = FaultKnobs(position_lag=lag, order_lag=lag, execution_lag=lag, push_drop={t: 1.0 for t in TOPICS})
    async with FakeVenue(seed=1402, knobs=knobs, supports_attached_stop=False) as venue, \
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
