"""Kill `posguard run` with SIGKILL, again and again, and check that the venue and Redis agree.

A real process (`python -m posguard run`) trades through real ccxt against the Bybit
emulator (in this test's process, so it outlives every kill), with this test's own
redis-server. Intents arrive through the Redis intents stream. The process is SIGKILLed at
random moments; every fourth run it kills itself the moment an entry order has been sent and
before its record is updated (the `entry_sent` failpoint), the window write-ahead exists for.
It is restarted each time. At the end one more run is left to converge and then stopped with
SIGTERM (it must exit 0). From the emulator's ground truth:

* no position was open without a stop for longer than the bound (sampled every 100 ms);
* no intent produced more than one entry order; no position nobody asked for;
* the Redis records equal the venue: every venue position has a live record of its size and
  side, and no live record lacks its venue position.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import coredis
import pytest

from posguard.actors import ids
from posguard.actors.records import PositionRecord, State
from posguard.actors.store.keys import Keys
from posguard.streams.emulators.bybit import EmulatorServer, running_emulator
from posguard.streams.emulators.bybit.client import run_config
from posguard.streams.emulators.bybit.truth import is_protected
from tests.emulator_fixtures import loopback_network_only  # noqa: F401

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "crash"
SYMBOLS = {"BTC/USDT:USDT": ("BTCUSDT", 0.01, 60_000.0), "ETH/USDT:USDT": ("ETHUSDT", 0.1, 3_000.0),
           "SOL/USDT:USDT": ("SOLUSDT", 1.0, 150.0)}
KILLS = int(os.environ.get("POSGUARD_CRASH_KILLS", "24"))
LOG = Path(os.environ.get("POSGUARD_CRASH_LOG", "/dev/null"))
FAILPOINT_WAIT = 30.0  # seconds a failpoint run may take to reach its entry order
UNPROTECTED_BOUND = 10.0  # seconds: restart + start-up audit, with room for a loaded machine


def write_config(path: Path, emu: EmulatorServer, redis_url: str) -> Path:
    path.write_text(run_config(emu, redis_url, ACCOUNT, """
[streams]
stale_after = 5.0
[verification]
push_deadline = 1.0
hard_deadline = 20.0
lookup_grace = 2.0
[supervisor]
shutdown_grace = 10.0
[audit]
interval = 3.0
[intents]
# Intents here may wait through many kills: staleness is not what this test is about.
max_age = 3600.0
"""))
    return path


class ExposureMonitor:
    """Samples the emulator's truth: the longest time any position went without a stop."""

    def __init__(self, emu: EmulatorServer) -> None:
        self.emu = emu
        self.since: dict[str, float] = {}
        self.longest = 0.0

    async def run(self) -> None:
        while True:
            truth = self.emu.truth()
            now = anyio.current_time()
            for bybit_symbol, _qty, _price in SYMBOLS.values():
                if is_protected(truth, bybit_symbol):
                    self.since.pop(bybit_symbol, None)
                else:
                    start = self.since.setdefault(bybit_symbol, now)
                    self.longest = max(self.longest, now - start)
            await anyio.sleep(0.1)


