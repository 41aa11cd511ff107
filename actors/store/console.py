"""What the operator's commands read and write in Redis (``posguard status``, ``audit``,
``events``, ``open``/``close``, ``safe-mode``).

The operator is just another Redis client: it reads the schema the README documents, so what
it shows is exactly what ``redis-cli`` would, and it asks the running process for work by
writing request fields of the health hash, which that process polls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from posguard.actors.store.client import RedisClient
from posguard.actors.store.health import Health, OperatorRequests, decode_health, encode_fields
from posguard.actors.store.intent_stream import StreamEntry
from posguard.actors.store.keys import Keys
from posguard.actors.store.positions import RecordScan, read_position_hashes

__all__ = ["TAILABLE_STREAMS", "OperatorConsole"]

TAILABLE_STREAMS = ("journal", "audit", "alerts", "events", "intents")
"""The streams ``posguard events`` shows; each is an attribute of `Keys`."""


class OperatorConsole:
    def __init__(self, client: RedisClient, account: str) -> None:
        self.client = client
        self.keys = Keys(account)

    async def records(self) -> RecordScan:
        """Every position record, and every hash that is not a usable one (shown, not fatal)."""
        return await read_position_hashes(self.client, self.keys)

    async def health(self) -> Health:
        return decode_health(dict(await self.client.hgetall(self.keys.health)))

    async def request(self, requests: OperatorRequests) -> None:
        """Ask the running process for something (it polls the health hash)."""
        await self.client.hset(self.keys.health, encode_fields(requests))

    async def audit_findings_since(self, ms: int) -> list[StreamEntry]:
        entries = await self.client.xrange(self.keys.audit, start=f"{ms}-0")
        return [StreamEntry(e.identifier, dict(e.field_values)) for e in entries]

    async def tail(self, stream: str, *, count: int, follow: bool) -> AsyncIterator[StreamEntry]:
        """The last ``count`` entries of a stream, oldest first; then, with ``follow``, every
        new one as it arrives."""
        if stream not in TAILABLE_STREAMS:
            raise ValueError(f"unknown stream {stream!r}; one of {', '.join(TAILABLE_STREAMS)}")
        key = getattr(self.keys, stream)
        entries = list(reversed(await self.client.xrevrange(key, count=count)))
        for entry in entries:
            yield StreamEntry(entry.identifier, dict(entry.field_values))
        last = entries[-1].identifier if entries else "$"
        while follow:
            reply = await self.client.xread({key: last}, count=100, block=1000)
            for entry in (reply or {}).get(key, ()):
                yield StreamEntry(entry.identifier, dict(entry.field_values))
                last = entry.identifier
