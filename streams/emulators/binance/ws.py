"""Binance USD-M's user-data stream: listen keys, connections, events.

https://developers.binance.com/docs/derivatives/usds-margined-futures/user-data-streams/Connect
and .../Start-User-Data-Stream, .../Keepalive-User-Data-Stream, .../Event-User-Data-Stream-Expired:

* ``POST /fapi/v1/listenKey`` starts a stream; "If the account has an active listenKey, that
  listenKey will be returned and its validity will be extended for 60 minutes." ``PUT`` (no
  parameters: the account's key) extends it by 60 minutes (-1125 "This listenKey does not
  exist." once it lapsed); ``DELETE`` closes it.
* A key lapses 60 minutes (`Faults.listen_key_lifetime`) after its creation or last keepalive:
  its connections get ``{"e": "listenKeyExpired", "E": ms, "listenKey": key}`` and nothing
  after it, the socket staying open (as the issue measured).
* "A single connection is only valid for 24 hours; expect to be disconnected at the 24 hour
  mark" (`Faults.ws_connection_lifetime`): the server closes the socket.
* The server pings every 3 minutes and drops a connection that does not pong (aiohttp's
  heartbeat); it answers the client's pings.

Connections: ``/private/ws?listenKey=KEY`` (what ccxt 4.5.90 builds for linear from
``urls.api.ws``) and the classic ``/ws/KEY``. An unknown or lapsed key is refused with HTTP 400.

Events (payloads in `posguard.streams.emulators.binance.payloads`), and the `Faults` topic
each one's push delay/drop knob is read under: ``ORDER_TRADE_UPDATE`` ("order"),
``TRADE_LITE`` ("execution"), ``ACCOUNT_UPDATE`` ("position"), ``ALGO_UPDATE`` ("algo").
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from typing import Any

from aiohttp import WSMsgType, web

from posguard.streams.emulators.binance import payloads
from posguard.streams.emulators.engine.matching import EmuExecution, EmuOrder, EmuPosition, Engine, now_ms

__all__ = ["Connection", "ListenKeys", "UserDataHub"]

SERVER_PING_SECONDS = 180.0


class ListenKeys:
    """The account's listen key and when it lapses (monotonic seconds)."""

    def __init__(self, engine: Engine, on_expired: Any) -> None:
        self.engine = engine
        self.expires: dict[str, float] = {}
        self.created = 0
        self._on_expired = on_expired
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def active(self, key: str | None) -> bool:
        return bool(key) and self.expires.get(str(key), 0.0) > time.monotonic()

    def create(self) -> str:
        for key in self.expires:
            if self.active(key):
                self._arm(key)
                return key
        key = secrets.token_urlsafe(48)[:64]
        self.created += 1
        self._arm(key)
        return key

    def current(self) -> str | None:
        """The account's active key, if any (Binance keeps one per API key)."""
        return next((k for k in self.expires if self.active(k)), None)

    def extend(self, key: str | None) -> str | None:
        """PUT: the futures endpoint takes no parameter ("Parameters: None") and extends the
        account's key; a ``listenKey`` sent anyway must be that key."""
        current = self.current()
        if current is None or (key and key != current):
            return None
        self._arm(current)
        return current

    def close(self, key: str | None) -> None:
        key = key or self.current()
        if key and key in self.expires:
            del self.expires[key]
            timer = self._timers.pop(key, None)
            if timer is not None:
                timer.cancel()

    def expire(self, key: str) -> None:
        """Let ``key`` lapse now, as if its hour had run out without a keepalive."""
        if key in self.expires:
            self.expires[key] = time.monotonic()
            self._lapse(key)

    def _arm(self, key: str) -> None:
        lifetime = self.engine.faults.listen_key_lifetime
        self.expires[key] = time.monotonic() + lifetime
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(lifetime, self._lapse, key)

    def _lapse(self, key: str) -> None:
        self._timers.pop(key, None)
        if key in self.expires and not self.active(key):
            del self.expires[key]
            self._on_expired(key)


class Connection:
    def __init__(self, ws: web.WebSocketResponse, engine: Engine, key: str) -> None:
        self.ws = ws
        self.engine = engine
        self.key = key
        self.expired = False
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()

    def send(self, message: dict[str, Any]) -> None:
        if not self.engine.faults.mute_ws and not self.expired:
            self.outbox.put_nowait(json.dumps(message))

    async def write_loop(self) -> None:
        while (text := await self.outbox.get()) is not None:
            if self.ws.closed:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return


