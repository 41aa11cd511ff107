"""Issue 13, defects 5, 6, 9 and 10: what an entry must pass, and where it is checked.

Each test sends intents the way a strategy would (``XADD`` to the intents stream) to a running
engine and intake on the simulated venue, and judges by the venue's ground truth.
"""

from __future__ import annotations

import anyio
import msgspec
import pytest

from posguard.actors.intents import CloseIntent, OpenIntent
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.errors import RateLimited, VenueUnavailable
from posguard.streams.venue.events import Order
from posguard.streams.venue.protocol import OrderRequest
from posguard.supervisor.risk import RiskLimits
from tests.clock import IOAwareMockClock
from tests.support import running_engine, wait_streams_healthy
from tests.test_intents import final_reply, with_intake, xadd

FAST_PUSH = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in ("positions", "orders", "executions")})
SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT")
STOPS = {"BTC/USDT:USDT": "58800", "ETH/USDT:USDT": "2940", "SOL/USDT:USDT": "147"}


# -- defect 5: the open-positions limit under a burst -----------------------------------------


async def test_a_burst_of_entries_never_exceeds_max_open_positions(clock: IOAwareMockClock, redis_url: str) -> None:
    async with with_intake(redis_url, clock, risk=RiskLimits(max_open_positions=1)) as (venue, engine, _intake):
        for n, symbol in enumerate(SYMBOLS):
            xadd(redis_url, intent_id=f"burst-{n}", action="open", symbol=symbol, side="buy", qty="0.1",
                 stop_price=STOPS[symbol])
        replies = [await final_reply(engine, f"burst-{n}") for n in range(len(SYMBOLS))]
        assert [r["outcome"] for r in replies].count("protected") == 1, replies
        refused = [r for r in replies if r["status"] == "rejected"]
        assert len(refused) == 2 and all("risk.max_open_positions" in r["reason"] for r in refused), replies
        assert sum(venue.truth.position(s) is not None for s in SYMBOLS) == 1
        assert engine.admission.slots.statistics().occupied == 1


async def test_a_slot_is_freed_when_its_position_is_closed(clock: IOAwareMockClock, redis_url: str) -> None:
    async with with_intake(redis_url, clock, risk=RiskLimits(max_open_positions=1)) as (_venue, engine, _intake):
        xadd(redis_url, intent_id="first", action="open", symbol="BTC/USDT:USDT", side="buy", qty="0.01",
             stop_price="58800")
        assert (await final_reply(engine, "first"))["outcome"] == "protected"
        xadd(redis_url, intent_id="first-close", action="close", symbol="BTC/USDT:USDT")
        assert (await final_reply(engine, "first-close"))["outcome"] == "closed"
        assert engine.admission.slots.statistics().occupied == 0
        xadd(redis_url, intent_id="second", action="open", symbol="ETH/USDT:USDT", side="buy", qty="0.1",
             stop_price="2940")
        assert (await final_reply(engine, "second"))["outcome"] == "protected"


async def test_a_refused_entry_gives_its_slot_back(clock: IOAwareMockClock, redis_url: str) -> None:
    async with with_intake(redis_url, clock, risk=RiskLimits(max_open_positions=1)) as (_venue, engine, _intake):
        # Refused by the actor (stop on the wrong side of the price), after its slot was reserved.
        xadd(redis_url, intent_id="wrong-side", action="open", symbol="BTC/USDT:USDT", side="buy", qty="0.01",
             stop_price="61000")
        assert (await final_reply(engine, "wrong-side"))["status"] == "rejected"
        assert engine.admission.slots.statistics().occupied == 0
        xadd(redis_url, intent_id="next", action="open", symbol="ETH/USDT:USDT", side="buy", qty="0.1",
             stop_price="2940")
        assert (await final_reply(engine, "next"))["outcome"] == "protected"


# -- defect 6: the stop's side and the venue's maximum, always checked ------------------------


@pytest.mark.parametrize("attached", [True, False], ids=["bybit-like", "binance-like"])
async def test_a_wrong_side_stop_is_rejected_with_no_risk_limit_configured(
    clock: IOAwareMockClock, redis_url: str, attached: bool
) -> None:
    async with FakeVenue(seed=61, knobs=FAST_PUSH, supports_attached_stop=attached) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        await wait_streams_healthy(engine)
        for intent_id, side, stop in (("long-above", "buy", "61000"), ("short-below", "sell", "59000")):
            reply = await (await engine.submit(_open(intent_id, "BTC/USDT:USDT", side, 0.01, float(stop)))).wait()
            assert reply.status == "rejected" and reply.reason.startswith("stop_price:"), reply
        assert venue.calls["create_order"] == 0 and venue.calls["place_stop"] == 0
        assert venue.truth.position("BTC/USDT:USDT") is None


async def test_a_qty_above_the_venue_maximum_is_rejected_end_to_end(clock: IOAwareMockClock, redis_url: str) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, _intake):
        xadd(redis_url, intent_id="too-big", action="open", symbol="ETH/USDT:USDT", side="buy", qty="5000.01",
             stop_price="2940")
        reply = await final_reply(engine, "too-big")
        assert reply["status"] == "rejected" and reply["reason"].startswith("qty:"), reply
        assert "maximum order size 5000" in reply["reason"]
        assert venue.calls["create_order"] == 0


