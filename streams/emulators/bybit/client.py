"""A `CcxtVenue` aimed at an emulator: real ccxt.pro, nothing but 127.0.0.1.

Used by the tests, by ``posguard demo --venue emulator`` and by anyone rehearsing against
``posguard emulator``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from posguard.streams.backoff import Backoff
from posguard.streams.ccxt_adapter.config import ApiCredentials, CcxtVenueConfig
from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.streams.emulators.bybit.server import DEFAULT_API_KEY, DEFAULT_API_SECRET, EmulatorServer

__all__ = ["FAST_STREAMS", "bybit_venue", "emulator_config", "run_config"]

FAST_STREAMS = {
    "heartbeat_interval": 0.2,
    "ready_timeout": 5.0,
    "gap_margin": 2.0,
    "reconnect": Backoff(initial=0.05, maximum=0.5),
}


def emulator_config(emu: EmulatorServer, **overrides: Any) -> CcxtVenueConfig:
    """A Bybit config aimed at ``emu``, refusing anything outside 127.0.0.1."""
    fields = {
        "exchange": "bybit",
        "account": "test",
        "environment": "live",
        "rest_url": emu.rest_url,
        "ws_url": emu.ws_url,
        "loopback_only": True,
        "request_timeout": 5.0,
        "throttle": False,
    } | FAST_STREAMS | overrides
    return CcxtVenueConfig(**fields)


@asynccontextmanager
async def bybit_venue(
    emu: EmulatorServer, *, credentials: ApiCredentials | None = None, **overrides: Any
) -> AsyncIterator[CcxtVenue]:
    venue = CcxtVenue(
        emulator_config(emu, **overrides), credentials or ApiCredentials(DEFAULT_API_KEY, DEFAULT_API_SECRET)
    )
    try:
        yield venue
    finally:
        await venue.aclose()




def run_config(emu: EmulatorServer, redis_url: str, account: str, extra: str = "") -> str:
    """A config.toml for ``posguard run`` against ``emu`` (API key ``emulator-key``, secret
    ``emulator-secret`` in the environment): the start of a rehearsal."""
    return f"""
[account]
name = "{account}"
[venue]
kind = "bybit"
testnet = false
rest_url = "{emu.rest_url}"
ws_url = "{emu.ws_url}"
[redis]
url = "{redis_url}"
{extra}
"""
