"""The write-ahead's cost under each Redis persistence setting.

    python -m tests.bench.bench_fsync [--writes 2000] [--dir PATH]

Why: every step of a position is written to Redis before it is taken (I5), and what "written"
survives depends on the server's persistence (README, "Redis persistence in production"):
without an append-only file a restart loses everything, with ``appendfsync everysec`` a power
cut loses up to about a second of acknowledged writes, with ``appendfsync always`` nothing
acknowledged. ``always`` makes Redis fsync its file before it answers, so each write-ahead
waits for the disk. This prints what that costs here.

What it does: three private redis-servers, started by the script in directories under
``--dir`` (default: the system's temporary directory; its file system is printed, since a
tmpfs would make fsync free and the figures meaningless): no AOF, ``appendonly yes`` with
``appendfsync everysec``, and with ``appendfsync always``. On each, ``--writes`` sequential
`RedisStore.save_record` calls (a position record and its journal entry in one MULTI/EXEC,
the unit of the write-ahead) and the same number of `RedisStore.save_intent`, interleaved in
rounds of 100 over the three servers so the machine's noise falls on all alike. Wall clock, on
anyio's asyncio backend.

Prints tables; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack

from posguard.actors.intents import IntentRecord
from posguard.actors.records import PositionRecord, State
from posguard.actors.store.client import open_redis
from posguard.actors.store.positions import RedisStore
from posguard.supervisor.redis_server import start_redis_server
from tests.bench.common import machine, ms, percentile, print_table
from tests.bench.fleet import run_async

SETTINGS: dict[str, tuple[bool, list[str]]] = {
    "no AOF (nothing survives a restart)": (False, []),
    "appendonly yes, appendfsync everysec": (True, ["--appendfsync", "everysec"]),
    "appendonly yes, appendfsync always": (True, ["--appendfsync", "always"]),
}
ROUND = 100


def file_system(path: str) -> str:
    answer = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True, check=False)
    return answer.stdout.strip() or "?"


def record(number: int) -> PositionRecord:
    return PositionRecord(symbol=f"S{number % 50}/USDT:USDT", intent_id=f"i-{number}", state=State.SUBMITTING,
                          side="buy", qty=1.0, stop_price=9.8, client_order_id=f"pg-{number}-e")


def fine(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


async def run(urls: dict[str, str], writes: int) -> tuple[dict[str, dict[str, list[float]]], dict[str, str]]:
    """The writes' wall times per server and kind, and each server's own persistence settings."""
    times: dict[str, dict[str, list[float]]] = {name: {"record": [], "intent": []} for name in urls}
    async with AsyncExitStack() as stack:
        stores = {name: RedisStore(await stack.enter_async_context(open_redis(url)), "fsync") for name, url in urls.items()}
        said = {}
        for name, store in stores.items():
            config = await store.client.config_get(["appendonly", "appendfsync"])
            said[name] = f"appendonly {config['appendonly']}, appendfsync {config['appendfsync']}"
        steps: dict[str, Callable[[RedisStore, int], Awaitable[None]]] = {
            "record": lambda store, n: store.save_record(record(n), "bench"),
            "intent": lambda store, n: store.save_intent(IntentRecord(intent_id=f"i-{n}", symbol="S/USDT:USDT",
                                                                       action="open", status="accepted")),
        }
        for start in range(0, writes, ROUND):
            for name, store in stores.items():
                for kind, step in steps.items():
                    for number in range(start, min(start + ROUND, writes)):
                        began = time.perf_counter()
                        await step(store, number)
                        times[name][kind].append(time.perf_counter() - began)
    return times, said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"redis-server data directories under {args.dir} (file system: {file_system(args.dir)})")
    tempfile.tempdir = args.dir
    started = time.perf_counter()
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(start_redis_server(appendonly=aof, extra_args=extra)).url
            for name, (aof, extra) in SETTINGS.items()
        }
        result: dict[str, dict[str, list[float]]] = {}
        said: dict[str, str] = {}

        async def measure() -> None:
            times, config = await run(urls, args.writes)
            result.update(times)
            said.update(config)

        run_async(measure)
    base = {kind: percentile(result[next(iter(SETTINGS))][kind], 50) for kind in ("record", "intent")}
    print_table(
        f"one write-ahead step, {args.writes} sequential writes per cell (interleaved in rounds of {ROUND}; wall clock)",
        ["persistence", "the server says (CONFIG GET)", "save_record p50", "p99", "max", "over no AOF (p50)",
         "save_intent p50", "p99"],
        [[name, said[name], fine(percentile(t["record"], 50)), fine(percentile(t["record"], 99)), ms(max(t["record"])),
          f"+{fine(percentile(t['record'], 50) - base['record'])}", fine(percentile(t["intent"], 50)),
          fine(percentile(t["intent"], 99))]
         for name, t in result.items()],
    )
    print(f"\nbenchmark wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
