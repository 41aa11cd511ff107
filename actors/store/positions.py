"""Where the actor writes ahead: position records, intent records and the journal.

`Store` is the seam; `RedisStore` is the implementation (there is deliberately no in-memory
one: tests run against a real redis-server). Each record write and its journal entry go in
one MULTI/EXEC, so the journal never disagrees with the record it describes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import coredis.exceptions
import msgspec

from posguard.actors.findings import Finding
from posguard.actors.intents import IntentRecord
from posguard.actors.records import (
    PRESCREEN_DECIMAL,
    PRESCREEN_WHOLE,
    RETIRED_FIELDS,
    BadRecord,
    PositionRecord,
    RecordDefect,
    State,
    decode_prescreened,
    decode_record,
    utc_now,
)
from posguard.actors.store.client import RedisClient
from posguard.actors.store.health import Health, HealthStatus, StreamHealth, decode_health, encode_fields
from posguard.actors.store.keys import Keys
from posguard.actors.store.lease import Fence, FencedBatch

__all__ = [
    "INTENT_TTL_SECONDS", "JOURNAL_MAXLEN", "REPLY_TTL_SECONDS", "RecordHead", "RecordScan", "RedisStore", "Store",
    "UNSEEN", "Unseen", "WriteAheadStale", "decode_hash", "may_be_live",
]

JOURNAL_MAXLEN = 1_000_000
REPLY_TTL_SECONDS = 86_400
"""An intent's reply list lives a day after its last reply (README, "Intents")."""
INTENT_TTL_SECONDS = 7 * 86_400
"""An intent record lives a week after its last change: that long, its id is recognised as
already handled (a duplicate); after that the id may be used again (README, "Intents")."""


class RecordHead(msgspec.Struct, frozen=True):
    """What decides whether a symbol may take a new entry (`entry.open_position`), as this
    process last read or wrote it: the record's state, its intent, its last proof of flat.
    ``fields`` are those three exactly as the hash holds them, for `FencedBatch.expect_fields`."""

    state: State
    intent_id: str
    flat_ms: int
    fields: dict[str, str]

    @classmethod
    def of(cls, record: PositionRecord, fields: Mapping[str, str]) -> RecordHead:
        return cls(record.state, record.intent_id, record.flat_ms,
                   {name: str(fields.get(name, "")) for name in _HEAD_FIELDS})


_HEAD_FIELDS = ("state", "intent_id", "flat_ms")


class Unseen:
    """This process has not read or written the symbol's record since it started (or the last
    read of it failed): a decision needs a fresh read."""


UNSEEN = Unseen()


def may_be_live(head: RecordHead | None | Unseen) -> bool:
    """The one rule for whether a symbol may hold a live record in Redis, from what this
    process last saw of it: unseen counts as live (not read yet, a read or write under way or
    failed: a write is marked unseen before it goes out, so a crash between them errs live),
    none or a terminal state does not. A push that may end a position nudges only such a
    symbol's actor (`EventRouter.route`), which would otherwise read Redis to find nothing
    there to end; one queued while the record was live is dropped unread once it is not
    (`repairs.follow_venue`)."""
    return isinstance(head, Unseen) or (head is not None and head.state.is_live)


class WriteAheadStale(Exception):
    """An entry's write ahead found Redis changed since this process last saw it (the intent id
    is taken, or the symbol's record differs from `RecordHead`): nothing was written or sent.
    The intent is decided again from a fresh read."""


class RecordScan(msgspec.Struct, kw_only=True):
    """Every position hash of the account, each decoded on its own: one bad hash never hides
    the others."""

    usable: list[PositionRecord]
    bad: list[RecordDefect]


def decode_hash(keys: Keys, symbol: str, fields: dict[str, str]) -> PositionRecord:
    """The record stored under ``symbol``'s key; `BadRecord` (naming the key) if unusable."""
    try:
        return decode_record(fields, symbol=symbol)
    except BadRecord as exc:
        raise BadRecord(msgspec.structs.replace(exc.defect, key=keys.position(symbol))) from None


def not_a_hash(keys: Keys, symbol: str) -> BadRecord:
    """A record key that holds another Redis type (a hand-typed SET or LPUSH): unusable too."""
    return BadRecord(RecordDefect(symbol=symbol, key=keys.position(symbol), field="", value="",
                                  reason="not a hash: the key holds another Redis type (see TYPE)"))