async def start_posguard(config: Path, failpoints: str = "") -> anyio.abc.Process:
    env = dict(os.environ, POSGUARD_API_KEY="emulator-key", POSGUARD_API_SECRET="emulator-secret",
               POSGUARD_FAILPOINTS=failpoints)
    return await anyio.open_process(
        [sys.executable, "-m", "posguard", "--config", str(config), "run"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=LOG.open("ab"),
    )


async def load_records(client: coredis.Redis[str]) -> dict[str, PositionRecord]:
    keys = Keys(ACCOUNT)
    records = {}
    for symbol in await client.smembers(keys.positions):
        fields = await client.hgetall(keys.position(symbol))
        records[symbol] = PositionRecord.from_fields(dict(fields))
    return records


async def converged(emu: EmulatorServer, client: coredis.Redis[str]) -> list[str]:
    """What still disagrees between the venue and Redis (empty when they agree)."""
    truth = emu.truth()
    records = await load_records(client)
    problems = []
    for symbol, (bybit_symbol, _qty, _price) in SYMBOLS.items():
        position = truth["positions"].get(bybit_symbol)
        record = records.get(symbol)
        live = record is not None and record.state.is_live
        if position is not None:
            if not is_protected(truth, bybit_symbol):
                problems.append(f"{symbol}: open without a stop")
            if not live or record is None:
                problems.append(f"{symbol}: venue holds {position}, Redis says {record and record.state}")
            elif abs(record.filled_qty - position["size"]) > 1e-9 or record.state not in (State.PROTECTED,):
                problems.append(f"{symbol}: record {record.state} {record.filled_qty} vs venue {position['size']}")
        elif live:
            problems.append(f"{symbol}: record {record.state} but the venue is flat")
    return problems


async def test_sigkill_at_random_moments_then_venue_and_redis_agree(redis_url: str, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("POSGUARD_CRASH_SEED", "1")))
    async with running_emulator() as emu, coredis.Redis.from_url(redis_url, decode_responses=True) as client, \
            anyio.create_task_group() as tg:
        config = write_config(tmp_path / "config.toml", emu, redis_url)
        monitor = ExposureMonitor(emu)
        tg.start_soon(monitor.run)
        intents: dict[str, str] = {}  # intent id -> action
        next_id = 0
        failpoint_kills = 0
        for run in range(KILLS):
            failpoints = "entry_sent" if run % 4 == 3 else ""
            process = await start_posguard(config, failpoints)
            for n in range(rng.randint(1, 3)):
                symbol = rng.choice(list(SYMBOLS))
                _bybit, qty, price = SYMBOLS[symbol]
                intent_id = f"c{next_id}"
                next_id += 1
                if rng.random() < 0.6 or (failpoints and n == 0):  # a failpoint run needs an entry to send
                    side = rng.choice(["buy", "sell"])
                    stop = price * (0.97 if side == "buy" else 1.03)
                    fields = {"intent_id": intent_id, "action": "open", "symbol": symbol, "side": side,
                              "qty": str(qty), "stop_price": f"{stop:.2f}"}
                else:
                    fields = {"intent_id": intent_id, "action": "close", "symbol": symbol}
                intents[intent_id] = fields["action"]
                await client.xadd(Keys(ACCOUNT).intents, fields)
            if rng.random() < 0.15:  # the market gaps through someone's stop
                bybit_symbol, _qty, price = SYMBOLS[rng.choice(list(SYMBOLS))]
                emu.engine.set_price(bybit_symbol, price * rng.choice([0.95, 1.05]))
            # A failpoint run ends when its entry is sent (the process kills itself there); a
            # loaded machine may take seconds to get that far, so wait for the event, not a guess.
            with anyio.move_on_after(FAILPOINT_WAIT if failpoints else rng.uniform(0.3, 4.0)):
                await process.wait()
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
                await process.wait()
            elif process.returncode == -signal.SIGKILL and failpoints:
                failpoint_kills += 1
            for bybit_symbol, _qty, price in SYMBOLS.values():
                emu.engine.set_price(bybit_symbol, price)

        process = await start_posguard(config)
        problems: list[str] = ["not checked yet"]
        with anyio.move_on_after(90):
            while problems:
                await anyio.sleep(1.0)
                problems = await converged(emu, client)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            code = await process.wait()
        tg.cancel_scope.cancel()

        truth = emu.truth()
        entry_orders: dict[str, int] = {}
        for order in truth["orders"]:
            if ids.is_entry_id(order["order_link_id"]):
                entry_orders[order["order_link_id"]] = entry_orders.get(order["order_link_id"], 0) + 1
        asked = {ids.entry_id(ACCOUNT, i) for i, action in intents.items() if action == "open"}
        print(f"\ncrash test: {KILLS} SIGKILLs ({failpoint_kills} between 'order sent' and 'record updated'),"
              f" {len(intents)} intents, {len(entry_orders)} entry orders, {len(truth['executions'])} executions,"
              f" longest unprotected {monitor.longest:.2f} s, open at the end {sorted(truth['positions'])}")

        assert problems == [], f"venue and Redis disagree after recovery: {problems}"
        assert code == 0, "SIGTERM must stop posguard gracefully with exit code 0"
        assert failpoint_kills >= 1, "no kill landed between 'order sent' and 'record updated'"
        assert set(entry_orders) <= asked, f"entry orders nobody asked for: {set(entry_orders) - asked}"
        assert all(n == 1 for n in entry_orders.values()), f"an intent produced two entries: {entry_orders}"
        assert monitor.longest <= UNPROTECTED_BOUND, f"a position went {monitor.longest:.1f} s without a stop"
