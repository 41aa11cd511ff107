"""`CcxtVenue.stream`: real ccxt.pro private streams from the emulator, as posguard events.

Waits are on events with `anyio.fail_after` bounds (inside `StreamRecorder.wait_for`),
never on sleeps.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import anyio
import pytest

from posguard.streams.ccxt_adapter.hooks import acknowledged_topics
from posguard.streams.emulators.bybit import running_emulator
from posguard.streams.emulators.bybit.orders import create_order
from posguard.streams.venue.events import TOPICS, Execution, Heartbeat, Order, Position, StreamStatus, VenueEvent
from posguard.streams.venue.protocol import OrderRequest, StopRequest
from tests.emulator_fixtures import (  # noqa: F401
    StreamRecorder,
    bybit_venue,
    loopback_network_only,
    recording,
    truth_order,
)

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

BTC = "BTC/USDT:USDT"


def entry(coid: str, qty: float = 0.01, **kw: object) -> OrderRequest:
    return OrderRequest(symbol=BTC, side="buy", qty=qty, client_order_id=coid, **kw)  # type: ignore[arg-type]


async def test_a_fill_is_pushed_as_order_execution_and_position() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue, recording(venue) as rec:
        await venue.load_markets()
        mark = len(rec.events)
        await venue.create_order(entry("pg-push-e", stop_loss=58_000))

        order = await rec.wait_for(Order, lambda o: o.client_order_id == "pg-push-e" and o.status == "filled", since=mark)
        fill = await rec.wait_for(Execution, lambda e: e.client_order_id == "pg-push-e", since=mark)
        position = await rec.wait_for(Position, lambda p: p.symbol == BTC and p.is_open, since=mark)

        placed = truth_order(emu, "pg-push-e")
        [true_fill] = emu.truth()["executions"]
        assert (order.order_id, order.filled, order.avg_price) == (placed["order_id"], 0.01, 60_000.0)
        assert (fill.exec_id, fill.qty, fill.price, fill.side) == (true_fill["exec_id"], 0.01, 60_000.0, "buy")
        assert (position.side, position.size, position.stop_price) == ("long", 0.01, 58_000.0)
        assert position.ts_ms >= fill.ts_ms - 1


async def test_an_idle_account_still_heartbeats_on_every_topic() -> None:
    async with running_emulator() as emu, bybit_venue(emu, heartbeat_interval=0.05) as venue, recording(venue) as rec:
        mark = len(rec.events)
        for topic in TOPICS:
            await rec.wait_for(Heartbeat, lambda h, t=topic: h.topic == t, since=mark, timeout=2)
        assert emu.truth()["orders"] == []
        assert not [s for s in rec.of(StreamStatus) if not s.connected]


async def test_position_list_lag_does_not_delay_the_pushed_events() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue, recording(venue) as rec:
        await venue.load_markets()
        emu.faults.position_list_lag = 8.0  # the seed's failure: the list lags the fill
        mark = len(rec.events)
        sent = time.monotonic()
        await venue.create_order(entry("pg-lag-e"))

        position = await rec.wait_for(Position, lambda p: p.symbol == BTC and p.is_open, since=mark, timeout=2)
        await rec.wait_for(Execution, lambda e: e.client_order_id == "pg-lag-e", since=mark, timeout=2)
        assert time.monotonic() - sent < 2
        assert position.size == 0.01 == emu.truth()["positions"]["BTCUSDT"]["size"]
        assert await venue.fetch_positions() == []  # the REST list still shows nothing


async def test_forced_disconnect_reports_down_then_up_and_fills_the_gap_from_rest() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue, recording(venue) as rec:
        await venue.load_markets()
        emu.faults.refuse_ws = True  # stay down until the gap has something in it
        mark = len(rec.events)
        assert await emu.hub.disconnect_all() == 1
        for topic in TOPICS:
            await rec.wait_for(StreamStatus, lambda s, t=topic: s.topic == t and not s.connected, since=mark)

        # While the stream is down: a fill and an armed stop, pushed to nobody.
        await venue.create_order(entry("pg-gap-e"))
        await venue.place_stop(StopRequest(symbol=BTC, side="sell", qty=0.01, stop_price=57_000, client_order_id="pg-gap-s1"))
        assert not [e for e in rec.events[mark:] if isinstance(e, (Order, Execution, Position))]
        down = len(rec.events)
        emu.faults.refuse_ws = False

        await rec.wait_connected(since=down, timeout=10)
        assert all(s.reason == "reconnected" for s in rec.of(StreamStatus, down) if s.connected)
        fill = await rec.wait_for(Execution, lambda e: e.client_order_id == "pg-gap-e", since=down)
        stop = await rec.wait_for(Order, lambda o: o.client_order_id == "pg-gap-s1", since=down)
        position = await rec.wait_for(Position, lambda p: p.symbol == BTC and p.is_open, since=down)
        assert fill.exec_id == emu.truth()["executions"][0]["exec_id"]
        assert (stop.kind, stop.status, stop.stop_price) == ("stop", "open", 57_000.0)
        assert position.size == 0.01
        assert emu.truth()["ws_connects"] >= 2

        # And the new connection pushes again.
        mark = len(rec.events)
        await venue.create_order(entry("pg-after-e"))
        await rec.wait_for(Execution, lambda e: e.client_order_id == "pg-after-e", since=mark)


async def test_a_half_dead_connection_stops_heartbeating_and_is_replaced() -> None:
    async with running_emulator() as emu, bybit_venue(emu, keepalive=0.1, heartbeat_interval=0.05) as venue, \
            recording(venue) as rec:
        emu.faults.mute_ws = True  # open, but no pongs and no pushes
        mark = len(rec.events)
        for topic in TOPICS:
            await rec.wait_for(StreamStatus, lambda s, t=topic: s.topic == t and not s.connected, since=mark, timeout=3)
        down = len(rec.events)
        connects = emu.truth()["ws_connects"]
        emu.faults.mute_ws = False
        await rec.wait_connected(since=down, timeout=10)
        up = next(i for i, e in enumerate(rec.events) if i >= down and isinstance(e, StreamStatus) and e.connected)
        assert not any(isinstance(e, Heartbeat) for e in rec.events[down:up]), "no proof of life while down"
        assert emu.truth()["ws_connects"] > connects  # a fresh connection, not the muted one


async def test_a_stop_triggered_by_the_price_pushes_the_exit() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue, recording(venue) as rec:
        await venue.load_markets()
        await venue.create_order(entry("pg-sl-e", stop_loss=58_000))
        await rec.wait_for(Position, lambda p: p.is_open)
        mark = len(rec.events)
        emu.engine.set_price("BTCUSDT", 57_900)

        exit_fill = await rec.wait_for(Execution, lambda e: e.side == "sell", since=mark)
        flat = await rec.wait_for(Position, lambda p: p.symbol == BTC and not p.is_open, since=mark)
        assert exit_fill.client_order_id == "" and (exit_fill.qty, exit_fill.price) == (0.01, 57_900.0)
        assert flat.side == "flat" and flat.stop_price is None
        assert emu.truth()["positions"] == {}


async def test_a_lost_subscription_ack_is_retried_on_a_fresh_connection() -> None:
    # ccxt never re-sends a subscribe on a connection it thinks is subscribed, so the only
    # way out is a new connection.
    async with running_emulator() as emu, bybit_venue(emu, ready_timeout=0.3) as venue:
        emu.faults.drop_subscribe_acks = True
        recorder = StreamRecorder()
        send, receive = anyio.create_memory_object_stream[VenueEvent](math.inf)
        async with anyio.create_task_group() as tg:
            tg.start_soon(venue.stream, send)
            tg.start_soon(recorder.consume, receive)
            down = await recorder.wait_for(StreamStatus, lambda s: not s.connected)
            assert "not confirmed live" in down.reason
            connects = emu.truth()["ws_connects"]
            emu.faults.drop_subscribe_acks = False
            await recorder.wait_connected(timeout=10)
            assert emu.truth()["ws_connects"] > connects
            tg.cancel_scope.cancel()


def test_an_acknowledgement_without_req_id_answers_the_oldest_request() -> None:
    client = SimpleNamespace(subscriptions={
        "orders": {"id": 7, "topics": ["order"]},
        "positions": {"id": 5, "topics": ["position"]},
        "authenticated": True,
    })
    assert acknowledged_topics(client, {"success": True, "op": "subscribe"}) == ["position"]
    assert acknowledged_topics(client, {"success": True, "op": "subscribe", "req_id": "7"}) == ["order"]
    assert acknowledged_topics(client, {"success": True, "op": "subscribe"}) == []


async def test_pushes_for_markets_posguard_does_not_trade_are_left_out() -> None:
    async with running_emulator() as emu, bybit_venue(emu) as venue:
        await venue.load_markets()
        async with recording(venue) as rec:
            mark = len(rec.events)
            # Someone trades the USDC perpetual on the same account (the topic carries it).
            create_order(emu.engine, {"category": "linear", "symbol": "BTCPERP", "side": "Buy", "orderType": "Market", "qty": "0.01"})
            await venue.create_order(entry("pg-usdt-e"))
            await rec.wait_for(Position, lambda p: p.symbol == BTC, since=mark)
            assert "BTCPERP" in emu.truth()["positions"]
            assert {e.symbol for e in rec.events[mark:] if isinstance(e, (Order, Execution, Position))} == {BTC}
