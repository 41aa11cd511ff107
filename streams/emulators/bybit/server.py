"""Assembling the emulator: REST, private WebSocket and control API on one aiohttp app.

`running_emulator` starts it on a free 127.0.0.1 port inside the caller's asyncio loop
and yields an `EmulatorServer`: its ``rest_url``/``ws_url`` are what `CcxtVenueConfig`
takes, its ``engine`` is the ground truth. `serve_forever` is the command-line entry.
"""

from __future__ import annotations

import random

from aiohttp import web

from posguard.streams.emulators.bybit.rest import BybitRest
from posguard.streams.emulators.bybit.ws import PrivateHub
from posguard.streams.emulators.engine.control import add_control_routes
from posguard.streams.emulators.engine.faults import Faults
from posguard.streams.emulators.engine.instruments import DEFAULT_INSTRUMENTS, Instrument
from posguard.streams.emulators.engine.matching import Engine
from posguard.streams.emulators.engine.serving import DEFAULT_API_KEY, DEFAULT_API_SECRET, HOST, EmulatorBase, serve

__all__ = ["DEFAULT_API_KEY", "DEFAULT_API_SECRET", "EmulatorServer", "HOST", "running_emulator", "serve_forever"]


class EmulatorServer(EmulatorBase):
    venue = "bybit"

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
        self.engine = Engine(instruments=instruments, balance=balance, faults=faults)
        self.rest = BybitRest(self.engine, api_key, rng, api_secret)
        self.hub = PrivateHub(self.engine, api_key, rng, api_secret)
        self.app = web.Application(middlewares=[self.rest.middleware])
        self.rest.routes(self.app)
        self.app.router.add_get("/v5/private", self.hub.handle)
        add_control_routes(self.app, self)


running_emulator = EmulatorServer.running


async def serve_forever(port: int, *, api_key: str, seed: int, api_secret: str = DEFAULT_API_SECRET) -> None:
    banner = ("Bybit V5 emulator on {rest_url} (REST) and {ws_url}/v5/private (private WS);"
              ' point posguard at it with venue.rest_url = "{rest_url}", venue.ws_url = "{ws_url}"\n'
              f"API key: {api_key!r}, secret: {api_secret!r} (requests must be signed with it, as on Bybit); "
              "control API: {rest_url}/_control/truth")
    await serve(EmulatorServer(api_key=api_key, api_secret=api_secret, seed=seed), port, banner)
