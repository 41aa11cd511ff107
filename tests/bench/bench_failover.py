"""Failover time: from the leader's loss to the first intent the new leader accepts (issue 15).

    python -m tests.bench.bench_failover [--rounds 10] [--ttl 10]

Real processes (`python -m posguard run`) against the Bybit V5 emulator and a private
redis-server; one leader and one standby at all times. Each round loses the leader, sends an
open intent at once and times its ``accepted`` reply, then starts a new standby for the next
round. Two ways to lose it, as rows:

* ``SIGSTOP`` (a frozen host, or a leader on another host that died): its pid stays alive, so
  the standby must wait out the lease (``lease.ttl``); the stopped process is SIGKILLed after.
  The target is ``ttl + 2 s`` or better.
* ``SIGKILL`` on the same host (the process gone and reaped): the standby sees the holder's pid
  is gone and takes the lease at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import coredis

from posguard.actors.store.keys import Keys
from posguard.streams.emulators.bybit import DEFAULT_API_KEY, DEFAULT_API_SECRET, running_emulator
from posguard.streams.emulators.bybit.client import run_config
from posguard.supervisor.redis_server import start_redis_server

ACCOUNT = "failover"
KEYS = Keys(ACCOUNT)
REPO = Path(__file__).resolve().parents[2]
SYMBOLS = ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"]
STOPS = {"BTC/USDT:USDT": 55_000.0, "ETH/USDT:USDT": 2_700.0, "SOL/USDT:USDT": 130.0}


async def start(config: Path, log: Path) -> Any:
    env = dict(os.environ, POSGUARD_API_KEY=DEFAULT_API_KEY, POSGUARD_API_SECRET=DEFAULT_API_SECRET)
    return await anyio.open_process([sys.executable, "-m", "posguard", "--config", str(config), "run"],
                                    cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"))


async def wait_standing_by(client: coredis.Redis[str], pid: int) -> None:
    with anyio.fail_after(120):
        while not any(json.loads(m)["pid"] == pid for m in await client.zrange(KEYS.standbys, 0, -1)):
            await anyio.sleep(0.05)


async def leader_pid(client: coredis.Redis[str]) -> int | None:
    value = await client.get(KEYS.lease)
    return json.loads(value)["pid"] if value else None


async def accepted_after(client: coredis.Redis[str], intent_id: str, symbol: str, qty: str) -> float:
    """Send an intent now; seconds until its first reply (``accepted``)."""
    sent = time.monotonic()
    await client.xadd(KEYS.intents, {"intent_id": intent_id, "action": "open", "symbol": symbol, "side": "buy",
                                     "qty": qty, "stop_price": str(STOPS[symbol])})
    with anyio.fail_after(300):
        while True:
            popped = await client.blpop([KEYS.reply(intent_id)], timeout=1)
            if popped:
                reply = json.loads(popped[1])
                if reply["status"] != "accepted":
                    raise RuntimeError(f"{intent_id}: {reply}")
                return time.monotonic() - sent


async def bench(rounds: int, ttl: float) -> None:
    server = start_redis_server()
    workdir = Path(tempfile.mkdtemp(prefix="posguard-failover-"))
    results: dict[str, list[float]] = {"SIGSTOP (waits the ttl)": [], "SIGKILL, same host": []}
    processes: list[Any] = []
    try:
        async with running_emulator() as emu, coredis.Redis.from_url(server.url, decode_responses=True) as client:
            config = workdir / "config.toml"
            config.write_text(run_config(emu, server.url, ACCOUNT, f"[lease]\nttl = {ttl}\n[audit]\ninterval = 3600\n"))
            log = workdir / "posguard.log"
            first = await start(config, log)
            processes.append(first)
            with anyio.fail_after(120):
                while await leader_pid(client) != first.pid:
                    await anyio.sleep(0.05)
            n = 0
            for how, row in results.items():
                for _ in range(rounds):
                    standby = await start(config, log)
                    processes.append(standby)
                    await wait_standing_by(client, standby.pid)
                    holder = await leader_pid(client)
                    leader = next(p for p in processes if p.pid == holder)
                    if how.startswith("SIGSTOP"):
                        leader.send_signal(signal.SIGSTOP)
                    else:
                        leader.kill()
                        await leader.wait()
                    n += 1
                    symbol = SYMBOLS[n % len(SYMBOLS)]
                    # A small open each round; they add up on the emulator, which is fine.
                    row.append(await accepted_after(client, f"fo-{n}", symbol, "0.01" if "BTC" in symbol else "0.1"))
                    if how.startswith("SIGSTOP"):
                        leader.kill()
                        await leader.wait()
                    print(f"{how:26} round {len(row):2}: {row[-1]:6.2f} s", flush=True)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
        server.halt()
    print()
    print(f"failover: leader lost -> first intent accepted by the new leader (lease.ttl {ttl:g} s, {rounds} rounds)")
    print(f"{'how the leader is lost':26} {'p50':>8} {'max':>8} {'target':>8}")
    for how, row in results.items():
        target = f"{ttl + 2:.1f}" if how.startswith("SIGSTOP") else "-"
        print(f"{how:26} {statistics.median(row):7.2f}s {max(row):7.2f}s {target:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ttl", type=float, default=10.0)
    args = parser.parse_args()
    anyio.run(bench, args.rounds, args.ttl)


if __name__ == "__main__":
    main()
