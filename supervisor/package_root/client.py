"""A typed client for strategies: send intents to a running ``posguard run`` and await its replies.

It speaks the documented stream protocol (README, "Intents"), nothing private: ``XADD`` to
``posguard:{acct}:intents``, then ``BLPOP`` on ``posguard:{acct}:reply:<intent_id>``, where the
first answer (``accepted``, ``rejected``, ``stale`` or ``duplicate``) and then the final one
(``done`` with its ``outcome``) arrive as JSON. Other languages keep using that protocol; this
module only saves a Python strategy from hand-building it::

    async with AsyncClient("redis://127.0.0.1:6379/0", "main") as client:
        ticket = await client.open("BTC/USDT:USDT", "buy", 0.01, stop_distance=0.02)
        reply = await ticket.result(timeout=120)   # Done(outcome="protected", ...) or a refusal

Nothing is decided here twice: an intent is checked before the ``XADD`` with the intake's own
decoder (`parse_intent`), so a malformed one is refused here with the very message the service
would answer (`BadIntent`), and nothing is sent; what depends on the venue (market rules, risk
limits, the price) is only known to the service and comes back as a `Rejected` reply. Key
names are `Keys`', the replies are `IntentRecord`'s JSON, and the Redis connection is the
project's (`open_redis`: TLS, ACL, cluster). `Client` is the same for code that is not async.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import msgspec

from posguard.actors.intents import AmendIntent, CloseIntent, Intent, OpenIntent, action_of, body_of
from posguard.actors.store.client import (
    RedisClient,
    RedisConnection,
    as_connection,
    is_redis_refusal,
    open_redis,
    ping,
    redact_url,
)
from posguard.actors.store.intent_stream import IntentStream
from posguard.supervisor.intake import BadIntent, parse_intent

__all__ = [
    "Accepted",
    "AnyReply",
    "AsyncClient",
    "BadIntent",
    "Client",
    "Done",
    "Duplicate",
    "Failed",
    "FinalReply",
    "NoAnswer",
    "Rejected",
    "Reply",
    "Stale",
    "SyncTicket",
    "Ticket",
    "fields_of",
    "is_reply_to",
    "new_intent_id",
]

DEFAULT_TIMEOUT = 120.0
"""Seconds a ticket waits for an answer unless told otherwise (an entry's verification alone
may take ``verification.hard_deadline``, 60 s by default)."""


# -- the replies, typed ----------------------------------------------------------------------


class Reply(msgspec.Struct, frozen=True, kw_only=True, tag_field="status"):
    """One reply on an intent's reply list: an `IntentRecord` as the service pushed it, its
    ``status`` the tag (a test holds these fields equal to `IntentRecord`'s). Fields a newer
    service adds are ignored, not refused."""

    intent_id: str
    action: str
    symbol: str
    reason: str = ""
    outcome: str = ""
    """`Done`, `Duplicate`: the position record's state when the intent finished (``protected``,
    ``closed``, ``closed_externally``, ``rejected``, ``unverified``)."""
    client_order_id: str = ""
    body: str = ""
    created_at: str = ""
    updated_at: str = ""

    @property
    def status(self) -> str:
        return str(type(self).__struct_config__.tag)


class Accepted(Reply, frozen=True, tag="accepted"):
    """Written ahead: its step is under way; the final answer follows."""


class Rejected(Reply, frozen=True, tag="rejected"):
    """Refused (``reason`` names the field or the limit); for an open it may also be the final
    answer of an entry the venue refused (``outcome`` ``rejected``). Nothing is left open."""


class Stale(Reply, frozen=True, tag="stale"):
    """Past its ``expires_ms`` before it started: nothing was sent."""


class Done(Reply, frozen=True, tag="done"):
    """Finished; ``outcome`` says how (an open ends ``protected``, a close ``closed``)."""


class Failed(Reply, frozen=True, tag="failed"):
    """Interrupted (the actor stopped or crashed); the position record shows how far it got."""


class Duplicate(Reply, frozen=True, tag="duplicate"):
    """The id was handled before and is not run again; ``outcome``, ``client_order_id`` and
    ``reason`` are the first answer's."""


AnyReply = Accepted | Rejected | Stale | Done | Failed | Duplicate
FinalReply = Rejected | Stale | Done | Failed | Duplicate
"""Every reply but `Accepted` ends the intent: nothing more comes for it."""


class NoAnswer(TimeoutError):
    """No (final) answer in time. The intent is not withdrawn: it stays in the stream and runs
    when a ``posguard run`` reads it, unless it expires first (``expires_ms``)."""

    def __init__(self, message: str, *, ticket: Ticket) -> None:
        super().__init__(message)
        self.ticket = ticket


