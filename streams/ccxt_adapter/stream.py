"""The private streams of one ccxt.pro exchange, as posguard events.

One loop per topic (positions, orders, executions). Each loop keeps its ccxt watch call
pending (that is what opens, authenticates and subscribes the connection, and what raises
when it drops), waits until the venue confirms the topic is live, then:

* sends ``StreamStatus(connected=True)``;
* reports a `Heartbeat` every ``heartbeat_interval`` while the connection is provably alive
  (a pong or a message within two keepalive periods) and, on a venue whose stream rides on a
  listen key, while that key is known valid (created or extended within its life, less a
  margin: `ListenKey.valid`), so an idle account is not taken for a dead stream, and a
  silently dead one (an open socket on a lapsed key, ccxt #6760) stops heartbeating;
* reads a REST snapshot of its topic (positions; open orders and, where the venue lists them
  by time, every order changed since shortly before the stream was last known alive; or
  executions since then) into the sink, to fill whatever was missed while it was down. The
  evidence board de-duplicates and keeps the newest state;
* replaces the connection once it is ``max_connection_age`` old (Binance closes one at 24 h;
  posguard at 23 h by default), reported down and up like any reconnect.

When the connection drops it sends ``StreamStatus(connected=False)`` and reconnects with
exponential backoff and jitter. Where the connection rides on a key that lapses (Binance's
listen key, `ListenKey`), one more task extends it on schedule and, when the venue says it
is gone, drops the connection the same way, so the next connect makes a new key. The events
themselves come from `posguard.streams.ccxt_adapter.hooks`, as each frame arrives: decoded
straight from the wire where `posguard.streams.ccxt_adapter.frames` reads it, else as ccxt
parses it.

Events pass through an unbounded in-memory queue so that ccxt's message handlers (plain
callbacks) never wait; a forwarder task feeds the caller's sink in order, whatever is queued at
once (a socket read's worth of frames reaches the ingestor as one batch).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import ccxt.async_support as ccxt
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup

from posguard.streams.ccxt_adapter.config import CcxtVenueConfig
from posguard.streams.ccxt_adapter.dialects import LISTEN_KEY_GONE, ListenKey
from posguard.streams.ccxt_adapter.errors import redact
from posguard.streams.ccxt_adapter.mapping import CcxtDict, to_execution, to_order, to_position
from posguard.streams.venue.errors import VenueError
from posguard.streams.venue.events import TOPICS, Execution, Heartbeat, Order, Position, StreamStatus, Topic, VenueEvent

__all__ = ["PrivateStream", "Snapshot", "topic_of"]

log = logging.getLogger("posguard.ccxt")

Snapshot = Callable[[Topic, int], Awaitable[list[VenueEvent]]]
"""(topic, since_ms) -> the REST view of that topic, to fill a gap."""


def topic_of(event: VenueEvent) -> Topic | None:
    match event:
        case Position():
            return "positions"
        case Order():
            return "orders"
        case Execution():
            return "executions"
    return None


class PrivateStream:
    """Implements `posguard.streams.ccxt_adapter.hooks.PrivateListener`; `run` drives the topic loops."""

    def __init__(
        self,
        *,
        exchange: Any,
        watchers: dict[Topic, Callable[[], Awaitable[object]]],
        config: CcxtVenueConfig,
        clock: Callable[[], int],
        snapshot: Snapshot,
        observe: Callable[[VenueEvent], None],
        trades: Callable[[str], bool],
        secrets: tuple[str, ...],
        rng: random.Random,
        listen_key: ListenKey | None = None,
        max_connection_age: float | None = None,
    ) -> None:
        self._exchange = exchange
        self._watchers = watchers
        self._config = config
        self._clock = clock
        self._snapshot = snapshot
        self._observe = observe
        self._trades = trades
        self._secrets = secrets
        self._rng = rng
        self._outbox: ObjectSendStream[VenueEvent] | None = None
        self._live_client: dict[Topic, Any] = {}
        self._changed = anyio.Event()
        self._alive_ms: dict[Topic, int] = {}
        self._listen_key = listen_key
        self._listen_key_lost = anyio.Event()
        self._max_connection_age = max_connection_age

    # -- PrivateListener: called synchronously from ccxt's message handlers ----------------

    def on_ready(self, topic: Topic, client: Any) -> None:
        self._live_client[topic] = client
        self._changed.set()

    def on_order(self, order: CcxtDict) -> None:
        self._emit(to_order(order, now_ms=self._clock()))

    def on_trade(self, trade: CcxtDict, client_order_id: str) -> None:
        self._emit(to_execution(trade, client_order_id=client_order_id, now_ms=self._clock()))

    def on_position(self, position: CcxtDict) -> None:
        self._emit(to_position(position, now_ms=self._clock()))

    def on_listen_key_expired(self) -> None:
        self._listen_key_lost.set()

    def on_event(self, event: VenueEvent) -> None:
        """An event the frame decoder read straight from the wire (`posguard.streams.ccxt_adapter.frames`)."""
        self._emit(event)

    def now_ms(self) -> int:
        return self._clock()

    def _emit(self, event: VenueEvent) -> None:
        if self._outbox is None:
            return  # nobody is streaming: the next snapshot will carry it
        if isinstance(event, (Order, Position, Execution)) and not self._trades(event.symbol):
            return  # Bybit's position topic covers inverse and USDC markets too
        self._observe(event)
        topic = topic_of(event)
        if topic is not None:
            self._alive_ms[topic] = self._clock()
        self._send(event)

    def _send(self, event: VenueEvent) -> None:
        if self._outbox is None:
            return
        try:
            self._outbox.send_nowait(event)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The consumer is gone (the stream is being shut down, and a REST answer of the gap
            # sweep came back on the way out): the next stream's snapshot will carry it.
            self._outbox = None

    # -- running ---------------------------------------------------------------------------

    async def run(self, sink: ObjectSendStream[VenueEvent]) -> None:
        send, receive = anyio.create_memory_object_stream[VenueEvent](math.inf)
        started = self._clock()
        for topic in TOPICS:
            self._alive_ms.setdefault(topic, started)
        self._outbox = send
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward, receive, sink, tg)
                for topic in TOPICS:
                    tg.start_soon(self._run_topic, topic, name=f"ccxt stream {topic}")
                if self._listen_key is not None:
                    tg.start_soon(self._keep_listen_key, self._listen_key, name="ccxt listen key keepalive")
        finally:
            self._outbox = None
            send.close()

    async def _forward(
        self, receive: ObjectReceiveStream[VenueEvent], sink: ObjectSendStream[VenueEvent], tg: TaskGroup
    ) -> None:
        async with receive:
            async for event in receive:
                try:
                    await sink.send(event)
                    # Then what else is queued, without a trip through the event loop per event.
                    while True:
                        try:
                            event = receive.receive_nowait()
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                        try:
                            sink.send_nowait(event)
                        except anyio.WouldBlock:
                            await sink.send(event)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    log.warning("the event sink was closed; stopping the private streams")
                    tg.cancel_scope.cancel()
                    return

    async def _run_topic(self, topic: Topic) -> None:
        delays = self._config.reconnect.delays(self._rng)
        announced: bool | None = None
        stale = self._live_client.get(topic)
        while True:
            came_up, reason, stale = await self._session(topic, stale, reconnect=announced is not None)
            if came_up:
                delays = self._config.reconnect.delays(self._rng)
                announced = True
            if announced is not False:
                self._emit_status(topic, False, reason)
                announced = False
            delay = next(delays)
            log.warning("%s stream %s down (%s); reconnecting in %.1f s", self._exchange.id, topic, reason, delay)
            await anyio.sleep(delay)

    async def _session(self, topic: Topic, stale: Any, *, reconnect: bool) -> tuple[bool, str, Any]:
        """One connection's life for one topic, on any live client but ``stale`` (the one the
        last session ran on: read before the reconnect delay, another topic may already have
        opened the shared connection). Returns (whether it came up, why it ended, its client)."""
        failure: list[str] = []
        came_up = False
        async with anyio.create_task_group() as tg:

            async def pump() -> None:
                watch = self._watchers[topic]
                try:
                    while True:
                        await watch()
                except (ccxt.BaseError, OSError) as exc:
                    failure.append(self._redact(f"{type(exc).__name__}: {exc}"))
                    tg.cancel_scope.cancel()

            tg.start_soon(pump)
            client = None
            with anyio.move_on_after(self._config.ready_timeout):
                client = await self._wait_live(topic, stale)
            if client is None:
                failure.append(f"not confirmed live within {self._config.ready_timeout:.0f} s")
                self._drop_connections(f"{topic} stream was not confirmed live")
                tg.cancel_scope.cancel()
            else:
                came_up = True
                self._emit_status(topic, True, "reconnected" if reconnect else "connected")
                tg.start_soon(self._heartbeat, topic, client)
                if self._max_connection_age:
                    tg.start_soon(self._retire, client, self._max_connection_age)
                await self._fill_gap(topic)
                await anyio.sleep_forever()
        return came_up, (failure[0] if failure else "stopped"), (client if client is not None else stale)

    async def _wait_live(self, topic: Topic, stale: Any) -> Any:
        while True:
            client = self._live_client.get(topic)
            if client is not None and client is not stale and not client.closed():
                return client
            if self._changed.is_set():
                self._changed = anyio.Event()
            await self._changed.wait()

    def _drop_connections(self, why: str) -> None:
        """Fail every open private connection the way ccxt fails a broken one, so the next
        attempt starts on a fresh connection (a reused one would not be subscribed again)."""
        for client in list((self._exchange.clients or {}).values()):
            if not client.closed():
                client.on_error(ccxt.NetworkError(f"posguard: {why}; reconnecting"))

    async def _retire(self, client: Any, age: float) -> None:
        """Replace the connection once it has been open ``age`` seconds, before the venue
        closes it (Binance: at 24 h): every topic on it reports down, reconnects (reported
        ``reconnected``, which makes the supervisor audit) and reads its REST sweep."""
        opened_ms = client.connectionEstablished or self._exchange.milliseconds()
        await anyio.sleep(max(0.0, age - (self._exchange.milliseconds() - opened_ms) / 1000))
        if client.closed():
            return  # already gone; the session is ending on its own
        why = f"connection open {age:g} s (streams.max_connection_age)"
        log.info("%s: %s; replacing it before the venue closes it", self._exchange.id, why)
        self._drop_connections(why)

    async def _keep_listen_key(self, key: ListenKey) -> None:
        """Extend the key on schedule; when the venue says it is gone, end every topic's
        session: they report down at once (actors ask over REST) and reconnect on a new key,
        and each reconnect reads its REST snapshot."""
        while True:
            with anyio.move_on_after(self._config.listen_key_keepalive):
                await self._listen_key_lost.wait()
            if self._listen_key_lost.is_set():
                why = "the venue says the listen key expired"
            elif not await self._extend(key):
                why = f"the venue says the listen key is gone ({LISTEN_KEY_GONE})"
            else:
                continue
            self._listen_key_lost = anyio.Event()
            log.warning("%s: %s; reconnecting on a new one", self._exchange.id, why)
            key.forget()
            self._drop_connections(why)

    async def _extend(self, key: ListenKey) -> bool:
        delays = self._config.reconnect.delays(self._rng)
        while True:
            try:
                return await key.extend()
            except (ccxt.BaseError, OSError) as exc:
                delay = next(delays)
                log.warning("%s listen key keepalive failed (%s); retrying in %.1f s",
                            self._exchange.id, self._redact(f"{type(exc).__name__}: {exc}"), delay)
                await anyio.sleep(delay)

    async def _heartbeat(self, topic: Topic, client: Any) -> None:
        keepalive_ms = self._config.keepalive * 1000
        while True:
            await anyio.sleep(self._config.heartbeat_interval)
            freshest = max(client.lastPong or 0, client.last_message_at or 0, client.connectionEstablished or 0)
            if client.closed() or self._exchange.milliseconds() - freshest > 2 * keepalive_ms:
                continue  # no proof of life: let the board see silence; ccxt will drop it
            if self._listen_key is not None and not self._listen_key.valid(self._exchange.milliseconds()):
                # An open socket on a key not known alive is no proof: an unextended key makes
                # the stream silent for good (ccxt #6760). Silence lets actors ask over REST
                # while the keepalive keeps retrying.
                continue
            now = self._clock()
            self._alive_ms[topic] = now
            self._send(Heartbeat(topic=topic, ts_ms=now))

    async def _fill_gap(self, topic: Topic) -> None:
        since = self._alive_ms.get(topic, self._clock()) - int(self._config.gap_margin * 1000)
        delays = self._config.reconnect.delays(self._rng)
        while True:
            try:
                events = await self._snapshot(topic, since)
                break
            except VenueError as exc:
                delay = next(delays)
                log.warning("%s %s snapshot after connect failed (%s); retrying in %.1f s", self._exchange.id, topic, exc, delay)
                await anyio.sleep(delay)
        for event in events:
            self._emit(event)

    def _emit_status(self, topic: Topic, connected: bool, reason: str) -> None:
        self._send(StreamStatus(topic=topic, connected=connected, reason=reason, ts_ms=self._clock()))

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)
