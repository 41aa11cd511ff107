"""A `CcxtVenue` aimed at an emulator (Bybit or Binance): real ccxt.pro, nothing but 127.0.0.1.

Used by the tests, by ``posguard demo --venue emulator`` and by anyone rehearsing against
``posguard emulator``. The exchange is the emulator's: ``bybit`` for the Bybit one,
``binanceusdm`` for the Binance one (`exchange_for`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from posguard.streams.backoff import Backoff
from posguard.streams.ccxt_adapter.config import ApiCredentials, CcxtVenueConfig
from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.streams.emulators.engine.serving import DEFAULT_API_KEY, DEFAULT_API_SECRET, EmulatorBase

__all__ = ["EXCHANGES", "FAST_STREAMS", "binance_venue", "bybit_venue", "emulator_config", "emulator_venue",
           "exchange_for", "run_config"]

EXCHANGES = {"bybit": "bybit", "binance": "binanceusdm"}
"""An emulator's venue -> the ccxt exchange (and ``[venue] kind``) that speaks to it."""

FAST_STREAMS = {
    "heartbeat_interval": 0.2,
    "ready_timeout": 5.0,
    "gap_margin": 2.0,
    "reconnect": Backoff(initial=0.05, maximum=0.5),
}


def exchange_for(emu: EmulatorBase) -> str:
    return EXCHANGES[emu.venue]


def emulator_config(emu: EmulatorBase, **overrides: Any) -> CcxtVenueConfig:
    """A config for ``emu``'s exchange aimed at it, refusing anything outside 127.0.0.1."""
    fields = {
        "exchange": exchange_for(emu),
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
async def emulator_venue(
    emu: EmulatorBase, *, credentials: ApiCredentials | None = None, **overrides: Any
) -> AsyncIterator[CcxtVenue]:
    """A `CcxtVenue` on ``emu``'s exchange (Bybit or Binance), closed on exit."""
    venue = CcxtVenue(
        emulator_config(emu, **overrides), credentials or ApiCredentials(DEFAULT_API_KEY, DEFAULT_API_SECRET)
    )
    try:
        yield venue
    finally:
        await venue.aclose()


bybit_venue = emulator_venue
"""The Bybit emulator's `CcxtVenue` (the same helper: the exchange follows the emulator)."""
binance_venue = emulator_venue
"""The Binance emulator's `CcxtVenue` on ``binanceusdm``."""


def run_config(emu: EmulatorBase, redis_url: str, account: str, extra: str = "") -> str:
    """A config.toml for ``posguard run`` against ``emu`` (API key ``emulator-key``, secret
    ``emulator-secret`` in the environment): the start of a rehearsal. ``[venue] kind`` follows
    the emulator: ``bybit`` or ``binanceusdm``."""
    return f"""
[account]
name = "{account}"
[venue]
kind = "{exchange_for(emu)}"
testnet = false
rest_url = "{emu.rest_url}"
ws_url = "{emu.ws_url}"
[redis]
url = "{redis_url}"
{extra}
"""
