"""Assembling the Binance USD-M emulator: REST, user-data WebSocket and the shared control API
on one aiohttp app, over the shared matching engine with Binance's rules (client ids unique
among open orders only, numeric ids, at most 200 open conditional orders across all symbols).

`running_binance_emulator` starts it on a free 127.0.0.1 port inside the caller's asyncio loop
and yields an `EmulatorServer` with the same interface as the Bybit one.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from posguard.streams.emulators.binance.orders import MAX_OPEN_ALGO_ORDERS
from posguard.streams.emulators.binance.rest import BinanceRest
from posguard.streams.emulators.binance.ws import UserDataHub
from posguard.streams.emulators.engine.control import add_control_routes
from posguard.streams.emulators.engine.faults import Faults
from posguard.streams.emulators.engine.instruments import DEFAULT_INSTRUMENTS, Instrument
from posguard.streams.emulators.engine.matching import Engine, numeric_ids
from posguard.streams.emulators.engine.serving import DEFAULT_API_KEY, DEFAULT_API_SECRET, EmulatorBase, serve

__all__ = ["EmulatorServer", "FIRST_ID", "running_binance_emulator", "serve_forever"]

FIRST_ID = 4_078_112_847
"""Binance's ids are integers; the emulator counts up from here (orders, algo orders, trades)."""


class EmulatorServer(EmulatorBase):
    venue = "binance"

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str = DEFAULT_API_SECRET,
        seed: int = 0,
        faults: Faults | None = None,
        instruments: tuple[Instrument, ...] = DEFAULT_INSTRUMENTS,
        balance: float = 100_000.0,
    ) -> None:
        super().__init__()
        rng = random.Random(seed)
        self.engine = Engine(
            instruments=instruments, balance=balance, faults=faults, id_rule="open_only",
            new_id=numeric_ids(FIRST_ID), max_open_conditional=MAX_OPEN_ALGO_ORDERS,
        )
        self.hub = UserDataHub(self.engine, rng)
        self.rest = BinanceRest(self.engine, api_key, rng, api_secret, self.hub)
        self.app = web.Application(middlewares=[self.rest.middleware])
        self.rest.routes(self.app)
        self.app.router.add_get("/private/ws", self.hub.handle)
        self.app.router.add_get("/ws/{key}", self.hub.handle)
        add_control_routes(self.app, self)


@asynccontextmanager
async def running_binance_emulator(**kwargs: Any) -> AsyncIterator[EmulatorServer]:
    server = EmulatorServer(**kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def serve_forever(port: int, *, api_key: str, seed: int, api_secret: str = DEFAULT_API_SECRET) -> None:
    banner = ("Binance USD-M futures emulator on {rest_url} (REST /fapi) and {ws_url}/private/ws?listenKey=... "
              '(user-data WS); point posguard at it with venue.kind = "binanceusdm", venue.rest_url = "{rest_url}", '
              'venue.ws_url = "{ws_url}"\n'
              f"API key: {api_key!r}, secret: {api_secret!r} (requests must be signed with it, as on Binance); "
              "control API: {rest_url}/_control/truth")
    await serve(EmulatorServer(api_key=api_key, api_secret=api_secret, seed=seed), port, banner)
