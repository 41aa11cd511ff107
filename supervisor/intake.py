"""Intents from a Redis stream: any strategy, in any language, can ``XADD`` one.

    XADD 'posguard:{main}:intents' * intent_id sig-42 action open \\
         symbol BTC/USDT:USDT side buy qty 0.01 stop_price 58800

Fields (all plain text): ``intent_id`` (1-64 of letters, digits, ``_ - . :``; the
idempotency key), ``action`` (``open`` or ``close``), ``symbol`` (ccxt unified, e.g.
``BTC/USDT:USDT``); for ``open`` also ``side`` (``buy``/``sell``), ``qty`` and either
``stop_price`` or ``stop_distance`` (a fraction of the last price); optionally ``expires_ms``
(epoch ms after which it must not start), and ``take_profit`` or ``take_profit_distance``.

Each entry is read through the consumer group ``posguard`` and validated on arrival; a bad one
gets a rejection naming the field and touches nothing else. An entry is acknowledged only once
its actor owns it (the intent is written ahead in Redis); a crash before that leaves it pending,
and it is delivered again at the next start. An intent id already handled is not executed again
(it is answered ``duplicate``), nor one used by a different intent (`intent_verdict`); an entry
giving a field twice is refused. An open without ``expires_ms`` expires ``max_age`` seconds after
Redis received it (its entry id). Nothing one entry does can stop the intake: any error while
handling it that is not Redis being unreachable becomes a ``rejected`` reply ("internal
error"), an alert and a traceback in the log, and the entry is acknowledged. The stream is
trimmed every ``trim_interval`` seconds (`IntentStream.trim`: never a pending or unread entry).
Replies: ``BLPOP posguard:{acct}:reply:<intent_id>`` (README, "Intents").
"""

from __future__ import annotations

import logging
import re
from typing import get_args

import anyio
import msgspec
from anyio.abc import TaskStatus

from posguard.actors.intents import INTENT_ID_PATTERN, Intent, IntentRecord, OpenIntent
from posguard.actors.lifecycle import Ticket
from posguard.actors.store.client import RedisClient, is_redis_failure
from posguard.actors.store.lease import Fenced
from posguard.actors.store.intent_stream import KEEP_ENTRIES, IntentGroupMissing, IntentStream, StreamEntry
from posguard.supervisor.engine import Engine

__all__ = [
    "BATCH",
    "DEFAULT_MAX_AGE",
    "TRIM_INTERVAL",
    "BadIntent",
    "IntentIntake",
    "arrival_ms",
    "parse_intent",
    "reply_id",
]

log = logging.getLogger("posguard.intake")

BATCH = 100
DEFAULT_MAX_AGE = 60.0
"""Seconds an open without ``expires_ms`` may wait after Redis received it (``intents.max_age``)."""
TRIM_INTERVAL = 60.0
"""Seconds between trims of the intents stream."""


class BadIntent(ValueError):
    """The stream entry is not a well-formed intent. The message names the field."""


_PATH = re.compile(r"^(?P<what>.*?)(?: - at `\$\.?(?P<field>[^`]*)`)?$")


def _field_rules() -> dict[str, str]:
    """What each field must be, in the words of its type's description (actors/intents.py),
    and ``action``, the union's tag: a refusal quotes it."""
    rules = {"action": " or ".join(str(t.__struct_config__.tag) for t in get_args(Intent))}
    for struct in get_args(Intent):
        for field in msgspec.inspect.type_info(struct).fields:
            kinds = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
            for kind in kinds:
                if isinstance(kind, msgspec.inspect.Metadata) and kind.extra_json_schema:
                    rules[field.name] = kind.extra_json_schema["description"]
    return rules


_FIELD_RULES = _field_rules()
_ANY_INTENT_FIELDS = frozenset().union(*(struct.__struct_fields__ for struct in get_args(Intent)))
"""A field some intent kind has: on another kind it is "not allowed on" that one, not unknown."""


