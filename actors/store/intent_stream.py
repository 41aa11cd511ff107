"""The intents stream: strategies ``XADD`` intents, posguard reads them in a consumer group.

The stream and group names are part of posguard's interface (README, "Intents"). An entry is
acknowledged only once its intent is owned (written ahead); until then it stays pending, so a
crash leaves it to be delivered again.

A missing group (``NOGROUP``; or a blocked read cut short because the stream was deleted,
``UNBLOCKED``) means Redis lost its data (restarted empty, ``FLUSHALL``): the reads raise
`IntentGroupMissing`, and `ensure_group` says whether it had to create the group again.
`IntentStream.trim` keeps the stream bounded without ever dropping an entry the group has not
read or still holds pending.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import coredis.exceptions
import msgspec
from coredis.commands import CommandRequest
from coredis.tokens import PureToken

from posguard.actors.store.client import RedisClient
from posguard.actors.store.keys import Keys
from posguard.actors.store.lease import Fence

__all__ = ["GROUP", "KEEP_ENTRIES", "IntentGroupMissing", "IntentStream", "StreamEntry"]

GROUP = "posguard"
"""The consumer group every posguard process of an account reads the intents stream in."""

KEEP_ENTRIES = 10_000
"""Handled entries the stream keeps as history (``posguard events --stream intents``)."""


class IntentGroupMissing(Exception):
    """The intents stream or its consumer group is gone: Redis lost its data (or someone
    deleted the key). The remedy is `IntentStream.ensure_group`, then a full audit."""


_GROUP_GONE = (coredis.exceptions.UnblockedError, coredis.exceptions.StreamConsumerGroupError)


@contextlib.contextmanager
def _group_gone_is_missing(key: str) -> Iterator[None]:
    try:
        yield
    except coredis.exceptions.StreamDuplicateConsumerGroupError:
        raise
    except _GROUP_GONE as exc:
        raise IntentGroupMissing(f"consumer group {GROUP!r} of {key} is gone ({exc})") from exc


class StreamEntry(msgspec.Struct, frozen=True):
    """One stream entry: its id and its fields, as plain text."""

    entry_id: str
    fields: dict[str, str]
    repeated: tuple[str, ...] = ()
    """Fields the entry gives more than once (XADD allows ``intent_id a ... intent_id b``), in
    the order they repeat; ``fields`` holds the last value of each."""


def _id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair (ms, sequence)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: str | bytes) -> str:
    """A field as text. Bytes that are not UTF-8 (the client could not decode them) become
    their escaped form, which no validation accepts: refused, never a crash."""
    return value if isinstance(value, str) else value.decode("utf-8", errors="backslashreplace")


def _entry(entry_id: str | bytes, pairs: list[str | bytes] | None) -> StreamEntry:
    fields: dict[str, str] = {}
    repeated: list[str] = []
    flat = [_text(item) for item in pairs or ()]  # None: an entry deleted while pending
    for name, value in zip(flat[::2], flat[1::2], strict=True):
        if name in fields and name not in repeated:
            repeated.append(name)
        fields[name] = value
    return StreamEntry(_text(entry_id), fields, tuple(repeated))


def _entries(raw: Any) -> list[StreamEntry]:
    """Entries from Redis' own reply, ``[[id, [field, value, ...]], ...]``: coredis' parsed
    form is a dict, which keeps only the last of a field given twice."""
    return [_entry(entry_id, pairs) for entry_id, pairs in raw]


def _as_sent(reply: Any, **_options: Any) -> Any:
    return reply


async def _unparsed(request: CommandRequest[Any]) -> Any:
    """A command's reply as Redis sent it (see `_entries`): its callback is what parses it."""
    request.callback = _as_sent
    return await request


