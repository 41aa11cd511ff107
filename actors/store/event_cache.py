"""The Redis side of ingestion: the event journal, latest venue snapshots and stream health.

Writes are batched: one pipeline (one round trip) per batch of events, however many events
it holds. The cache is for operators and for restarts; the actors' live evidence is the
in-memory `EvidenceBoard`, so a slow or absent Redis never delays a verification.
"""

from __future__ import annotations

from collections.abc import Sequence

from posguard.actors.store.client import RedisClient
from posguard.actors.store.health import StreamHealth, encode_fields
from posguard.actors.store.keys import Keys
from posguard.actors.store.lease import Fence
from posguard.streams.venue.events import Execution, Heartbeat, Order, Position, StreamStatus, VenueEvent, encode_event

__all__ = ["RedisEventCache"]

EVENTS_MAXLEN = 200_000
ORDER_TTL_SECONDS = 86_400


_TOPIC_OF: dict[type, str] = {Position: "positions", Order: "orders", Execution: "executions"}


def _num(value: float | None) -> str:
    return "" if value is None else str(value)


class RedisEventCache:
    def __init__(self, client: RedisClient, account: str, fence: Fence | None = None) -> None:
        self.client = client
        self.keys = Keys(account)
        self.fence = fence or Fence(account)
        """A stale process must not overwrite the leader's view of the venue: fenced too."""
        self.round_trips = 0

    async def write(self, batch: Sequence[VenueEvent]) -> None:
        keys = self.keys
        last_heard: dict[str, int] = {}
        async with self.fence.batch(self.client) as pipe:
            for event in batch:
                last_heard[_TOPIC_OF.get(type(event)) or event.topic] = event.ts_ms  # type: ignore[union-attr]
                match event:
                    case Heartbeat():
                        continue
                    case StreamStatus():
                        pipe.hset(keys.health, encode_fields(
                            StreamHealth(connected=event.connected, changed_ms=event.ts_ms, reason=event.reason),
                            topic=event.topic,
                        ))
                        symbol = ""
                    case Position():
                        pipe.hset(
                            keys.venue_position(event.symbol),
                            {
                                "side": event.side,
                                "size": str(event.size),
                                "entry_price": str(event.entry_price),
                                "stop_price": _num(event.stop_price),
                                "ts_ms": str(event.ts_ms),
                            },
                        )
                        symbol = event.symbol
                    case Order():
                        if event.client_order_id:
                            key = keys.venue_order(event.client_order_id)
                            pipe.hset(
                                key,
                                {
                                    "symbol": event.symbol,
                                    "order_id": event.order_id,
                                    "kind": event.kind,
                                    "side": event.side,
                                    "status": event.status,
                                    "qty": str(event.qty),
                                    "filled": str(event.filled),
                                    "avg_price": _num(event.avg_price),
                                    "stop_price": _num(event.stop_price),
                                    "ts_ms": str(event.ts_ms),
                                },
                            )
                            pipe.expire(key, ORDER_TTL_SECONDS)
                        symbol = event.symbol
                    case Execution():
                        symbol = event.symbol
                pipe.xadd(
                    keys.events,
                    {"type": type(event).__name__.lower(), "symbol": symbol, "data": encode_event(event).decode()},
                    maxlen=EVENTS_MAXLEN,
                )
            if last_heard:
                pipe.hset(keys.health, {
                    field: value
                    for topic, ms in last_heard.items()
                    for field, value in encode_fields(StreamHealth(last_event_ms=ms), topic=topic).items()
                })
        self.round_trips += 1