def parse_intent(
    fields: dict[str, str], *, repeated: tuple[str, ...] = (), arrived_ms: int = 0, max_age: float = 0.0
) -> Intent:
    """The entry's fields decoded into the intent union, or `BadIntent` naming the field.

    ``repeated``: fields the entry gave more than once (XADD allows it): which value was
    meant is not known, so the entry is refused. The expiry: the sender's ``expires_ms`` if
    given; otherwise, for an open, ``arrived_ms`` (when Redis received the entry) plus
    ``max_age`` seconds. A close gets no default expiry: closing late still only reduces risk.
    """
    if repeated:
        raise BadIntent(f"{repeated[0]}: given twice in one entry; which value is meant is not known,"
                        " so nothing was done: send each field once")
    try:
        intent: Intent = msgspec.convert(fields, Intent, strict=False)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        raise BadIntent(_refusal(str(exc), fields)) from None
    if isinstance(intent, OpenIntent) and not intent.expires_ms and arrived_ms and max_age:
        intent = msgspec.structs.replace(intent, expires_ms=arrived_ms + int(max_age * 1000))
    return intent


def _refusal(error: str, fields: dict[str, str]) -> str:
    """msgspec's error as a refusal that starts with the field's name and says what it must be."""
    match = _PATH.match(error)
    what, field = (match.group("what"), match.group("field") or "") if match else (error, "")
    unknown = re.match(r"Object contains unknown field `([^`]+)`", what)
    if unknown:
        name = unknown.group(1)
        if name in _ANY_INTENT_FIELDS:
            action = fields.get("action", "")
            return f"{name}: not allowed on {'an' if action[:1] in 'aeiou' else 'a'} {action} intent"
        return f"{name}: unknown field"
    missing = re.match(r"Object missing required field `([^`]+)`", what)
    if missing:
        return f"{missing.group(1)}: required field missing"
    what = what[0].lower() + what[1:]
    if field in _FIELD_RULES:
        given = fields.get(field, "")
        shown = repr(given) if len(given) <= 80 else f"{given[:80]!r}..."
        return f"{field}: must be {_FIELD_RULES[field]}, got {shown} ({what})"
    return f"{field or 'intent'}: {what}"


def arrival_ms(entry_id: str) -> int:
    """When Redis received a stream entry: the ms part of its id (Redis' clock)."""
    ms, _, _ = entry_id.partition("-")
    return int(ms) if ms.isdigit() else 0


def reply_id(entry: StreamEntry) -> str:
    """The id a refused entry is answered under: its own when well-formed and given once,
    otherwise ``invalid-<entry id>``, which the client that sent it can find (XADD returned
    the id)."""
    intent_id = entry.fields.get("intent_id", "")
    if "intent_id" in entry.repeated or not INTENT_ID_PATTERN.fullmatch(intent_id):
        return f"invalid-{entry.entry_id}"
    return intent_id


