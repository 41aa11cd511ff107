"""Binance's listen key, kept alive by posguard: real ``ccxt.pro.binanceusdm`` against a replay
server on 127.0.0.1 that also speaks the user-data WebSocket.

ccxt 4.5.90 extends the key once (after 20 minutes) and never again, and ignores
``listenKeyExpired``: left to ccxt, a quiet stream goes silent after about 80 minutes with its
socket still open. These tests pin posguard's own keepalive and its reaction to a lost key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from posguard.streams.backoff import Backoff
from posguard.streams.ccxt_adapter.config import ApiCredentials, CcxtVenueConfig
from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.streams.venue.events import TOPICS, StreamStatus
from tests import binance_recorded as rec
from tests.binance_recorded import BinanceReplay, error
from tests.emulator_fixtures import StreamRecorder, loopback_network_only, recording  # noqa: F401

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

KEEPALIVE = 0.2
"""Seconds between keepalives in these tests (1800 in production)."""


class ListenKeys:
    """The replay's listen-key endpoints: a new key per POST; PUTs counted, with a signal."""

    def __init__(self, replay: BinanceReplay) -> None:
        self.issued: list[str] = []
        self.extended = 0
        self.extend_answer: Any = {}
        self._extended = anyio.Event()
        replay.answer("POST", "/fapi/v1/listenKey", self._create)
        replay.answer("PUT", "/fapi/v1/listenKey", self._extend)

    def _create(self, _query: dict[str, str]) -> dict[str, Any]:
        self.issued.append(f"listen-key-{len(self.issued) + 1}")
        return {"listenKey": self.issued[-1]}

    def _extend(self, _query: dict[str, str]) -> Any:
        self.extended += 1
        self._extended.set()
        return self.extend_answer

    async def wait_extended(self, count: int, *, timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while self.extended < count:
                self._extended = anyio.Event()
                await self._extended.wait()


@asynccontextmanager
async def binance_stream(keepalive: float = KEEPALIVE) -> AsyncIterator[tuple[BinanceReplay, ListenKeys, StreamRecorder]]:
    replay = BinanceReplay()
    keys = ListenKeys(replay)
    replay.answer("GET", "/fapi/v3/positionRisk", [])
    replay.answer("GET", "/fapi/v1/openOrders", [])
    replay.answer("GET", "/fapi/v1/openAlgoOrders", [])
    await replay.start()
    config = CcxtVenueConfig(
        exchange="binanceusdm", environment="live", rest_url=f"http://{replay.base}", ws_url=f"ws://{replay.base}",
        loopback_only=True, throttle=False, request_timeout=5.0, listen_key_keepalive=keepalive,
        reconnect=Backoff(initial=0.05, maximum=0.1),
    )
    venue = CcxtVenue(config, ApiCredentials(rec.API_KEY, rec.API_SECRET))
    try:
        await venue.load_markets()
        async with recording(venue) as recorder:
            yield replay, keys, recorder
    finally:
        await venue.aclose()
        await replay.stop()


def _sockets_on(replay: BinanceReplay) -> list[str]:
    """The listen key of every user-data stream connection ccxt opened, in order."""
    return [query.get("listenKey", "") for method, _, query, headers in replay.seen if headers.get("Upgrade", "").lower() == "websocket"]


async def _all_down_then_up(recorder: StreamRecorder, since: int) -> None:
    for topic in TOPICS:
        await recorder.wait_for(StreamStatus, lambda s, t=topic: s.topic == t and not s.connected, since=since)
    await recorder.wait_connected(since=since)


async def test_the_listen_key_is_extended_every_keepalive_interval() -> None:
    async with binance_stream() as (replay, keys, _recorder):
        await keys.wait_extended(3)
        assert keys.extended >= 3
        assert keys.issued == ["listen-key-1"]  # extended, not replaced
        assert _sockets_on(replay) == ["listen-key-1"]


async def test_listen_key_expired_reports_the_topics_down_and_reconnects_on_a_new_key() -> None:
    async with binance_stream(keepalive=600.0) as (replay, keys, recorder):
        since = len(recorder.events)
        await replay.push({"e": "listenKeyExpired", "E": 1764000000000, "listenKey": keys.issued[-1]})
        await _all_down_then_up(recorder, since)
        down = recorder.of(StreamStatus, since)[0]
        assert "listen key" in down.reason
        assert keys.issued == ["listen-key-1", "listen-key-2"]
        assert _sockets_on(replay)[-1] == "listen-key-2"


async def test_a_keepalive_answered_1125_reconnects_on_a_new_key() -> None:
    async with binance_stream() as (replay, keys, recorder):
        since = len(recorder.events)
        keys.extend_answer = error(-1125, "This listenKey does not exist.")
        await _all_down_then_up(recorder, since)
        assert keys.issued[:2] == ["listen-key-1", "listen-key-2"]
        assert _sockets_on(replay)[1] == "listen-key-2"


async def test_a_failed_keepalive_is_retried_without_dropping_the_stream() -> None:
    async with binance_stream() as (replay, keys, recorder):
        since = len(recorder.events)
        keys.extend_answer = (503, {"code": -1001, "msg": "Internal error; unable to process your request."})
        await keys.wait_extended(3)
        keys.extend_answer = {}
        await keys.wait_extended(keys.extended + 2)
        assert recorder.of(StreamStatus, since) == []
        assert keys.issued == ["listen-key-1"]
