"""The control API: set prices and fault knobs, force disconnects, read the ground truth.

Not part of any venue: everything lives under ``/_control/`` and needs no key, the same on the
Bybit and the Binance emulator. In-process tests can use the ``EmulatorServer`` directly; this
is for a separately started emulator (``posguard emulator``) and for the demo.

* ``GET  /_control/truth``       positions, orders, executions, balance, prices, request counts
* ``POST /_control/price``       ``{"symbol": "BTCUSDT", "price": 59000}`` (stops trigger)
* ``POST /_control/faults``      a `posguard.streams.emulators.engine.faults.Faults` object (replaces the knobs)
* ``POST /_control/disconnect``  drop every private WebSocket; ``{"refuse": true}`` keeps
                                 refusing handshakes until faults are set again
* ``POST /_control/liquidate``   ``{"symbol": "BTCUSDT"}``
* ``POST /_control/balance``     ``{"balance": 1000}``
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec
from aiohttp import web

from posguard.streams.emulators.engine.faults import Faults
from posguard.streams.emulators.engine.matching import Engine, Reject

__all__ = ["Controllable", "Hub", "add_control_routes"]


class Hub(Protocol):
    async def disconnect_all(self) -> int: ...


class Controllable(Protocol):
    """What the control API needs of an emulator (both venues' ``EmulatorServer``)."""

    engine: Engine
    hub: Hub

    def truth(self) -> dict[str, Any]: ...


def add_control_routes(app: web.Application, server: Controllable) -> None:
    async def truth(request: web.Request) -> web.Response:
        return web.json_response(server.truth())

    async def price(request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            server.engine.set_price(str(body["symbol"]), float(body["price"]))
        except (KeyError, TypeError, ValueError, Reject) as exc:
            raise web.HTTPBadRequest(text=f"expected {{'symbol': 'BTCUSDT', 'price': 59000}}: {exc}") from None
        return web.json_response({"ok": True})

    async def faults(request: web.Request) -> web.Response:
        try:
            server.engine.faults = msgspec.json.decode(await request.read(), type=Faults)
        except msgspec.ValidationError as exc:
            raise web.HTTPBadRequest(text=f"invalid faults: {exc}") from None
        return web.json_response(msgspec.to_builtins(server.engine.faults))

    async def disconnect(request: web.Request) -> web.Response:
        body = await _json(request)
        if body.get("refuse"):
            server.engine.faults.refuse_ws = True
        dropped = await server.hub.disconnect_all()
        return web.json_response({"dropped": dropped})

    async def liquidate(request: web.Request) -> web.Response:
        body = await _json(request)
        server.engine.liquidate(str(body.get("symbol", "")))
        return web.json_response({"ok": True})

    async def balance(request: web.Request) -> web.Response:
        body = await _json(request)
        server.engine.balance = float(body["balance"])
        return web.json_response({"ok": True})

    app.router.add_get("/_control/truth", truth)
    app.router.add_post("/_control/price", price)
    app.router.add_post("/_control/faults", faults)
    app.router.add_post("/_control/disconnect", disconnect)
    app.router.add_post("/_control/liquidate", liquidate)
    app.router.add_post("/_control/balance", balance)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body