class IntentIntake:
    """Reads the intents stream for one account and hands intents to the engine."""

    def __init__(
        self,
        client: RedisClient,
        engine: Engine,
        *,
        account: str,
        consumer: str = "posguard-1",
        block_ms: int = 1000,
        poll_interval: float = 0.05,
        reclaim_after: float = 120.0,
        max_age: float = DEFAULT_MAX_AGE,
        trim_interval: float = TRIM_INTERVAL,
        keep_entries: int = KEEP_ENTRIES,
        stream: IntentStream | None = None,
        take_over: bool = False,
    ) -> None:
        self.stream = stream or IntentStream(client, account)
        self.take_over = take_over
        """The lease holder, the only reader of the stream: at start, take over at once every
        entry other consumers left pending (they are processes that are gone) and delete them."""
        self.engine = engine
        self.consumer = consumer
        self.block_ms = block_ms
        """How long one XREADGROUP blocks; 0 polls every ``poll_interval`` instead."""
        self.poll_interval = poll_interval
        self.reclaim_after = reclaim_after
        """Seconds an entry may stay pending (read, not owned) before it is taken again."""
        self.max_age = max_age
        """Seconds an open without ``expires_ms`` may wait after it reached Redis."""
        self.trim_interval = trim_interval
        self.keep_entries = keep_entries
        """Handled entries the stream keeps (`IntentStream.trim`)."""
        self.received = 0
        self.acked = 0
        self.read_failures = 0
        """Reads of the stream that Redis did not answer or refused (retried each second)."""
        self.internal_errors = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read until the engine stops. A Redis that does not answer or refuses is waited out
        (the entry stays pending); a missing group is created again and reported to the engine
        as Redis having lost its data. No Redis error ends the intake."""
        await self.stream.ensure_group()
        async with anyio.create_task_group() as tg:
            task_status.started()
            if self.take_over:
                await self._take_over(tg)
            tg.start_soon(self._reclaim_stalled, tg)
            tg.start_soon(self._trim_periodically)
            start = "0"  # first what this consumer had read but not acknowledged before a crash
            while not self.engine.stopping:
                try:
                    got = await self._read(tg, start)
                except IntentGroupMissing as exc:
                    await self._recreate_group(str(exc))
                    continue
                except Exception as exc:  # noqa: BLE001 - sorted by the one rule just below
                    if not is_redis_failure(exc):
                        raise
                    self.read_failures += 1
                    log.warning("intents stream unreadable (%s: %s); retrying in 1 s", type(exc).__name__, exc)
                    await anyio.sleep(1.0)
                    continue
                start = ">"
                if not got and self.block_ms == 0:
                    await anyio.sleep(self.poll_interval)

    async def _recreate_group(self, why: str) -> None:
        """The group is gone: Redis lost its data (restarted empty, ``FLUSHALL``). Create it
        again, from the stream's start, and let the engine alert and audit."""
        try:
            created = await self.stream.ensure_group()
        except Exception as exc:  # noqa: BLE001
            if not is_redis_failure(exc):
                raise
            log.warning("could not create the intents group again (%s); retrying in 1 s", exc)
            await anyio.sleep(1.0)
            return
        if created:
            # Hold the intents (they wait in the stream) until the audit has adopted what the
            # venue holds, rather than refusing them as "paused".
            log.warning("intents group created again; reading resumes after the audit")
            await self.engine.redis_lost_data(why)

    async def _take_over(self, tg: anyio.abc.TaskGroup) -> None:
        """Adopt what dead consumers left pending (XAUTOCLAIM with no idle time: only the lease
        holder reads, so nobody else is working on them), then forget those consumers."""
        while entries := await self.stream.reclaim(self.consumer, min_idle_ms=0, count=BATCH):
            for entry in entries:
                log.warning("intent entry %s was pending with a consumer that is gone; taking it over",
                            entry.entry_id)
                await self._take(tg, entry)
            if len(entries) < BATCH:
                break
        gone = await self.stream.forget_consumers(self.consumer)
        if gone:
            log.warning("deleted consumers of processes that are gone: %s", ", ".join(gone))

    async def _reclaim_stalled(self, tg: anyio.abc.TaskGroup) -> None:
        """Take again entries left pending too long: read by a consumer that died (another
        process, or an actor that failed before owning its intent). Handling one twice is safe:
        an intent id already handled is not executed again."""
        while True:
            await anyio.sleep(self.reclaim_after / 2)
            try:
                entries = await self.stream.reclaim(
                    self.consumer, min_idle_ms=int(self.reclaim_after * 1000), count=BATCH
                )
                for entry in entries:
                    log.warning("intent entry %s was pending for over %.0f s; taking it again", entry.entry_id,
                                self.reclaim_after)
                    await self._take(tg, entry)
            except IntentGroupMissing:
                continue  # the read loop sees it too, and creates the group again
            except Exception as exc:  # noqa: BLE001
                if not is_redis_failure(exc):
                    raise
                log.warning("could not reclaim stalled intents (%s)", exc)

    async def _trim_periodically(self) -> None:
        """Keep the stream bounded. Housekeeping: no error here may stop the intake."""
        while True:
            await anyio.sleep(self.trim_interval)
            try:
                dropped = await self.stream.trim(keep=self.keep_entries)
            except Exception as exc:  # noqa: BLE001 - retried at the next interval
                log.warning("could not trim the intents stream (%s); trying again in %.0f s", exc, self.trim_interval)
                continue
            if dropped:
                log.info("trimmed %d handled entries from the intents stream", dropped)

    async def _read(self, tg: anyio.abc.TaskGroup, start: str) -> int:
        entries = await self.stream.read(
            self.consumer, start, count=BATCH, block_ms=self.block_ms if start == ">" and self.block_ms else None
        )
        for entry in entries:
            self.received += 1
            await self._take(tg, entry)
        return len(entries)

    async def _take(self, tg: anyio.abc.TaskGroup, entry: StreamEntry) -> None:
        """Handle one entry. Whatever goes wrong with it stays with it: Redis being unreachable
        leaves it pending (it is read again); any other error answers it ``rejected``."""
        try:
            await self._handle(tg, entry)
        except Exception as exc:
            if is_redis_failure(exc) or isinstance(exc, Fenced):
                raise  # fenced: another process owns the account; this one exits, the entry stays pending
            await self._internal_error(entry, exc)

    async def _handle(self, tg: anyio.abc.TaskGroup, entry: StreamEntry) -> None:
        """Decode the entry and hand it to the engine, which decides whether its id may run
        (`intent_verdict`: a duplicate or another intent's id is answered at once)."""
        try:
            intent = parse_intent(entry.fields, repeated=entry.repeated, arrived_ms=arrival_ms(entry.entry_id),
                                  max_age=self.max_age)
        except BadIntent as exc:
            await self._reject_malformed(entry, str(exc))
            return
        ticket = await self.engine.submit(intent)
        tg.start_soon(self._ack_when_owned, entry.entry_id, ticket)

    async def _internal_error(self, entry: StreamEntry, exc: Exception) -> None:
        """A bug met while handling one entry: answer it, tell a person, acknowledge it."""
        self.internal_errors += 1
        fields = entry.fields
        intent_id = reply_id(entry)
        symbol = fields.get("symbol", "")[:64]
        message = (f"intent {intent_id} (entry {entry.entry_id}): internal error {type(exc).__name__};"
                   " refused, nothing sent; the traceback is in posguard's log")
        log.error("%s", message, exc_info=exc)
        await self.engine.ctx.alert(symbol, message)
        try:
            await self.engine.store.save_intent(IntentRecord(
                intent_id=intent_id, action=fields.get("action", "")[:16], symbol=symbol, status="rejected",
                reason=f"internal error ({type(exc).__name__}): nothing was sent; tell the operator (see posguard's log)",
            ))
        except Exception as failed:
            if is_redis_failure(failed):
                raise  # left pending: answered when Redis is back
            log.exception("could not record the refusal of %s", intent_id)
        await self._ack(entry.entry_id)

    async def _ack_when_owned(self, entry_id: str, ticket: Ticket) -> None:
        await ticket.owned.wait()
        if ticket.done.is_set() and ticket.result is not None and ticket.result.status == "failed":
            return  # interrupted before it was written ahead: leave it pending for redelivery
        await self._ack(entry_id)

    async def _reject_malformed(self, entry: StreamEntry, reason: str) -> None:
        fields, intent_id = entry.fields, reply_id(entry)
        log.warning("intent %s refused: %s", intent_id, reason)
        await self.engine.store.save_intent(IntentRecord(
            intent_id=intent_id, action=fields.get("action", "")[:16], symbol=fields.get("symbol", "")[:64],
            status="rejected", reason=reason,
        ))
        await self._ack(entry.entry_id)

    async def _ack(self, entry_id: str) -> None:
        """Acknowledge the entry; if Redis cannot take it, it stays pending and is reclaimed
        later (harmless: an intent id already handled is not executed again)."""
        try:
            await self.stream.ack(entry_id)
        except Exception as exc:  # noqa: BLE001
            if not is_redis_failure(exc):
                raise
            log.warning("could not acknowledge intent entry %s (%s); it stays pending and is taken again "
                        "after %.0f s", entry_id, exc, self.reclaim_after)
            return
        self.acked += 1