# -- defect 9: no head-of-line blocking, a transient ticker failure is retried -----------------


async def test_a_close_is_not_held_behind_another_symbols_slow_price_reads(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    # Submitted in turn, as the intake hands them over (through the engine: its Redis I/O holds
    # the mock clock, so virtual time passes only on the venue's timers).
    knobs = msgspec.structs.replace(FAST_PUSH, rest_latency_by_method={})
    async with FakeVenue(seed=62, knobs=knobs) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        assert (await (await engine.submit(_open("b-open", "ETH/USDT:USDT", "buy", 0.1, 2940))).wait()).status == "done"
        knobs.rest_latency_by_method["fetch_price"] = 4.0
        sent = anyio.current_time()
        opens = [await engine.submit(_open(f"a-open-{n}", "BTC/USDT:USDT", "buy", 0.01, 0, distance=0.02))
                 for n in range(5)]
        close = await (await engine.submit(CloseIntent(intent_id="b-close", symbol="ETH/USDT:USDT"))).wait()
        answered_after = anyio.current_time() - sent
        assert close.outcome == "closed", close
        assert answered_after < 4.0, f"the close waited {answered_after:.1f} s (virtual) behind ticker reads"
        assert not opens[0].done.is_set(), "the first open is still waiting on its ticker"
        outcomes = [(await ticket.wait()).status for ticket in opens]
        assert outcomes[0] == "done" and venue.truth.entries_filled["BTC/USDT:USDT"] == 1, outcomes


async def test_one_transient_ticker_failure_does_not_refuse_a_stop_distance_open(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=63, knobs=FAST_PUSH) as venue, running_engine(redis_url, venue, clock) as engine:
        await wait_streams_healthy(engine)
        venue.fail_next("fetch_price", VenueUnavailable("fetch_price: HTTP 503 service unavailable"),
                        RateLimited("fetch_price: rate limit exceeded (HTTP 429)"))
        reply = await (await engine.submit(_open("retried", "SOL/USDT:USDT", "buy", 1, 0, distance=0.02))).wait()
        assert reply.outcome == "protected", reply


# -- defect 10: a stop beyond the liquidation price -------------------------------------------


async def test_a_stop_beyond_the_estimated_liquidation_price_is_refused(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with with_intake(redis_url, clock) as (venue, engine, _intake):
        # A short at 10x from 60,000 is liquidated near 65,700: a stop at 66,600 never fires.
        xadd(redis_url, intent_id="past-liq", action="open", symbol="BTC/USDT:USDT", side="sell", qty="0.01",
             stop_price="66600")
        reply = await final_reply(engine, "past-liq")
        assert reply["status"] == "rejected" and reply["reason"].startswith("stop_price:"), reply
        assert "liquidation" in reply["reason"] and "10x" in reply["reason"], reply
        assert venue.calls["create_order"] == 0
        # The same stop inside the liquidation price is fine.
        xadd(redis_url, intent_id="inside-liq", action="open", symbol="BTC/USDT:USDT", side="sell", qty="0.01",
             stop_price="63000")
        assert (await final_reply(engine, "inside-liq"))["outcome"] == "protected"


def _open(intent_id: str, symbol: str, side: str, qty: float, stop: float, *, distance: float | None = None
          ) -> OpenIntent:
    return OpenIntent(intent_id=intent_id, symbol=symbol, side=side, qty=qty,  # type: ignore[arg-type]
                      stop_price=stop, stop_distance=distance)


@pytest.mark.parametrize("attached", [True, False], ids=["bybit-like", "binance-like"])
async def test_a_stop_the_venue_shows_beyond_liquidation_after_the_fill_is_tightened(
    clock: IOAwareMockClock, redis_url: str, attached: bool
) -> None:
    async with FakeVenue(seed=64, knobs=FAST_PUSH, supports_attached_stop=attached) as venue, running_engine(
        redis_url, venue, clock
    ) as engine:
        await wait_streams_healthy(engine)
        alerts: list[str] = []
        engine.ctx.alerts.append(lambda symbol, message: alerts.append(message))
        real_create_order = venue.create_order

        async def market_moves_before_the_fill(request: OrderRequest) -> Order:
            venue.set_price("BTC/USDT:USDT", 57_000.0)  # a 5 % drop between the check and the fill
            return await real_create_order(request)

        venue.create_order = market_moves_before_the_fill  # type: ignore[method-assign]
        # Checked at 60,000 (liquidation near 65,700: the stop is inside); filled at 57,000 the
        # venue liquidates this short near 62,415, below the stop.
        reply = await (await engine.submit(_open("moved", "BTC/USDT:USDT", "sell", 0.01, 63_000.0))).wait()
        assert reply.outcome == "protected", reply
        record = await engine.store.load_record("BTC/USDT:USDT")
        liq = venue.truth.position("BTC/USDT:USDT").liq_price
        assert record.stop_price < liq, (record.stop_price, liq)
        assert any(o.stop_price == record.stop_price for o in venue.truth.open_stops("BTC/USDT:USDT"))
        assert any("beyond the venue's liquidation price" in a for a in alerts), alerts
