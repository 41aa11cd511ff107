"""Issue 13, defect 11: a stop that triggered but did not fill.

The venue can refuse the market order a stop triggers, or trigger on another price than the
one that crossed (freqtrade#12984): the stop is armed, the position open, the market past the
stop. The audit sees a covered position and does nothing. The watchdog closes it reduce-only
once the price has stayed past the stop for `protection.stop_fill_timeout` seconds.
Trio, mock clock, fake venue (`FaultKnobs.stop_fill_fail_rate`), real Redis.
"""

from __future__ import annotations

import anyio
import pytest

from posguard.actors import ids
from posguard.actors.records import State
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.streams.venue.events import Order
from posguard.streams.venue.protocol import OrderRequest
from posguard.supervisor.supervision import AuditSettings
from tests.clock import IOAwareMockClock
from tests.support import open_intent, running_engine, wait_streams_healthy

SYMBOL = "ETH/USDT:USDT"
TOPICS = ("positions", "orders", "executions")


def stops_that_never_fill() -> FaultKnobs:
    return FaultKnobs(stop_fill_fail_rate=1.0, push_delay={t: Lag.fixed(0.05) for t in TOPICS})


@pytest.mark.parametrize("attached", [True, False], ids=["attached-stop", "stop-order"])
async def test_a_stop_past_its_price_that_did_not_fill_is_closed_reduce_only_with_an_alert(
    clock: IOAwareMockClock, redis_url: str, attached: bool
) -> None:
    async with FakeVenue(seed=140, knobs=stops_that_never_fill(), supports_attached_stop=attached) as venue, \
            running_engine(redis_url, venue, clock, audit=AuditSettings(interval=30.0)) as engine:
        alerts: list[str] = []
        engine.ctx.alerts.append(lambda symbol, message: alerts.append(message))
        closes: list[tuple[float, OrderRequest]] = []
        create_order = venue.create_order

        async def recorded_create_order(request: OrderRequest) -> Order:
            if request.reduce_only:
                closes.append((anyio.current_time(), request))
            return await create_order(request)

        venue.create_order = recorded_create_order  # type: ignore[method-assign]
        await wait_streams_healthy(engine)
        intent = open_intent("gapped", symbol=SYMBOL)
        assert (await (await engine.submit(intent)).wait()).outcome == "protected"
        crossed_at = anyio.current_time()
        venue.set_price(SYMBOL, intent.stop_price * 0.98)
        assert venue.truth.position(SYMBOL) is not None, "the knob: the stop triggered but did not fill"
        with anyio.fail_after(300):
            while (record := await engine.store.load_record(SYMBOL)).state is not State.CLOSED:
                await anyio.sleep(0.5)
        assert venue.truth.position(SYMBOL) is None
        assert venue.truth.open_stops(SYMBOL) == [], "the stop that did not fill is cancelled"
        assert closes and all(ids.is_ours(r.client_order_id) for _, r in closes)
        assert closes[0][0] - crossed_at >= engine.settings.protection.stop_fill_timeout, "closed before the timeout"
        assert any("did not fill" in message for message in alerts), alerts
        assert "did not fill" in record.reason


async def test_a_price_back_inside_the_stop_before_the_timeout_closes_nothing(
    clock: IOAwareMockClock, redis_url: str
) -> None:
    async with FakeVenue(seed=141, knobs=stops_that_never_fill()) as venue, \
            running_engine(redis_url, venue, clock, audit=AuditSettings(interval=30.0)) as engine:
        await wait_streams_healthy(engine)
        intent = open_intent("wick", symbol=SYMBOL)
        assert (await (await engine.submit(intent)).wait()).outcome == "protected"
        timeout = engine.settings.protection.stop_fill_timeout
        price = venue.prices[SYMBOL]
        venue.set_price(SYMBOL, intent.stop_price * 0.99)  # a wick through the stop ...
        await anyio.sleep(timeout * 0.4)
        venue.set_price(SYMBOL, price)  # ... and back before the watchdog's time is up
        await anyio.sleep(timeout * 4)
        assert (await engine.store.load_record(SYMBOL)).state is State.PROTECTED
        assert venue.truth.position(SYMBOL) is not None
