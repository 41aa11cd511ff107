"""`posguard demo --venue emulator`: the demo through real ccxt.pro and a local emulator.

``--exchange bybit`` (the default) runs it against the Bybit V5 emulator, ``--exchange
binanceusdm`` against the Binance USD-M one (the names are ``[venue] kind``'s). Both ship with
posguard (`posguard.streams.emulators`, also runnable alone as ``posguard emulator``), share
one matching engine and get the same faults here. The emulator is started in this process on
a free 127.0.0.1 port; nothing leaves the machine.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.streams.emulators.binance.server import running_binance_emulator
from posguard.streams.emulators.bybit.client import EXCHANGES, emulator_venue
from posguard.streams.emulators.bybit.server import running_emulator
from posguard.streams.emulators.engine.faults import Faults
from posguard.streams.emulators.engine.serving import EmulatorBase
from posguard.streams.emulators.engine.truth import unprotected
from posguard.supervisor.config import Config

__all__ = ["DEMO_EXCHANGES", "EmulatorDemoVenue", "demo_faults", "open_emulator_demo_venue"]

_NAMES = {"bybit": "the local Bybit V5 emulator", "binance": "the local Binance USD-M emulator"}
_RUNNING = {"bybit": running_emulator, "binance": running_binance_emulator}
DEMO_EXCHANGES = {exchange: venue for venue, exchange in EXCHANGES.items()}
"""``--exchange`` (a ``[venue] kind``: ``bybit``, ``binanceusdm``) -> the emulator that speaks it."""


def demo_faults() -> Faults:
    """The demo's trouble, the same on both emulators (one place, so the two runs compare)."""
    return Faults(
        position_list_lag=1.0,
        push_drop={"position": 0.01, "order": 0.01, "execution": 0.01, "algo": 0.01},
        rest_error_rate=0.01,
        rate_limit_rate=0.01,
    )


class EmulatorDemoVenue:
    faults = "position list lags 1 s, 1 % pushes dropped, 2 % REST errors (5xx and rate limits)"

    def __init__(self, emu: EmulatorBase, venue: CcxtVenue) -> None:
        self.emu = emu
        self.venue = venue
        self.description = f"{_NAMES[emu.venue]} through real ccxt.pro ({EXCHANGES[emu.venue]})"
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
async def open_emulator_demo_venue(config: Config, exchange: str = "bybit") -> AsyncIterator[EmulatorDemoVenue]:
    """The emulator for ``exchange`` (a key of `DEMO_EXCHANGES`) with `demo_faults`, and a
    `CcxtVenue` on it."""
    running = _RUNNING[DEMO_EXCHANGES[exchange]]
    async with running(seed=config.demo.seed) as emu, emulator_venue(emu) as venue:
        emu.engine.faults = demo_faults()
        view = EmulatorDemoVenue(emu, venue)
        async with anyio.create_task_group() as tg:
            tg.start_soon(view.watch)
            yield view
            tg.cancel_scope.cancel()