class Store(Protocol):
    async def load_record(self, symbol: str) -> PositionRecord | None:
        """The symbol's record, None if it has none; `BadRecord` if its hash is unusable."""
        ...

    async def save_record(self, record: PositionRecord, note: str = "", *, replies: Sequence[IntentRecord] = ()) -> None:
        """Persist the record, journal the transition and write ``replies`` (intent answers
        the write settles), atomically."""
        ...

    async def append_journal(self, record: PositionRecord, note: str = "") -> None:
        """Journal a step without writing the record's hash (a quarantined symbol's guard)."""
        ...

    def seen_head(self, symbol: str) -> RecordHead | None | Unseen:
        """The symbol's record as this process last read or wrote it (None: it had none)."""
        ...

    def may_be_live(self, symbol: str) -> bool:
        """Whether the symbol's record in Redis may be live (`may_be_live`, from `seen_head`)."""
        ...

    async def write_ahead(self, record: PositionRecord, note: str, *, accepted: IntentRecord,
                          seen: RecordHead | None, replies: Sequence[IntentRecord] = ()) -> None:
        """A new entry's one write before its send: ``accepted`` (its intent record and reply),
        the record and its journal entry (and ``replies``, as `save_record`), in one fenced
        transaction that writes only if the intent id has no record and the symbol's record is
        still ``seen``; else `WriteAheadStale`, with nothing written."""
        ...

    async def list_records(self) -> list[PositionRecord]:
        """Every usable record (the unusable ones are in `read_records`)."""
        ...

    async def read_records(self) -> RecordScan: ...

    async def load_intent(self, intent_id: str) -> IntentRecord | None: ...

    async def save_intent(self, intent: IntentRecord) -> None: ...

    async def save_intent_if_new(self, intent: IntentRecord) -> IntentRecord | None:
        """`save_intent` unless the id has a record already: then nothing is written and that
        record is returned."""
        ...

    async def still_accepted(self, intent_ids: Sequence[str]) -> set[str]:
        """Which of these intents are stored as ``accepted`` (begun, never answered)."""
        ...

    async def push_reply(self, reply: IntentRecord) -> None:
        """Append a reply to the intent's reply list only, leaving its intent record as it is."""
        ...

    async def append_alert(self, symbol: str, message: str) -> None: ...

    async def append_audit(self, finding: Finding, *, dry_run: bool = False) -> None: ...

    async def publish_status(self, status: HealthStatus) -> None:
        """Write the status fields of the health hash that ``status`` sets (never a request)."""
        ...

    async def publish_streams(self, streams: dict[str, StreamHealth]) -> None:
        """Write the per-topic stream fields of the health hash."""
        ...

    async def read_health(self) -> Health: ...