def new_intent_id(prefix: str = "py") -> str:
    """A fresh intent id (``<prefix>-`` and 16 random hex digits): use one for every intent;
    client order ids derive from it, and Bybit refuses a client order id it has seen before."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def fields_of(intent: Intent) -> dict[str, str]:
    """An intent as stream fields, plain text: its ``action`` and every field that is not at
    its default (an absent field is what the intake reads as the default)."""
    fields = {"action": action_of(intent)}
    for field in msgspec.structs.fields(intent):
        value = getattr(intent, field.name)
        if value is not None and not (field.default is not msgspec.NODEFAULT and value == field.default):
            fields[field.name] = str(value)
    return fields


def is_reply_to(reply: dict[str, Any], body: str) -> bool:
    """Whether a reply on an id's list is one to the intent with this ``body``: one id's list can
    carry another intent's replies (the same id sent with a different body is refused there)."""
    return not body or not reply.get("body") or reply["body"] == body


# -- the async client ------------------------------------------------------------------------


class Ticket:
    """One intent sent: await its first answer (`answer`) and its final one (`result`).

    Replies are taken off the id's reply list (``BLPOP``) as the protocol says, so follow each
    intent with one ticket; replies that were on the list before it was sent, or that answer
    another intent under the same id, are skipped. A wait that times out loses nothing; one
    the caller cancels (its own cancel scope) may lose the reply Redis was handing over then:
    the intent record (``posguard:{acct}:intent:<id>``) keeps the answer."""

    def __init__(self, client: AsyncClient, intent_id: str, body: str, entry_id: str, earlier: int) -> None:
        self.intent_id = intent_id
        self.body = body
        """What the intent asks (`body_of`), as its replies carry it."""
        self.entry_id = entry_id
        """The stream entry's id (``XADD``'s answer)."""
        self.first: AnyReply | None = None
        self.final: FinalReply | None = None
        self._client = client
        self._earlier = earlier

    async def answer(self, timeout: float | None = None) -> AnyReply:
        """The first answer: `Accepted`, or a refusal that is also final (`Rejected`, `Stale`,
        `Duplicate`). Raises `NoAnswer` after ``timeout`` seconds (the client's default)."""
        await self._until(lambda: self.first is not None, timeout)
        assert self.first is not None
        return self.first

    async def result(self, timeout: float | None = None) -> FinalReply:
        """The final answer (`Done` with its ``outcome``, or a refusal). Raises `NoAnswer`
        after ``timeout`` seconds (the client's default), counted from this call."""
        await self._until(lambda: self.final is not None, timeout)
        assert self.final is not None
        return self.final

    async def _until(self, done: Callable[[], bool], timeout: float | None) -> None:
        """Take replies until ``done``. The wait is timed by Redis (the ``BLPOP``'s own timeout,
        on the wall clock), never by cutting a ``BLPOP`` short: one cut as Redis pops a reply
        would lose that reply."""
        wait = self._client.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while not done():
            await self._next(max(deadline - time.monotonic(), 0.001))  # one look even at timeout 0
            if not done() and time.monotonic() >= deadline:
                raise self._no_answer(wait)

    async def _next(self, block_s: float) -> None:
        """Take one reply off the list (waiting up to ``block_s``) and, if it answers this
        intent, record it."""
        raw = await self._client.stream.next_reply(self.intent_id, timeout_s=block_s)
        if raw is None:
            return
        if self._earlier:
            self._earlier -= 1
            return
        if not is_reply_to(raw, self.body):
            return
        reply: AnyReply = msgspec.convert(raw, AnyReply)  # type: ignore[arg-type]
        if self.first is None:
            self.first = reply
        if not isinstance(reply, Accepted):
            self.final = reply

    def _no_answer(self, waited: float) -> NoAnswer:
        keys, account = self._client.stream.keys, self._client.account
        if self.first is None:
            message = (f"no answer to intent {self.intent_id} within {waited:g} s: no posguard took it from"
                       f" {keys.intents}; start 'posguard run' for account {account!r} ('posguard status' shows"
                       f" whether one is alive). The intent stays in the stream and runs when one starts, unless it"
                       " expires first (expires_ms)")
        else:
            message = (f"intent {self.intent_id} was {self.first.status} but has no final answer within {waited:g} s;"
                       " it is still under way: wait longer (result(timeout=...)), or see its position record"
                       " ('posguard status', 'posguard events --stream journal')")
        return NoAnswer(message, ticket=self)


