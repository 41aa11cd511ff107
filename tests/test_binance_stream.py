"""Binance's user-data stream through real ``ccxt.pro.binanceusdm`` against the replay server
on 127.0.0.1 (issue 14): ALGO_UPDATE reaching posguard as an `Order`, health that needs a live
listen key and not just an open socket, the connection replaced before Binance's 24 hours,
and the REST sweep after a reconnect covering orders that opened and closed in the gap.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from posguard.streams.backoff import Backoff
from posguard.streams.ccxt_adapter.config import ApiCredentials, CcxtVenueConfig, ConfigRefused
from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.streams.venue.events import TOPICS, Heartbeat, Order, StreamStatus
from tests import binance_recorded as rec
from tests.binance_recorded import BinanceReplay
from tests.emulator_fixtures import StreamRecorder, loopback_network_only, recording  # noqa: F401
from tests.test_binance_listen_key import ListenKeys

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]


@asynccontextmanager
async def binance_stream(**config: Any) -> AsyncIterator[tuple[BinanceReplay, ListenKeys, StreamRecorder]]:
    replay = BinanceReplay()
    keys = ListenKeys(replay)
    replay.answer("GET", "/fapi/v3/positionRisk", [])
    replay.answer("GET", "/fapi/v1/openOrders", [])
    replay.answer("GET", "/fapi/v1/openAlgoOrders", [])
    replay.answer("GET", "/fapi/v1/allOrders", [])
    replay.answer("GET", "/fapi/v1/allAlgoOrders", [])
    replay.answer("GET", "/fapi/v1/userTrades", [])
    await replay.start()
    settings: dict[str, Any] = dict(listen_key_keepalive=600.0, reconnect=Backoff(initial=0.05, maximum=0.1)) | config
    venue = CcxtVenue(CcxtVenueConfig(
        exchange="binanceusdm", environment="live", rest_url=f"http://{replay.base}", ws_url=f"ws://{replay.base}",
        loopback_only=True, throttle=False, request_timeout=5.0, **settings,
    ), ApiCredentials(rec.API_KEY, rec.API_SECRET))
    try:
        await venue.load_markets()
        async with recording(venue) as recorder:
            yield replay, keys, recorder
    finally:
        await venue.aclose()
        await replay.stop()


@pytest.mark.parametrize(("algo_status", "status"), [("NEW", "open"), ("FINISHED", "filled"), ("EXPIRED", "cancelled")])
async def test_algo_update_reaches_posguard_as_a_stop_order(algo_status: str, status: str) -> None:
    """ccxt 4.5.90 routes ALGO_UPDATE to handle_order (pro/binance.py handle_order_update),
    where posguard's hook passes it on: pushed on the socket, it arrives as an `Order`."""
    async with binance_stream() as (replay, _keys, recorder):
        event = rec.ALGO_UPDATE_CLOSE_POSITION | {"o": rec.ALGO_UPDATE_CLOSE_POSITION["o"] | {"X": algo_status}}
        await replay.push(event)
        stop = await recorder.wait_for(Order, lambda o: o.client_order_id == "pgbinance-s2")
        assert (stop.symbol, stop.order_id, stop.kind, stop.side, stop.status, stop.stop_price) == (
            "BTC/USDT:USDT", "2146761", "stop", "sell", status, 57_000.0)
        assert stop.closes_position and not stop.reduce_only
        assert stop.ts_ms == 1764000000600  # the event's transaction time


async def test_heartbeats_stop_before_the_listen_key_lapses_while_its_keepalive_fails() -> None:
    """ccxt #6760: an unextended key makes the stream silent for good, socket open. While the
    keepalive fails, the topics stop heartbeating before the key's life ends (so actors ask
    over REST), and start again once an extension succeeds."""
    life = 1.2
    async with binance_stream(listen_key_keepalive=0.2, listen_key_life=life, heartbeat_interval=0.05) as (
            _replay, keys, recorder):
        await recorder.wait_for(Heartbeat)
        keys.extend_answer = (503, {"code": -1001, "msg": "Internal error; unable to process your request."})
        failing_since = time.time()
        with anyio.fail_after(10):
            while time.time() < failing_since + life:
                await keys.wait_extended(keys.extended + 1)  # each failed attempt, retried with backoff
        beats = recorder.of(Heartbeat)
        assert beats and max(b.ts_ms for b in beats) < (failing_since + life) * 1000, "heartbeats past the key's life"
        seen = len(recorder.events)
        await keys.wait_extended(keys.extended + 3)
        assert recorder.of(Heartbeat, seen) == [], "heartbeats on a key not known alive"
        assert recorder.of(StreamStatus, seen) == []  # the socket is fine; only its proof of life is not
        keys.extend_answer = {}
        await recorder.wait_for(Heartbeat, since=seen)
        assert keys.issued == ["listen-key-1"]