class RedisStore:
    def __init__(self, client: RedisClient, account: str, fence: Fence | None = None) -> None:
        self.client = client
        self.keys = Keys(account)
        self.fence = fence or Fence(account)
        """Every write goes through it (`store.lease.fenced_write`); unfenced without a lease."""
        self._heads: dict[str, RecordHead | None | Unseen] = {}
        self._scanned = False
        """Every position hash has been read once (`read_records`): a symbol with no head has
        no record (one written since by another hand is caught by `write_ahead`'s check)."""

    async def load_record(self, symbol: str) -> PositionRecord | None:
        self._heads[symbol] = UNSEEN  # until the read says otherwise (it may raise)
        try:
            fields = await self.client.hgetall(self.keys.position(symbol))
        except coredis.exceptions.WrongTypeError:
            raise not_a_hash(self.keys, symbol) from None
        if not fields:
            self._heads[symbol] = None
            return None
        record = decode_hash(self.keys, symbol, dict(fields))
        self._heads[symbol] = RecordHead.of(record, fields)
        return record

    def seen_head(self, symbol: str) -> RecordHead | None | Unseen:
        return self._heads.get(symbol, None if self._scanned else UNSEEN)

    def may_be_live(self, symbol: str) -> bool:
        return may_be_live(self.seen_head(symbol))

    async def save_record(self, record: PositionRecord, note: str = "", *, replies: Sequence[IntentRecord] = ()) -> None:
        self._heads[record.symbol] = UNSEEN  # a write that raises may or may not have been done
        async with self.fence.batch(self.client) as pipe:
            fields = self._record(pipe, record, note)
            for reply in replies:
                self._intent(pipe, reply)
        self._heads[record.symbol] = RecordHead.of(record, fields)

    async def write_ahead(self, record: PositionRecord, note: str, *, accepted: IntentRecord,
                          seen: RecordHead | None, replies: Sequence[IntentRecord] = ()) -> None:
        key = self.keys.position(record.symbol)
        self._heads[record.symbol] = UNSEEN
        async with self.fence.batch(self.client) as pipe:
            pipe.expect_absent(self.keys.intent(accepted.intent_id))
            if seen is None:
                pipe.expect_absent(key)
            else:
                pipe.expect_fields(key, seen.fields)
            self._intent(pipe, accepted)
            fields = self._record(pipe, record, note)
            for reply in replies:
                self._intent(pipe, reply)
        if not pipe.written:
            raise WriteAheadStale(f"{record.symbol}: intent {accepted.intent_id} or the symbol's record changed in"
                                  " Redis since this process last saw them")
        self._heads[record.symbol] = RecordHead.of(record, fields)

    def _record(self, pipe: FencedBatch, record: PositionRecord, note: str) -> dict[str, str]:
        record.updated_at = utc_now()
        if not record.created_at:
            record.created_at = record.updated_at
        fields = record.to_fields()
        pipe.hset(self.keys.position(record.symbol), fields)
        pipe.hdel(self.keys.position(record.symbol), RETIRED_FIELDS)
        pipe.sadd(self.keys.positions, [record.symbol])
        self._journal(pipe, record, note)
        return fields

    async def append_journal(self, record: PositionRecord, note: str = "") -> None:
        async with self.fence.batch(self.client) as pipe:
            self._journal(pipe, record, note)

    def _journal(self, pipe: FencedBatch, record: PositionRecord, note: str) -> None:
        entry = {
            "symbol": record.symbol,
            "state": str(record.state),
            "intent_id": record.intent_id,
            "client_order_id": record.client_order_id,
            "filled_qty": str(record.filled_qty),
            "stop_price": str(record.stop_price),
            "note": note or record.reason,
        }
        pipe.xadd(self.keys.journal, entry, maxlen=JOURNAL_MAXLEN)

    async def list_records(self) -> list[PositionRecord]:
        return (await self.read_records()).usable

    async def read_records(self) -> RecordScan:
        scan = await read_position_hashes(self.client, self.keys)
        for record in scan.usable:  # what this process wrote or read since stays: it is as fresh
            if record.symbol not in self._heads:  # (built only then: 40 ms per audit at 10,000)
                self._heads[record.symbol] = RecordHead.of(record, record.to_fields())
        for defect in scan.bad:
            self._heads[defect.symbol] = UNSEEN
        self._scanned = True
        return scan

    async def load_intent(self, intent_id: str) -> IntentRecord | None:
        fields = await self.client.hgetall(self.keys.intent(intent_id))
        return IntentRecord.from_fields(dict(fields)) if fields else None

    async def save_intent(self, intent: IntentRecord) -> None:
        """Write the intent's record and push the change to its reply list, atomically."""
        async with self.fence.batch(self.client) as pipe:
            self._intent(pipe, intent)

    async def save_intent_if_new(self, intent: IntentRecord) -> IntentRecord | None:
        async with self.fence.batch(self.client) as pipe:
            pipe.expect_absent(self.keys.intent(intent.intent_id))
            self._intent(pipe, intent)
        if pipe.written:
            return None
        earlier = await self.load_intent(intent.intent_id)
        if earlier is None:  # expired in between: the id is new again
            return await self.save_intent_if_new(intent)
        return earlier

    def _intent(self, pipe: FencedBatch, intent: IntentRecord) -> None:
        intent.updated_at = utc_now()
        reply_key = self.keys.reply(intent.intent_id)
        intent_key = self.keys.intent(intent.intent_id)
        pipe.hset(intent_key, intent.to_fields())
        pipe.expire(intent_key, INTENT_TTL_SECONDS)
        pipe.rpush(reply_key, [msgspec.json.encode(intent).decode()])
        pipe.expire(reply_key, REPLY_TTL_SECONDS)

    async def still_accepted(self, intent_ids: Sequence[str]) -> set[str]:
        if not intent_ids:
            return set()
        async with self.client.pipeline(transaction=False) as pipe:
            statuses = [pipe.hget(self.keys.intent(intent_id), "status") for intent_id in intent_ids]
        return {intent_id for intent_id, status in zip(intent_ids, statuses, strict=True)
                if await status == "accepted"}

    async def push_reply(self, reply: IntentRecord) -> None:
        reply.updated_at = utc_now()
        reply_key = self.keys.reply(reply.intent_id)
        async with self.fence.batch(self.client) as pipe:
            pipe.rpush(reply_key, [msgspec.json.encode(reply).decode()])
            pipe.expire(reply_key, REPLY_TTL_SECONDS)

    async def append_alert(self, symbol: str, message: str) -> None:
        async with self.fence.batch(self.client) as pipe:
            pipe.xadd(self.keys.alerts, {"symbol": symbol, "message": message, "at": utc_now()}, maxlen=100_000)

    async def append_audit(self, finding: Finding, *, dry_run: bool = False) -> None:
        async with self.fence.batch(self.client) as pipe:
            pipe.xadd(self.keys.audit, {
                "symbol": finding.symbol,
                "kind": finding.kind,
                "seen": finding.seen,
                "action": finding.action,
                "dry_run": "yes" if dry_run else "no",
                "at": utc_now(),
            }, maxlen=100_000)

    async def publish_status(self, status: HealthStatus) -> None:
        async with self.fence.batch(self.client) as pipe:
            pipe.hset(self.keys.health, encode_fields(status))

    async def publish_streams(self, streams: dict[str, StreamHealth]) -> None:
        fields = {k: v for topic, stream in streams.items() for k, v in encode_fields(stream, topic=topic).items()}
        async with self.fence.batch(self.client) as pipe:
            pipe.hset(self.keys.health, fields)

    async def read_health(self) -> Health:
        return decode_health(dict(await self.client.hgetall(self.keys.health)))


