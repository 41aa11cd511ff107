"""`posguard demo --venue emulator` (or ``emulator-binance``): the demo through real ccxt.pro
and the Bybit (or Binance USD-M) emulator.

The emulators ship with posguard (`posguard.streams.emulators.bybit`, `...binance`, also
runnable alone as ``posguard emulator [--venue binance]``). It is started in this process on a
free 127.0.0.1 port; nothing leaves the machine.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.streams.emulators.binance.server import running_binance_emulator
from posguard.streams.emulators.bybit.client import emulator_venue
from posguard.streams.emulators.bybit.server import running_emulator
from posguard.streams.emulators.engine.serving import EmulatorBase
from posguard.streams.emulators.engine.truth import unprotected
from posguard.supervisor.config import Config

__all__ = ["EmulatorDemoVenue", "open_emulator_demo_venue"]


NAMES = {"bybit": "Bybit V5", "binance": "Binance USD-M futures"}


class EmulatorDemoVenue:
    faults = "position list lags 1 s, 1 % pushes dropped, 2 % REST errors (5xx and rate limits)"

    def __init__(self, emu: EmulatorBase, venue: CcxtVenue) -> None:
        self.description = f"the local {NAMES[emu.venue]} emulator through real ccxt.pro"
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
async def open_emulator_demo_venue(config: Config, venue_name: str = "bybit") -> AsyncIterator[EmulatorDemoVenue]:
    running = running_binance_emulator if venue_name == "binance" else running_emulator
    async with running(seed=config.demo.seed) as emu, emulator_venue(emu) as venue:
        emu.faults.position_list_lag = 1.0
        emu.faults.push_drop = {"position": 0.01, "order": 0.01, "execution": 0.01, "algo": 0.01}
        emu.faults.rest_error_rate = 0.01
        emu.faults.rate_limit_rate = 0.01
        view = EmulatorDemoVenue(emu, venue)
        async with anyio.create_task_group() as tg:
            tg.start_soon(view.watch)
            yield view
            tg.cancel_scope.cancel()