class UserDataHub:
    def __init__(self, engine: Engine, rng: random.Random) -> None:
        self.engine = engine
        self.rng = rng
        self.connections: set[Connection] = set()
        self.connects = 0
        self.keys = ListenKeys(engine, self._key_expired)
        engine.publishers.append(self.publish)

    # -- engine records -> Binance events --------------------------------------------------

    def publish(self, topic: str, record: Any) -> None:
        for fault_topic, event in self._events(topic, record):
            self._send(fault_topic, event)

    def _events(self, topic: str, record: Any) -> list[tuple[str, dict[str, Any]]]:
        engine, now = self.engine, now_ms()
        if isinstance(record, EmuOrder):
            instrument = engine.instruments[record.symbol]
            if record.conditional:
                if record.status in ("Filled", "PartiallyFilled"):
                    return []  # told with its fill (ORDER_TRADE_UPDATE TRADE, then ALGO_UPDATE FINISHED)
                if record.status == "Triggered" and not record.fill_order_id:
                    return []  # nothing to reduce at its trigger: told once, as EXPIRED
                if record.status == "Triggered":
                    # "met the triggering condition and forwarded to the matching engine", then
                    # "successfully placed into the matching engine": the actual MARKET order.
                    return [
                        ("algo", payloads.algo_update(record, instrument, now_ms=now, status="TRIGGERING")),
                        ("algo", payloads.algo_update(record, instrument, now_ms=now)),
                        ("order", payloads.order_trade_update(record, instrument, now_ms=now)),
                    ]
                return [("algo", payloads.algo_update(record, instrument, now_ms=now))]
            if record.status == "New":
                return [("order", payloads.order_trade_update(record, instrument, now_ms=now))]
            if record.status == "Cancelled":
                return [("order", payloads.order_trade_update(record, instrument, now_ms=now, exec_type="CANCELED"))]
            return []  # fills are told by their execution
        if isinstance(record, EmuExecution):
            order = record.order
            instrument = engine.instruments[order.symbol]
            events = [
                ("order", payloads.order_trade_update(order, instrument, now_ms=now, execution=record)),
                ("execution", payloads.trade_lite(record, instrument, now_ms=now)),
            ]
            if order.conditional and record.leaves_qty <= 0:
                events.append(("algo", payloads.algo_update(order, instrument, now_ms=now)))
            return events
        if isinstance(record, EmuPosition) and topic == "position":
            instrument = engine.instruments[record.symbol]
            return [("position", payloads.account_update(record, instrument, balance=engine.balance, now_ms=now))]
        return []  # position_touched: Binance pushes ACCOUNT_UPDATE only when something changed

    def _send(self, topic: str, event: dict[str, Any]) -> None:
        faults = self.engine.faults
        for connection in list(self.connections):
            if self.rng.random() < faults.push_drop.get(topic, 0.0):  # type: ignore[call-overload]
                continue
            delay = faults.push_delay.get(topic, 0.0)  # type: ignore[call-overload]
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, connection.send, event)
            else:
                connection.send(event)

    # -- keys and connections --------------------------------------------------------------

    def _key_expired(self, key: str) -> None:
        for connection in list(self.connections):
            if connection.key == key:
                connection.send({"e": "listenKeyExpired", "E": now_ms(), "listenKey": key})
                connection.expired = True  # silent from now on, the socket left open

    async def close_key(self, key: str | None) -> None:
        key = key or self.keys.current()
        self.keys.close(key)
        for connection in [c for c in self.connections if c.key == key]:
            await self._close(connection, b"listenKey closed")

    async def disconnect_all(self) -> int:
        """Drop every user-data connection (a close frame, as a venue restart sends)."""
        dropped = list(self.connections)
        for connection in dropped:
            await self._close(connection, b"emulator: forced disconnect")
        return len(dropped)

    async def _close(self, connection: Connection, why: bytes) -> None:
        connection.outbox.put_nowait(None)
        await connection.ws.close(code=1001, message=why)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info.get("key") or request.query.get("listenKey", "")
        if self.engine.faults.refuse_ws:
            raise web.HTTPServiceUnavailable(text="emulator: WebSocket handshakes refused")
        if not self.keys.active(key):
            raise web.HTTPBadRequest(text=json.dumps({"code": -1125, "msg": "This listenKey does not exist."}),
                                     content_type="application/json")
        ws = web.WebSocketResponse(autoping=True, heartbeat=SERVER_PING_SECONDS)
        await ws.prepare(request)
        connection = Connection(ws, self.engine, key)
        self.connections.add(connection)
        self.connects += 1
        writer = asyncio.ensure_future(connection.write_loop())
        loop = asyncio.get_running_loop()
        limit = loop.call_later(
            self.engine.faults.ws_connection_lifetime,
            lambda: asyncio.ensure_future(self._close(connection, b"24 hour connection limit")),
        )
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    continue  # the user-data stream takes no requests
        finally:
            limit.cancel()
            self.connections.discard(connection)
            connection.outbox.put_nowait(None)
            await writer
        return ws