SCREENED_READ = """
local whole, decimal = {}, {}
for name in string.gmatch(ARGV[1], '[^,]+') do whole[name] = true end
for name in string.gmatch(ARGV[2], '[^,]+') do decimal[name] = true end
local out = {}
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key).ok
  if kind == 'none' then
    out[i] = 0
  elseif kind ~= 'hash' then
    out[i] = 1
  else
    local flat = redis.call('HGETALL', key)
    local fields, plain = {}, true
    for j = 1, #flat, 2 do
      local name, value = flat[j], flat[j + 1]
      if whole[name] then
        if value ~= '' then
          if string.find(value, '^%d+$') then fields[name] = value else plain = false end
        end
      elseif decimal[name] then
        if value ~= '' then
          if string.find(value, '^%d[%d.eE+-]*$') then fields[name] = value else plain = false end
        end
      else
        fields[name] = value
      end
    end
    if plain and fields.protection then out[i] = cjson.encode(fields) else out[i] = 2 end
  end
end
return out
"""
"""Reads position hashes for `decode_prescreened`, one reply per key: 0 none, 1 not a hash,
2 "decode this one field by field" (a numeric field that failed the screen, no
``protection``), else the hash as one JSON object of its text fields. Only a read: the hashes
stay what they are."""
SCREENED_CHUNK = 500
"""Keys per script call: a script runs alone, and 500 hashes keep Redis busy about 5 ms."""
_SCREEN_ARGS = [",".join(PRESCREEN_WHOLE), ",".join(PRESCREEN_DECIMAL)]


async def read_position_hashes(client: RedisClient, keys: Keys) -> RecordScan:
    """Every position hash of the account, each decoded on its own.

    Two passes, both pipelined: `SCREENED_READ` gives most hashes as one JSON document each,
    decoded by `decode_prescreened` in one msgspec call (a 10,000-record audit no longer
    spends its time parsing 600,000 reply strings and fields one by one); whatever that
    path cannot vouch for (a poison record, an old one, a script Redis refused) is read again
    with HGETALL and decoded by `decode_record`, which names its defect. The verdicts are
    the same either way."""
    scan = RecordScan(usable=[], bad=[])
    # A member that is not text (a hand-written SADD) names no record posguard could have written.
    symbols = sorted(s for s in await client.smembers(keys.positions) if isinstance(s, str))
    if not symbols:
        return scan
    chunks = [symbols[i:i + SCREENED_CHUNK] for i in range(0, len(symbols), SCREENED_CHUNK)]
    async with client.pipeline(transaction=False, raise_on_error=False) as pipe:
        screened = [pipe.eval(SCREENED_READ, [keys.position(s) for s in chunk], _SCREEN_ARGS) for chunk in chunks]
    field_by_field: list[str] = []
    for chunk, reply in zip(chunks, screened, strict=True):
        try:
            answers = list(await reply)
        except coredis.exceptions.ResponseError:
            field_by_field.extend(chunk)
            continue
        for symbol, answer in zip(chunk, answers, strict=True):
            if answer == 0:
                continue
            if answer == 1:
                scan.bad.append(not_a_hash(keys, symbol).defect)
                continue
            record = decode_prescreened(answer, symbol=symbol) if isinstance(answer, str | bytes) else None
            if record is None:
                field_by_field.append(symbol)
            else:
                scan.usable.append(record)
    if field_by_field:
        async with client.pipeline(transaction=False, raise_on_error=False) as pipe:
            replies = [pipe.hgetall(keys.position(symbol)) for symbol in field_by_field]
        for symbol, hash_reply in zip(field_by_field, replies, strict=True):
            try:
                fields = await hash_reply
                if fields:
                    scan.usable.append(decode_hash(keys, symbol, dict(fields)))
            except coredis.exceptions.WrongTypeError:
                scan.bad.append(not_a_hash(keys, symbol).defect)
            except BadRecord as exc:
                scan.bad.append(exc.defect)
        scan.usable.sort(key=lambda record: record.symbol)
    return scan
