"""`posguard demo --venue emulator`: the demo through real ccxt.pro and the Bybit emulator.

The emulator ships with posguard (`posguard.streams.emulators.bybit`, also runnable alone as
``posguard emulator``). It is started in this process on a free 127.0.0.1 port; nothing leaves
the machine.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.streams.emulators.bybit.client import bybit_venue
from posguard.streams.emulators.bybit.server import EmulatorServer, running_emulator
from posguard.streams.emulators.engine.truth import unprotected
from posguard.supervisor.config import Config

__all__ = ["EmulatorDemoVenue", "open_emulator_demo_venue"]


class EmulatorDemoVenue:
    description = "the local Bybit V5 emulator through real ccxt.pro"
    faults = "position list lags 1 s, 1 % pushes dropped, 2 % REST errors (5xx and rate limits)"

    def __init__(self, emu: EmulatorServer, venue: CcxtVenue) -> None:
        self.emu = emu
        self.venue = venue
        self._since: dict[str, float] = {}
        self._windows: list[tuple[str, float]] = []
        self._epoch_offset = time.time() - anyio.current_time()

    def _bybit(self, symbol: str) -> str:
        return symbol.split("/")[0] + "USDT"

    def price(self, symbol: str) -> float:
        return float(self.emu.truth()["prices"][self._bybit(symbol)])

    def fill_time(self, client_order_id: str) -> float | None:
        times = [e["time_ms"] for e in self.emu.truth()["executions"] if e["order_link_id"] == client_order_id]
        return min(times) / 1000 - self._epoch_offset if times else None

    async def watch(self) -> None:
        """Sample the emulator's truth every 20 ms for stretches without a stop."""
        while True:
            now = anyio.current_time()
            bare = set(unprotected(self.emu.truth()))
            for symbol in list(self._since):
                if symbol not in bare:
                    self._windows.append((symbol, now - self._since.pop(symbol)))
            for symbol in bare:
                self._since.setdefault(symbol, now)
            await anyio.sleep(0.02)

    def unprotected_now(self) -> list[str]:
        return unprotected(self.emu.truth())

    def unprotected_windows(self) -> list[tuple[str, float]]:
        now = anyio.current_time()
        return self._windows + [(s, now - start) for s, start in self._since.items()]

    def rest_calls(self) -> int:
        return sum(n for path, n in self.emu.truth()["requests"].items() if not path.startswith("GET /_control"))


@asynccontextmanager
async def open_emulator_demo_venue(config: Config) -> AsyncIterator[EmulatorDemoVenue]:
    async with running_emulator(seed=config.demo.seed) as emu, bybit_venue(emu) as venue:
        emu.faults.position_list_lag = 1.0
        emu.faults.push_drop = {"position": 0.01, "order": 0.01, "execution": 0.01}
        emu.faults.rest_error_rate = 0.01
        emu.faults.rate_limit_rate = 0.01
        view = EmulatorDemoVenue(emu, venue)
        async with anyio.create_task_group() as tg:
            tg.start_soon(view.watch)
            yield view
            tg.cancel_scope.cancel()
