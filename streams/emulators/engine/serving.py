"""Running an emulator: what the Bybit and Binance ``EmulatorServer`` share.

A front builds its engine, REST (``rest.requests``: a counter of ``"METHOD /path"``), push
hub (``hub.connects``, ``hub.disconnect_all()``) and aiohttp app; `EmulatorBase` serves it on
127.0.0.1 and gives tests one interface to both venues: ``rest_url``, ``ws_url``, ``engine``,
``faults``, ``truth()``, ``requests()``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, Self

from aiohttp import web

from posguard.streams.emulators.engine.faults import Faults
from posguard.streams.emulators.engine.matching import Engine

__all__ = ["DEFAULT_API_KEY", "DEFAULT_API_SECRET", "EmulatorBase", "HOST", "serve"]

DEFAULT_API_KEY = "emulator-key"
DEFAULT_API_SECRET = "emulator-secret"
HOST = "127.0.0.1"


class _Rest(Protocol):
    requests: Counter[str]
    unknown: Counter[str]
    position_lists: Counter[str]


class _Hub(Protocol):
    connects: int

    async def disconnect_all(self) -> int: ...


class EmulatorBase:
    venue = ""
    engine: Engine
    rest: _Rest
    hub: _Hub
    app: web.Application

    def __init__(self) -> None:
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

    def unknown_requests(self) -> dict[str, int]:
        """Calls to paths this emulator does not serve (answered with the venue's not-found)."""
        return dict(self.rest.unknown)

    def position_lists(self) -> dict[str, int]:
        """Position-list requests by the venue symbol they asked for ("" for the whole account):
        what tells a fallback that asks for one symbol from one that lists the account."""
        return dict(self.rest.position_lists)

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

    @classmethod
    @asynccontextmanager
    async def running(cls, **kwargs: Any) -> AsyncIterator[Self]:
        """The emulator on a free 127.0.0.1 port for the block (``kwargs``: its constructor's)."""
        server = cls(**kwargs)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


async def serve(server: EmulatorBase, port: int, banner: str) -> None:
    """Run ``server`` on ``port`` until cancelled (Ctrl-C), after printing ``banner``."""
    await server.start(port)
    print(banner.format(rest_url=server.rest_url, ws_url=server.ws_url), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