class AsyncClient:
    """Sends intents for one account of a running ``posguard run``; an async context manager.

    ``redis``: a URL (``redis://``, ``rediss://user:password@host:port/db``) or a
    `RedisConnection` (a password kept apart, TLS options, a cluster), as ``posguard`` itself
    connects. ``timeout``: the default wait of a ticket, in seconds; ``id_prefix``: what
    generated intent ids start with."""

    def __init__(self, redis: RedisConnection | str, account: str = "main", *, timeout: float = DEFAULT_TIMEOUT,
                 id_prefix: str = "py") -> None:
        self.connection = redis
        self.account = account
        self.timeout = timeout
        self.id_prefix = id_prefix
        self._stack: AsyncExitStack | None = None
        self._stream: IntentStream | None = None

    async def __aenter__(self) -> AsyncClient:
        """Connect, and check with one round trip that Redis answers (and takes the password),
        so a wrong URL fails here, with a note saying so, not at the first intent."""
        stack = AsyncExitStack()
        client = await stack.enter_async_context(open_redis(self.connection))
        try:
            await ping(client)
        except Exception as exc:
            await stack.aclose()
            where = redact_url(as_connection(self.connection).url)
            exc.add_note(f"posguard.client: Redis at {where} refused us: fix the user and password in the URL"
                         if is_redis_refusal(exc) else
                         f"posguard.client: Redis at {where} is unreachable: start it, or fix the URL")
            raise
        self._stack, self._stream = stack, IntentStream(client, self.account)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Disconnect. An error of the ``async with`` body leaves as it was raised: the Redis
        client is closed as after a clean exit, so its task group does not wrap the error in
        an exception group (``except NoAnswer`` around the block must catch a `NoAnswer`)."""
        stack, self._stack, self._stream = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def stream(self) -> IntentStream:
        if self._stream is None:
            raise RuntimeError("use the client inside 'async with AsyncClient(...) as client:'")
        return self._stream

    @property
    def redis(self) -> RedisClient:
        """The connected Redis client (for reading what ``redis-cli`` would, e.g. the health hash)."""
        return self.stream.client

    async def open(self, symbol: str, side: str, qty: float, *, stop_price: float | None = None,
                   stop_distance: float | None = None, take_profit: float | None = None,
                   take_profit_distance: float | None = None, intent_id: str | None = None,
                   expires_ms: int | None = None) -> Ticket:
        """Open a position at market with its stop-loss: ``stop_price``, or ``stop_distance``
        as a fraction of the last price (0.02 = 2 %); optionally a take-profit, ``take_profit``
        or ``take_profit_distance`` likewise. ``intent_id``: the idempotency key (generated if
        not given); ``expires_ms``: epoch ms after which it must not start."""
        given = {"stop_price": stop_price, "stop_distance": stop_distance, "take_profit": take_profit,
                 "take_profit_distance": take_profit_distance, "expires_ms": expires_ms}
        return await self.send(OpenIntent(
            intent_id=self._id(intent_id), symbol=symbol, side=side, qty=qty,  # type: ignore[arg-type]
            **{name: value for name, value in given.items() if value is not None},  # type: ignore[arg-type]
        ))

    async def close(self, symbol: str, *, qty: float | None = None, fraction: float | None = None,
                    intent_id: str | None = None, expires_ms: int | None = None) -> Ticket:
        """Close the symbol's whole position (reduce-only, at market), or part of it: ``qty``
        contracts or a ``fraction`` of the open size (one of them; rounded down to the venue's
        step). A part is answered ``done`` with outcome ``protected`` and what remains in the
        reason; a part that comes to the whole open size is a full close."""
        given = {"qty": qty, "fraction": fraction, "expires_ms": expires_ms}
        return await self.send(CloseIntent(intent_id=self._id(intent_id), symbol=symbol,
                                           **{name: value for name, value in given.items() if value is not None}))

    async def amend(self, symbol: str, *, stop_price: float | None = None, stop_distance: float | None = None,
                    breakeven: bool = False, take_profit: float | None = None,
                    take_profit_distance: float | None = None, remove_take_profit: bool = False,
                    intent_id: str | None = None, expires_ms: int | None = None) -> Ticket:
        """Change the protected position's stop (``stop_price``, ``stop_distance`` from the
        last price, or ``breakeven``) and/or its take-profit (``take_profit``,
        ``take_profit_distance``, or ``remove_take_profit``); one way for each. Answered
        ``Done(outcome="protected")`` once the venue holds the new values, ``Rejected`` with
        the old stop kept when they cannot be set."""
        given = {"stop_price": stop_price, "stop_distance": stop_distance, "take_profit": take_profit,
                 "take_profit_distance": take_profit_distance, "expires_ms": expires_ms}
        return await self.send(AmendIntent(
            intent_id=self._id(intent_id), symbol=symbol, breakeven=breakeven, remove_take_profit=remove_take_profit,
            **{name: value for name, value in given.items() if value is not None},  # type: ignore[arg-type]
        ))

    def _id(self, intent_id: str | None) -> str:
        """The id given (even an empty one, which the decoder refuses), or a fresh one."""
        return new_intent_id(self.id_prefix) if intent_id is None else intent_id

    async def send(self, intent: Intent) -> Ticket:
        """Send any intent (`OpenIntent`, `CloseIntent`, `AmendIntent`). It is decoded first as the service will
        decode it: a malformed one raises `BadIntent` with the service's message, and nothing
        is sent."""
        fields = fields_of(intent)
        decoded = parse_intent(fields)
        intent_id = decoded.intent_id
        # Replies already in the list answer an earlier use of this id, not this one.
        earlier = await self.stream.replies_waiting(intent_id)
        entry_id = await self.stream.add(fields)
        return Ticket(self, intent_id, body_of(decoded), entry_id, earlier)


# -- the same, for code that is not async ----------------------------------------------------


class SyncTicket:
    """`Ticket` for `Client`: the same methods, blocking."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, ticket: Ticket) -> None:
        self._portal = portal
        self.ticket = ticket
        self.intent_id = ticket.intent_id
        self.entry_id = ticket.entry_id

    def answer(self, timeout: float | None = None) -> AnyReply:
        return self._portal.call(self.ticket.answer, timeout)

    def result(self, timeout: float | None = None) -> FinalReply:
        return self._portal.call(self.ticket.result, timeout)


