"""The Redis side of ingestion: the event journal, latest venue snapshots and stream health.

One Redis call per batch of events, however many it holds: one fenced Lua script
(`INGEST_SCRIPT`, run by `run_fenced`, so a stale process cannot overwrite the leader's view)
that writes, per event, the venue's latest position or order hash and the journal entry, then
the health hash once. The client sends only the values: the field names travel once per batch
as the script's schemas (`POSITION_FIELDS`, `ORDER_FIELDS`, this module's one home of them),
and each key once however many events name it. What lands in Redis is exactly what the
README's schema documents (plain hashes and stream entries, `redis-cli`-readable); the health
fields of a batch are written together at its end (the last value of each field wins, as when
they were written one by one).

The cache is for operators and for restarts; the actors' live evidence is the in-memory
`EvidenceBoard`, so a slow or absent Redis never delays a verification.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posguard.actors.store.client import RedisClient
from posguard.actors.store.health import StreamHealth, encode_fields
from posguard.actors.store.keys import Keys
from posguard.actors.store.lease import FENCE_CHECK, Fence, run_fenced
from posguard.streams.venue.events import Execution, Heartbeat, Order, Position, StreamStatus, VenueEvent, encode_event

__all__ = ["EVENTS_MAXLEN", "INGEST_SCRIPT", "ORDER_FIELDS", "ORDER_TTL_SECONDS", "POSITION_FIELDS", "RedisEventCache"]

EVENTS_MAXLEN = 200_000
ORDER_TTL_SECONDS = 86_400

POSITION_FIELDS = ("side", "size", "entry_price", "stop_price", "ts_ms")
"""``posguard:{acct}:venue:position:<symbol>``: the latest pushed position."""
ORDER_FIELDS = ("symbol", "order_id", "kind", "side", "status", "qty", "filled", "avg_price", "stop_price", "ts_ms")
"""``posguard:{acct}:venue:order:<client_order_id>``: the latest pushed state of one of our orders."""

_NO_HASH, _POSITION, _ORDER = "0", "1", "2"

INGEST_SCRIPT = FENCE_CHECK + """
local events, health = KEYS[2], KEYS[3]
local maxlen, ttl = ARGV[2], ARGV[3]
local schemas, i = {}, 5
for s = 1, tonumber(ARGV[4]) do
  local n, names = tonumber(ARGV[i]), {}
  for j = 1, n do names[j] = ARGV[i + j] end
  schemas[s], i = names, i + 1 + n
end
local records = tonumber(ARGV[i])
i = i + 1
for r = 1, records do
  local schema = tonumber(ARGV[i])
  if schema > 0 then
    local key, names, args = KEYS[tonumber(ARGV[i + 1])], schemas[schema], {}
    for j = 1, #names do
      args[2 * j - 1], args[2 * j] = names[j], ARGV[i + 1 + j]
    end
    redis.call('HSET', key, unpack(args))
    if schema == 2 then redis.call('EXPIRE', key, ttl) end
    i = i + 2 + #names
  else
    i = i + 1
  end
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', ARGV[i], 'symbol', ARGV[i + 1], 'data', ARGV[i + 2])
  i = i + 3
end
local fields = {}
for j = i, #ARGV do fields[#fields + 1] = ARGV[j] end
if #fields > 0 then redis.call('HSET', health, unpack(fields)) end
return 1
"""
"""KEYS: epoch, events stream, health hash, then the hashes the batch writes. ARGV: token,
journal cap, order ttl, the schemas (count, then each as its field count and names), the
records (count, then each: schema 0 (journal only) or schema and key index then one value per
field; then the journal entry's type, symbol and data), then the health hash's field-value
pairs to the end."""

_SCHEMAS: list[Any] = ["2", str(len(POSITION_FIELDS)), *POSITION_FIELDS, str(len(ORDER_FIELDS)), *ORDER_FIELDS]


def _num(value: float | None) -> str:
    return "" if value is None else str(value)


class RedisEventCache:
    def __init__(self, client: RedisClient, account: str, fence: Fence | None = None) -> None:
        self.client = client
        self.keys = Keys(account)
        self.fence = fence or Fence(account)
        """A stale process must not overwrite the leader's view of the venue: fenced too."""
        self.round_trips = 0
        self._head = [self.fence.keys.epoch, self.keys.events, self.keys.health]

    async def write(self, batch: Sequence[VenueEvent]) -> None:
        """The batch's journal entries, venue hashes and health fields, in one script call."""
        keys = self.keys
        index: dict[str, int] = {}
        key_list = list(self._head)
        argv: list[Any] = ["", EVENTS_MAXLEN, ORDER_TTL_SECONDS, *_SCHEMAS, 0]
        records = 0
        health: dict[str, str] = {}
        last_heard: dict[str, int] = {}
        for event in batch:
            kind = type(event)
            if kind is Heartbeat:
                last_heard[event.topic] = event.ts_ms  # type: ignore[union-attr]
                continue
            records += 1
            if kind is Position:
                assert isinstance(event, Position)
                last_heard["positions"] = event.ts_ms
                key = keys.venue_position(event.symbol)
                number = index.get(key)
                if number is None:
                    key_list.append(key)
                    number = index[key] = len(key_list)
                argv += (_POSITION, number, event.side, str(event.size), str(event.entry_price),
                         _num(event.stop_price), str(event.ts_ms), "position", event.symbol, encode_event(event))
            elif kind is Order:
                assert isinstance(event, Order)
                last_heard["orders"] = event.ts_ms
                if event.client_order_id:
                    key = keys.venue_order(event.client_order_id)
                    number = index.get(key)
                    if number is None:
                        key_list.append(key)
                        number = index[key] = len(key_list)
                    argv += (_ORDER, number, event.symbol, event.order_id, event.kind, event.side, event.status,
                             str(event.qty), str(event.filled), _num(event.avg_price), _num(event.stop_price),
                             str(event.ts_ms))
                else:
                    argv.append(_NO_HASH)
                argv += ("order", event.symbol, encode_event(event))
            elif kind is Execution:
                assert isinstance(event, Execution)
                last_heard["executions"] = event.ts_ms
                argv += (_NO_HASH, "execution", event.symbol, encode_event(event))
            else:
                assert isinstance(event, StreamStatus)
                last_heard[event.topic] = event.ts_ms
                health.update(encode_fields(
                    StreamHealth(connected=event.connected, changed_ms=event.ts_ms, reason=event.reason),
                    topic=event.topic,
                ))
                argv += (_NO_HASH, "streamstatus", "", encode_event(event))
        if not records and not last_heard:
            return
        argv[3 + len(_SCHEMAS)] = records
        for topic, ms in last_heard.items():
            health.update(encode_fields(StreamHealth(last_event_ms=ms), topic=topic))
        for pair in health.items():
            argv += pair
        await run_fenced(self.client, self.fence, INGEST_SCRIPT, key_list, argv)
        self.round_trips += 1
