"""The seed's incident, replayed: a filled market order whose position the list shows late.

The seed bot slept 1 s, polled the position list 10 x 0.5 s, saw nothing, and recorded
"rolled back" while the position sat on the exchange without a stop. Here the list lags 8 s,
longer than the seed's whole 6 s of patience.
"""

from __future__ import annotations

import anyio
import msgspec

from posguard.actors.records import State
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.events import Order
from posguard.streams.venue.protocol import OrderRequest
from tests.clock import IOAwareMockClock
from tests.support import assert_never_falsely_closed, open_intent, running_engine, wait_streams_healthy

SYMBOL = "AVL/USDT:USDT"
TOPICS = ("positions", "orders", "executions")


def seed_knobs(*, push_drop: float) -> FaultKnobs:
    return FaultKnobs(
        position_lag=Lag.fixed(8.0),
        push_delay={t: Lag.fixed(0.05) for t in TOPICS},
        push_drop={t: push_drop for t in TOPICS},
    )


def answering_with_ids_only(venue: FakeVenue) -> None:
    """Bybit's answer to a create carries the order's ids only, not its fill (ccxt parses an id
    and a client id from it): here too, so that only pushes and lookups can verify the entry.
    (An answer that reports the fill, as Binance's ``RESULT`` does, is evidence: see
    tests/test_entry_answer_evidence.py.)"""
    create = venue.create_order

    async def ids_only(request: OrderRequest) -> Order:
        return msgspec.structs.replace(await create(request), status="open", filled=0.0, avg_price=None)

    venue.create_order = ids_only  # type: ignore[method-assign]


async def test_seed_lag_with_push_verifies_from_the_push_and_never_rolls_back(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=10, knobs=seed_knobs(push_drop=0.0)) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        states: list[str] = []
        engine.ctx.observers.append(lambda r, _: (states.append(str(r.state)), assert_never_falsely_closed(r, venue)))
        await wait_streams_healthy(engine)
        reply = await (await engine.submit(open_intent("seed-push", symbol=SYMBOL, qty=10))).wait()
        record = await engine.store.load_record(SYMBOL)

        assert reply.outcome == "protected"
        assert record is not None and record.state is State.PROTECTED and record.evidence == "push"
        assert record.sent_to_verified_ms is not None and record.sent_to_verified_ms < 500
        assert venue.truth.position(SYMBOL) is not None and venue.truth.is_protected(SYMBOL)
        assert engine.ctx.rest_calls["fetch_positions"] == 0
        assert "rolled_back" not in states and State.REJECTED not in states


async def test_seed_lag_with_push_dropped_keeps_asking_over_rest_past_six_seconds(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    # Every push dropped, and the order lookup lags too, so only patience verifies it.
    knobs = seed_knobs(push_drop=1.0)
    knobs.order_lag = Lag.fixed(8.0)
    knobs.execution_lag = Lag.fixed(8.0)
    async with FakeVenue(seed=11, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        answering_with_ids_only(venue)
        states: list[str] = []
        engine.ctx.observers.append(lambda r, _: (states.append(str(r.state)), assert_never_falsely_closed(r, venue)))
        await wait_streams_healthy(engine)
        started = anyio.current_time()
        reply = await (await engine.submit(open_intent("seed-rest", symbol=SYMBOL, qty=10))).wait()
        record = await engine.store.load_record(SYMBOL)

        assert reply.outcome == "protected"
        assert record is not None and record.state is State.PROTECTED and record.evidence == "rest"
        assert record.sent_to_verified_ms is not None and record.sent_to_verified_ms >= 6000, (
            "verified before the seed would have given up: this test would not tell the two apart"
        )
        assert engine.ctx.rest_calls["fetch_order"] >= 5, "REST fallback kept asking"
        assert anyio.current_time() - started < 60
        assert venue.truth.position(SYMBOL) is not None and venue.truth.is_protected(SYMBOL)
        assert states.count("rejected") == 0 and "rolled_back" not in states