class Client:
    """`AsyncClient` for code that is not async: a context manager that runs the async client
    on an event loop of its own, in a thread (anyio's blocking portal). Its methods block and
    may be called from any thread but that loop's own::

        with Client("redis://127.0.0.1:6379/0", "main") as client:
            reply = client.open("BTC/USDT:USDT", "buy", 0.01, stop_price=58800).result()
    """

    def __init__(self, redis: RedisConnection | str, account: str = "main", *, timeout: float = DEFAULT_TIMEOUT,
                 id_prefix: str = "py", backend: str = "asyncio") -> None:
        self.client = AsyncClient(redis, account, timeout=timeout, id_prefix=id_prefix)
        self.backend = backend
        self._stack: ExitStack | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None

    def __enter__(self) -> Client:
        with ExitStack() as stack:
            self._portal = stack.enter_context(anyio.from_thread.start_blocking_portal(self.backend))
            stack.enter_context(self._portal.wrap_async_context_manager(self.client))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        stack, self._stack, self._portal = self._stack, None, None
        if stack is not None:
            stack.__exit__(*exc_info)

    @property
    def portal(self) -> anyio.from_thread.BlockingPortal:
        if self._portal is None:
            raise RuntimeError("use the client inside 'with Client(...) as client:'")
        return self._portal

    def open(self, symbol: str, side: str, qty: float, *, stop_price: float | None = None,
             stop_distance: float | None = None, intent_id: str | None = None,
             expires_ms: int | None = None) -> SyncTicket:
        """`AsyncClient.open`, blocking."""
        return self._ticket(partial(self.client.open, symbol, side, qty, stop_price=stop_price,
                                    stop_distance=stop_distance, intent_id=intent_id, expires_ms=expires_ms))

    def close(self, symbol: str, *, qty: float | None = None, fraction: float | None = None,
              intent_id: str | None = None, expires_ms: int | None = None) -> SyncTicket:
        """`AsyncClient.close`, blocking."""
        return self._ticket(partial(self.client.close, symbol, qty=qty, fraction=fraction, intent_id=intent_id,
                                    expires_ms=expires_ms))

    def amend(self, symbol: str, **changes: Any) -> SyncTicket:
        """`AsyncClient.amend`, blocking (the same keyword arguments)."""
        return self._ticket(partial(self.client.amend, symbol, **changes))

    def send(self, intent: Intent) -> SyncTicket:
        """`AsyncClient.send`, blocking."""
        return self._ticket(partial(self.client.send, intent))

    def _ticket(self, call: Callable[[], Awaitable[Ticket]]) -> SyncTicket:
        return SyncTicket(self.portal, self.portal.call(call))
