"""``posguard audit`` as an operator runs it (a subprocess, real ccxt) against the Bybit
emulator, on a Redis database that knows none of the venue's positions (issue 15)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import coredis
import pytest

from posguard.streams.emulators.bybit.client import DEFAULT_API_KEY, DEFAULT_API_SECRET, emulator_venue, run_config
from posguard.streams.emulators.bybit.server import running_emulator
from posguard.streams.emulators.engine.truth import is_protected
from posguard.streams.venue.protocol import OrderRequest
from tests.emulator_fixtures import loopback_network_only  # noqa: F401

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

REPO = Path(__file__).resolve().parents[1]
BTC = "BTC/USDT:USDT"
ACTING = ("POST /v5/order/create", "POST /v5/order/cancel", "POST /v5/position/trading-stop")


async def posguard(config: Path, *args: str) -> tuple[int, str]:
    env = dict(os.environ, POSGUARD_API_KEY=DEFAULT_API_KEY, POSGUARD_API_SECRET=DEFAULT_API_SECRET)
    done = await anyio.run_process([sys.executable, "-m", "posguard", "--config", str(config), *args],
                                   cwd=REPO, env=env, check=False)
    return done.returncode, done.stdout.decode() + done.stderr.decode()


async def test_cli_audit_refuses_then_adopts_with_the_flag(redis_url: str, tmp_path: Path) -> None:
    async with running_emulator() as emu:
        async with emulator_venue(emu) as venue:
            await venue.create_order(OrderRequest(symbol=BTC, side="buy", qty=0.01, client_order_id="by-hand-1"))
        config = tmp_path / "config.toml"
        config.write_text(run_config(emu, redis_url, "other"))
        before = {k: emu.requests(k) for k in ACTING}
        position = emu.truth()["positions"]["BTCUSDT"]
        assert position["size"] == 0.01 and not is_protected(emu.truth(), "BTCUSDT")

        code, text = await posguard(config, "audit")
        assert code == 6, text
        assert "refused" in text and f"{BTC}  long  0.01" in text and "--adopt" in text
        code, dry = await posguard(config, "audit", "--dry-run")
        assert code == 0, dry
        assert "would refuse without --adopt" in dry and "adopt it and protect it with a reduce-only stop" in dry
        # The venue's truth: nothing sent by either, the position as it was, still bare.
        assert {k: emu.requests(k) for k in ACTING} == before
        assert emu.truth()["positions"]["BTCUSDT"] == position and not is_protected(emu.truth(), "BTCUSDT")
        async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
            assert [k async for k in client.scan_iter(match="posguard:{other}:position:*")] == []

        code, text = await posguard(config, "audit", "--adopt")
        assert code == 0, text
        assert is_protected(emu.truth(), "BTCUSDT")
