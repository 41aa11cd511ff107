"""Bybit's private WebSocket (``/v5/private``): auth, ping/pong, subscribe, pushes.

Speaks the documented message shapes: ``{"op": "auth", "args": [key, expires, signature]}``
answered with ``{"success": true, "op": "auth", ...}``; ``{"op": "ping"}`` with
``{"op": "pong", "args": [ms]}``; ``{"op": "subscribe", "args": ["order", ...]}`` with an
acknowledgement (``req_id`` echoed when sent); then ``{"topic": "order", "creationTime": ms,
"data": [...]}`` for every change. The signature must be made with the emulator's secret
(`signatures`), the API key must match
and ``expires`` must lie in the future, as on Bybit.

Faults: per-topic push delay and drop probability, forced disconnects, refused handshakes,
muted (half-dead) connections, lost subscription acknowledgements.
Each connection has its own writer task, so pushes go out in the order they were made.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from posguard.streams.emulators.bybit.payloads import execution_payload, order_payload, position_payload
from posguard.streams.emulators.engine.outbox import Outbox
from posguard.streams.emulators.engine.matching import EmuExecution, EmuOrder, EmuPosition, Engine, now_ms
from posguard.streams.emulators.bybit.signatures import signature_matches, ws_signature

__all__ = ["Connection", "PrivateHub", "TOPICS"]

TOPICS = ("position", "order", "execution")


class Connection:
    def __init__(self, ws: web.WebSocketResponse, engine: Engine) -> None:
        self.ws = ws
        self.engine = engine
        self.conn_id = f"emu-{uuid.uuid4().hex[:12]}"
        self.authenticated = False
        self.topics: set[str] = set()
        self.outbox = Outbox(ws)

    def send(self, message: dict[str, Any]) -> None:
        if not self.engine.faults.mute_ws:
            self.outbox.put(message)


class PrivateHub:
    def __init__(self, engine: Engine, api_key: str, rng: random.Random, api_secret: str) -> None:
        self.engine = engine
        self.api_key = api_key
        self.api_secret = api_secret
        self.rng = rng
        self.connections: set[Connection] = set()
        self.connects = 0
        engine.publishers.append(self.publish)

    def publish(self, topic: str, record: Any) -> None:
        payload = self._payload(record)
        topic = "position" if topic == "position_touched" else topic  # Bybit pushes it on every order change
        message = {"id": uuid.uuid4().hex, "topic": topic, "creationTime": now_ms(), "data": [payload]}
        faults = self.engine.faults
        for connection in list(self.connections):
            if topic not in connection.topics:
                continue
            if self.rng.random() < faults.push_drop.get(topic, 0.0):  # type: ignore[call-overload]
                continue
            delay = faults.push_delay.get(topic, 0.0)  # type: ignore[call-overload]
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, connection.send, message)
            else:
                connection.send(message)

    def _payload(self, record: Any) -> dict[str, Any]:
        """One engine record as Bybit pushes it (formatted now: the mark price of the moment)."""
        engine = self.engine
        if isinstance(record, EmuOrder):
            return order_payload(record, engine.instruments[record.symbol])
        if isinstance(record, EmuExecution):
            return execution_payload(record, engine.instruments[record.order.symbol], engine.prices)
        assert isinstance(record, EmuPosition)
        return position_payload(record, engine.instruments[record.symbol], record.mark_price)

    async def disconnect_all(self) -> int:
        """Drop every private connection (a close frame, as a venue restart sends)."""
        dropped = list(self.connections)
        for connection in dropped:
            connection.outbox.close()
            await connection.ws.close(code=1001, message=b"emulator: forced disconnect")
        return len(dropped)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.engine.faults.refuse_ws:
            raise web.HTTPServiceUnavailable(text="emulator: WebSocket handshakes refused")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        connection = Connection(ws, self.engine)
        self.connections.add(connection)
        self.connects += 1
        writer = asyncio.ensure_future(connection.outbox.run())
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    self._on_message(connection, json.loads(message.data))
                except (ValueError, TypeError, AttributeError):
                    connection.send({"success": False, "ret_msg": "Params Error", "conn_id": connection.conn_id})
        finally:
            self.connections.discard(connection)
            connection.outbox.close()
            await writer
        return ws

    def _on_message(self, connection: Connection, message: dict[str, Any]) -> None:
        op = message.get("op")
        reply: dict[str, Any] = {"conn_id": connection.conn_id}
        if "req_id" in message:
            reply["req_id"] = message["req_id"]
        if op == "ping":
            connection.send(reply | {"op": "pong", "args": [str(now_ms())]})
        elif op == "auth":
            ok, why = self._check_auth(message.get("args"))
            connection.authenticated = ok
            connection.send(reply | {"success": ok, "ret_msg": why, "op": "auth"})
        elif op == "subscribe":
            if not connection.authenticated:
                connection.send(reply | {"success": False, "ret_msg": "Request not authorized", "op": "subscribe"})
                return
            topics = [str(t) for t in message.get("args") or []]
            unknown = [t for t in topics if t not in TOPICS]
            if unknown:
                connection.send(reply | {"success": False, "ret_msg": f"error:handler not found,topic:{unknown[0]}", "op": "subscribe"})
                return
            connection.topics.update(topics)
            if not self.engine.faults.drop_subscribe_acks:
                connection.send(reply | {"success": True, "ret_msg": "", "op": "subscribe"})
        elif op == "unsubscribe":
            connection.topics.difference_update(str(t) for t in message.get("args") or [])
            connection.send(reply | {"success": True, "ret_msg": "", "op": "unsubscribe"})
        else:
            connection.send(reply | {"success": False, "ret_msg": f"error:handler not found,op:{op}", "op": op})

    def _check_auth(self, args: object) -> tuple[bool, str]:
        if not isinstance(args, list) or len(args) != 3:
            return False, "Params Error"
        key, expires, signature = args
        if key != self.api_key:
            return False, "Invalid apikey"
        try:
            if int(expires) <= time.time() * 1000:
                return False, "Params Error: expires is in the past"
        except (TypeError, ValueError):
            return False, "Params Error"
        if not isinstance(signature, str) or not signature_matches(signature, ws_signature(self.api_secret, str(expires))):
            return False, "Invalid sign"
        return True, ""
