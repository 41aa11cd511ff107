"""Assembling the emulator: REST, private WebSocket and control API on one aiohttp app.

`running_emulator` starts it on a free 127.0.0.1 port inside the caller's asyncio loop
and yields an `EmulatorServer`: its ``rest_url``/``ws_url`` are what `CcxtVenueConfig`
takes, its ``engine`` is the ground truth. `serve_forever` is the command-line entry.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from posguard.streams.emulators.engine.control import add_control_routes
from posguard.streams.emulators.engine.matching import Engine
from posguard.streams.emulators.engine.faults import Faults
from posguard.streams.emulators.engine.instruments import DEFAULT_INSTRUMENTS, Instrument
from posguard.streams.emulators.bybit.rest import BybitRest
from posguard.streams.emulators.bybit.ws import PrivateHub

__all__ = ["DEFAULT_API_KEY", "DEFAULT_API_SECRET", "EmulatorServer", "HOST", "running_emulator", "serve_forever"]

DEFAULT_API_KEY = "emulator-key"
DEFAULT_API_SECRET = "emulator-secret"
HOST = "127.0.0.1"


class EmulatorServer:
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
        rng = random.Random(seed)
        self.engine = Engine(instruments=instruments, balance=balance, faults=faults)
        self.rest = BybitRest(self.engine, api_key, rng, api_secret)
        self.hub = PrivateHub(self.engine, api_key, rng, api_secret)
        self.app = web.Application(middlewares=[self.rest.middleware])
        self.rest.routes(self.app)
        self.app.router.add_get("/v5/private", self.hub.handle)
        add_control_routes(self.app, self)
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    @property
    def faults(self) -> Faults:
        return self.engine.faults

    def truth(self) -> dict[str, Any]:
        return self.engine.truth() | {"requests": dict(self.rest.requests), "ws_connects": self.hub.connects}

    def requests(self, method_path: str) -> int:
        """How many requests ``"POST /v5/order/create"`` (say) the emulator has seen."""
        return self.rest.requests[method_path]

    async def start(self, port: int = 0) -> None:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else ()  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self.hub.disconnect_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@asynccontextmanager
async def running_emulator(**kwargs: Any) -> AsyncIterator[EmulatorServer]:
    server = EmulatorServer(**kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def serve_forever(port: int, *, api_key: str, seed: int, api_secret: str = DEFAULT_API_SECRET) -> None:
    server = EmulatorServer(api_key=api_key, api_secret=api_secret, seed=seed)
    await server.start(port)
    print(f"Bybit V5 emulator on {server.rest_url} (REST) and {server.ws_url}/v5/private (private WS);"
          f' point posguard at it with venue.rest_url = "{server.rest_url}", venue.ws_url = "{server.ws_url}"',
          flush=True)
    print(f"API key: {api_key!r}, secret: {api_secret!r} (requests must be signed with it, as on Bybit); control API: {server.rest_url}/_control/truth")
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