class IntentStream:
    def __init__(self, client: RedisClient, account: str, fence: Fence | None = None) -> None:
        self.client = client
        self.keys = Keys(account)
        self.fence = fence or Fence(account)
        """Acknowledgements are fenced: a stale process must not ack an entry it never wrote ahead."""

    async def ensure_group(self) -> bool:
        """Create the stream and its consumer group if either is missing, reading from the
        start (entries added since a loss are not skipped). True if it had to create it."""
        try:
            await self.client.xgroup_create(self.keys.intents, GROUP, identifier="0", mkstream=True)
        except coredis.exceptions.StreamDuplicateConsumerGroupError:
            return False
        return True

    async def read(self, consumer: str, start: str, *, count: int, block_ms: int | None) -> list[StreamEntry]:
        """``start`` ``">"`` reads new entries; ``"0"`` this consumer's pending ones."""
        with _group_gone_is_missing(self.keys.intents):
            reply = await _unparsed(self.client.xreadgroup(
                GROUP, consumer, {self.keys.intents: start}, count=count, block=block_ms
            ))
        return _entries(next(iter(reply.values()), ())) if reply else []

    async def reclaim(self, consumer: str, *, min_idle_ms: int, count: int) -> list[StreamEntry]:
        """Take over entries pending longer than ``min_idle_ms`` in any consumer."""
        with _group_gone_is_missing(self.keys.intents):
            _next, entries, *_ = await _unparsed(self.client.xautoclaim(
                self.keys.intents, GROUP, consumer, min_idle_ms, "0-0", count=count
            ))
        return _entries(entries)

    async def ack(self, entry_id: str) -> None:
        async with self.fence.batch(self.client) as pipe:
            pipe.xack(self.keys.intents, GROUP, [entry_id])

    async def forget_consumers(self, alive: str) -> list[str]:
        """Delete every consumer of the group but ``alive`` that holds nothing pending: only the
        lease holder reads the stream, so any other consumer is a process that is gone (its
        pending entries are reclaimed first, `reclaim`). Returns the names deleted."""
        gone = []
        with _group_gone_is_missing(self.keys.intents):
            for consumer in await self.client.xinfo_consumers(self.keys.intents, GROUP):
                name = str(consumer.get("name"))
                if name != alive and not int(consumer.get("pending") or 0):
                    await self.client.xgroup_delconsumer(self.keys.intents, GROUP, name)
                    gone.append(name)
        return gone

    async def trim(self, *, keep: int = KEEP_ENTRIES) -> int:
        """Drop handled entries beyond the newest ``keep``; returns how many went.

        Never an entry the group has not read yet (newer than its last-delivered id) nor one
        still pending (read, not acknowledged): the cut (MINID) is the oldest of the ``keep``-th
        newest entry, the oldest pending one and the last delivered one, so a pending entry
        may keep more than ``keep`` but never fewer. A stream without the group is left alone.
        """
        key = self.keys.intents
        group = next((g for g in await self.client.xinfo_groups(key) if g.get("name") == GROUP), None)
        if group is None:
            return 0
        length = await self.client.xlen(key)
        if length <= keep:
            return 0
        # The entries beyond the newest ``keep``, and the first one to keep (the last read here).
        beyond = await self.client.xrange(key, "-", "+", count=length - keep + 1)
        floor = beyond[-1].identifier
        delivered = str(group.get("last-delivered-id") or "0-0")
        if _id_key(delivered) < _id_key(floor):
            floor = delivered
        if int(group.get("pending") or 0):
            oldest = (await self.client.xpending(key, GROUP)).minimum_identifier
            if oldest and _id_key(oldest) < _id_key(floor):
                floor = oldest
        return await self.client.xtrim(key, trim_strategy=PureToken.MINID, threshold=floor,  # type: ignore[arg-type]
                                       trim_operator=PureToken.EQUAL)

    async def entries(self, *, count: int | None = None) -> list[StreamEntry]:
        """The stream's entries, oldest first (all of them, or the first ``count``)."""
        return _entries(await _unparsed(self.client.xrange(self.keys.intents, "-", "+", count=count)))

    async def add(self, fields: dict[str, str]) -> str:
        """Append an intent, as a strategy would (the operator's ``open``/``close``)."""
        return await self.client.xadd(self.keys.intents, fields)

    async def replies_waiting(self, intent_id: str) -> int:
        """How many replies the intent's list holds now (ones another client left unread)."""
        return await self.client.llen(self.keys.reply(intent_id))

    async def next_reply(self, intent_id: str, *, timeout_s: float) -> dict[str, Any] | None:
        """The intent's next reply (``BLPOP`` on its reply list), or None after ``timeout_s``
        (Redis' own timeout, above 0: 0 would block for good)."""
        popped = await self.client.blpop([self.keys.reply(intent_id)], timeout=timeout_s)
        return json.loads(popped[1]) if popped else None