async def test_the_connection_is_replaced_before_it_gets_too_old_and_swept() -> None:
    async with binance_stream(max_connection_age=0.5) as (replay, keys, recorder):
        since = len(recorder.events)
        for topic in TOPICS:
            down = await recorder.wait_for(StreamStatus, lambda s, t=topic: s.topic == t and not s.connected, since=since)
            assert "max_connection_age" in down.reason
        await recorder.wait_for(StreamStatus, lambda s: s.connected and s.reason == "reconnected", since=since)
        await recorder.wait_connected(since=since)
        with anyio.fail_after(5):
            while len(replay.requests("GET", "/fapi/v1/openAlgoOrders")) < 2:
                await anyio.sleep(0.01)  # the sweep after the reconnect is a REST call we can only poll for
        sockets = [q for m, _, q, h in replay.seen if h.get("Upgrade", "").lower() == "websocket"]
        assert len(sockets) >= 2  # a new connection
        assert keys.issued[0] == "listen-key-1"


def test_the_connection_age_is_the_dialects_unless_configured() -> None:
    def age(exchange: str, configured: float | None) -> float | None:
        config = CcxtVenueConfig(exchange=exchange, max_connection_age=configured)  # type: ignore[arg-type]
        return CcxtVenue(config, ApiCredentials("k", "s"))._max_connection_age()

    assert age("binanceusdm", None) == 23 * 3600.0  # Binance closes connections at 24 h
    assert age("bybit", None) is None
    assert (age("binanceusdm", 3600.0), age("binanceusdm", 0.0), age("bybit", 7200.0)) == (3600.0, None, 7200.0)


def test_binance_refuses_a_connection_age_at_or_past_its_own_limit() -> None:
    with pytest.raises(ConfigRefused) as refused:
        CcxtVenueConfig(exchange="binanceusdm", max_connection_age=24 * 3600.0)
    assert refused.value.key == "max_connection_age"
    CcxtVenueConfig(exchange="bybit", max_connection_age=24 * 3600.0)  # Bybit sets no such limit


async def test_the_sweep_after_a_reconnect_finds_orders_that_opened_and_closed_in_the_gap() -> None:
    """A filled entry and a stop that fired while the stream was down are in no open-orders
    list; the sweep reads Binance's allOrders and allAlgoOrders from shortly before the
    stream was last alive, for every symbol seen."""
    async with binance_stream() as (replay, keys, recorder):
        await replay.push(rec.ALGO_UPDATE_NEW)  # BTCUSDT is now a symbol this stream has seen
        await recorder.wait_for(Order, lambda o: o.client_order_id == "pgbinance-s1")
        now = int(time.time() * 1000)
        gap_entry = rec.ORDER_FILLED | {"clientOrderId": "pgbinance-gap", "orderId": 4078112999, "time": now, "updateTime": now}
        replay.answer("GET", "/fapi/v1/allOrders", [gap_entry])
        replay.answer("GET", "/fapi/v1/allAlgoOrders", [rec.ALGO_TRIGGERED | {"createTime": now - 500, "updateTime": now}])
        since = len(recorder.events)
        asked_from = int(time.time() * 1000) - 5_000 - 2_000  # gap_margin, and some slack for the clock
        await replay.push({"e": "listenKeyExpired", "E": 1764000000000, "listenKey": keys.issued[-1]})
        entry = await recorder.wait_for(Order, lambda o: o.client_order_id == "pgbinance-gap", since=since)
        stop = await recorder.wait_for(Order, lambda o: o.client_order_id == "pgbinance-s1" and o.is_final, since=since)
        assert (entry.status, entry.filled, entry.kind) == ("filled", 0.01, "market")
        assert (stop.status, stop.kind) == ("filled", "stop")
        plain = replay.requests("GET", "/fapi/v1/allOrders")[-1]
        algo = replay.requests("GET", "/fapi/v1/allAlgoOrders")[-1]
        for asked in (plain, algo):
            assert asked["symbol"] == "BTCUSDT" and int(asked["startTime"]) >= asked_from
            assert asked["limit"] == "1000"
