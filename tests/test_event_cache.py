"""The ingest cache writes, in one Redis call per batch, exactly the README's schema.

``posguard:{acct}:venue:position:<symbol>`` (hash: side size entry_price stop_price ts_ms),
``posguard:{acct}:venue:order:<client_order_id>`` (hash, expires after a day),
``posguard:{acct}:events`` (stream: type symbol data, the event as JSON), and the per-topic
``_connected _changed_ms _reason _last_event_ms`` fields of ``posguard:{acct}:health``; all
plain text as ``redis-cli`` shows it. Fenced like every write: a stale token writes nothing.
"""

from __future__ import annotations

import coredis
import pytest

from posguard.actors.store.client import open_redis
from posguard.actors.store.event_cache import ORDER_TTL_SECONDS, RedisEventCache
from posguard.actors.store.keys import Keys
from posguard.actors.store.lease import Fence, Fenced
from posguard.streams.venue.events import (
    Execution,
    Heartbeat,
    Order,
    Position,
    StreamStatus,
    VenueEvent,
    decode_event,
)
from tests.clock import IOAwareMockClock

BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"
ACCOUNT = "cache"


def batch() -> list[VenueEvent]:
    return [
        StreamStatus(topic="orders", connected=True, reason="connected", ts_ms=1),
        Heartbeat(topic="positions", ts_ms=2),
        Position(symbol=BTC, side="long", size=0.01, entry_price=60_000.0, stop_price=58_800.0, ts_ms=3, seq=7),
        Order(symbol=BTC, order_id="1", client_order_id="pg-e", side="buy", kind="market", qty=0.01, filled=0.0,
              avg_price=None, status="open", reduce_only=False, stop_price=None, ts_ms=4),
        Order(symbol=BTC, order_id="1", client_order_id="pg-e", side="buy", kind="market", qty=0.01, filled=0.01,
              avg_price=60_000.5, status="filled", reduce_only=False, stop_price=None, ts_ms=5),
        Order(symbol=ETH, order_id="9", client_order_id="", side="sell", kind="stop", qty=1.0, filled=0.0,
              avg_price=None, status="open", reduce_only=True, stop_price=3_000.0, ts_ms=6),
        Execution(symbol=BTC, exec_id="x1", order_id="1", client_order_id="pg-e", side="buy", qty=0.01,
                  price=60_000.5, ts_ms=7),
        Position(symbol=ETH, side="flat", size=0.0, entry_price=0.0, stop_price=None, ts_ms=8),
        StreamStatus(topic="executions", connected=False, reason="boom", ts_ms=9),
    ]


async def test_one_call_per_batch_writes_the_documented_schema(clock: IOAwareMockClock, redis_url: str) -> None:
    keys = Keys(ACCOUNT)
    async with open_redis(redis_url) as client:
        cache = RedisEventCache(client, ACCOUNT)
        with clock.hold():
            before = await commands(client)
            await cache.write(batch())
            after = await commands(client)
            assert after.get("eval", 0) - before.get("eval", 0) == 1
            assert cache.round_trips == 1
            assert await client.hgetall(keys.venue_position(BTC)) == {
                "side": "long", "size": "0.01", "entry_price": "60000.0", "stop_price": "58800.0", "ts_ms": "3"}
            assert await client.hgetall(keys.venue_position(ETH)) == {
                "side": "flat", "size": "0.0", "entry_price": "0.0", "stop_price": "", "ts_ms": "8"}
            assert await client.hgetall(keys.venue_order("pg-e")) == {
                "symbol": BTC, "order_id": "1", "kind": "market", "side": "buy", "status": "filled", "qty": "0.01",
                "filled": "0.01", "avg_price": "60000.5", "stop_price": "", "ts_ms": "5"}
            assert 0 < await client.ttl(keys.venue_order("pg-e")) <= ORDER_TTL_SECONDS
            assert not await client.exists([keys.venue_order("")])
            entries = [dict(entry.field_values) for entry in await client.xrange(keys.events)]
            journalled = [e for e in batch() if not isinstance(e, Heartbeat)]
            assert [(f["type"], f["symbol"]) for f in entries] == [
                (type(e).__name__.lower(), getattr(e, "symbol", "")) for e in journalled]
            assert [decode_event(f["data"]) for f in entries] == journalled
            health = await client.hgetall(keys.health)
            assert health == {
                "orders_connected": "yes", "orders_changed_ms": "1", "orders_reason": "connected",
                "executions_connected": "no", "executions_changed_ms": "9", "executions_reason": "boom",
                "orders_last_event_ms": "6", "positions_last_event_ms": "8", "executions_last_event_ms": "9",
            }


async def commands(client: coredis.Redis[str]) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}  # type: ignore[index]


async def test_a_batch_of_heartbeats_only_writes_the_last_event_times(clock: IOAwareMockClock, redis_url: str) -> None:
    keys = Keys(ACCOUNT)
    async with open_redis(redis_url) as client:
        with clock.hold():
            await RedisEventCache(client, ACCOUNT).write([Heartbeat(topic="orders", ts_ms=5)])
            assert await client.hgetall(keys.health) == {"orders_last_event_ms": "5"}
            assert not await client.exists([keys.events])


async def test_a_stale_token_writes_nothing(clock: IOAwareMockClock, redis_url: str) -> None:
    keys = Keys(ACCOUNT)
    async with open_redis(redis_url) as client:
        with clock.hold():
            await client.set(keys.epoch, "8")
            with pytest.raises(Fenced):
                await RedisEventCache(client, ACCOUNT, Fence(ACCOUNT, token="7")).write(batch())
            assert not await client.exists([keys.events, keys.health, keys.venue_position(BTC), keys.venue_order("pg-e")])
