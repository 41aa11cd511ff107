"""Soak: `posguard run` as a real process against the Bybit emulator, fed poison and good
intents alike, while Redis is flushed twice and restarted empty once.

    .venv/bin/python -m tests.bench.soak_poison [--intents 1000] [--poison 0.15] [--seed 1]

What a careful client does is what this script does: it sends intents through the Redis
stream (at most ``--window`` awaiting an answer), reads each intent's replies, and re-sends an
intent (same id) that got no final answer within ``--resend-after`` seconds, which is what
happens to intents whose stream entry or replies a data loss took with it.

It prints, from the emulator's ground truth and Redis: whether the process ever exited, how
many intents got a final reply (and how), how many poison intents reached the venue (must be
0), duplicate entries, positions without a stop at the end, and whether Redis agrees with the
venue after the last disruption. Exit code 1 if any of those is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import anyio
import coredis

from posguard.actors import ids
from posguard.actors.records import PositionRecord, State
from posguard.actors.store.keys import Keys
from posguard.streams.emulators.bybit import EmulatorServer, running_emulator
from posguard.streams.emulators.bybit.client import run_config
from posguard.streams.emulators.engine.truth import unprotected
from posguard.supervisor.redis_server import PrivateRedisServer, restart_redis_server, start_redis_server
from tests.bench.common import machine, print_table

ACCOUNT = "soak"
REPO = Path(__file__).resolve().parents[2]
SYMBOLS = {  # unified -> (bybit id, qty, price)
    "BTC/USDT:USDT": ("BTCUSDT", 0.01, 60_000.0),
    "ETH/USDT:USDT": ("ETHUSDT", 0.1, 3_000.0),
    "SOL/USDT:USDT": ("SOLUSDT", 1.0, 150.0),
    "XRP/USDT:USDT": ("XRPUSDT", 100.0, 0.6),
    "LINK/USDT:USDT": ("LINKUSDT", 1.0, 25.0),
    "DOGE/USDT:USDT": ("DOGEUSDT", 1000.0, 0.15),
}
FINAL = {"done", "rejected", "failed", "duplicate", "stale"}


def poison_kinds(now_ms: int) -> dict[str, dict[str, str]]:
    """Every kind of bad intent the survival issue names, as a strategy might send it."""
    good = {"action": "open", "symbol": "BTC/USDT:USDT", "side": "buy", "qty": "0.01", "stop_price": "58800"}
    return {
        "qty inf": good | {"qty": "inf"},
        "qty nan": good | {"qty": "nan"},
        "qty 1e308": good | {"qty": "1e308"},
        "qty 2e305": good | {"qty": "2e305"},
        "qty negative": good | {"qty": "-1"},
        "qty zero": good | {"qty": "0"},
        "qty not a number": good | {"qty": "abc"},
        "qty below the minimum": good | {"qty": "0.0000001"},
        "qty above the maximum": good | {"qty": "100000"},
        "stop_price 1e308": good | {"stop_price": "1e308"},
        "stop_price inf": good | {"stop_price": "inf"},
        "stop_distance 5": {k: v for k, v in good.items() if k != "stop_price"} | {"stop_distance": "5"},
        "no stop": {k: v for k, v in good.items() if k != "stop_price"},
        "take_profit inf": good | {"take_profit": "inf"},
        "unknown field": good | {"leverage": "100"},
        "unknown action": good | {"action": "flip"},
        "no action": {k: v for k, v in good.items() if k != "action"},
        "unknown symbol": good | {"symbol": "NOPE/USDT:USDT"},
        "close with a qty": {"action": "close", "symbol": "BTC/USDT:USDT", "qty": "1"},
        "intent_id with a newline": good | {"intent_id": "nl1\n"},
        "intent_id too long": good | {"intent_id": "x" * 65},
        "stale (expires_ms in the past)": good | {"expires_ms": str(now_ms - 60_000)},
    }


def write_config(path: Path, emu: EmulatorServer, redis_url: str) -> Path:
    path.write_text(run_config(emu, redis_url, ACCOUNT, """
[verification]
push_deadline = 1.0
hard_deadline = 20.0
lookup_grace = 2.0
[audit]
interval = 5.0
"""))
    return path


async def disagreements(emu: EmulatorServer, client: coredis.Redis[str]) -> list[str]:
    truth = emu.truth()
    keys = Keys(ACCOUNT)
    problems = [f"{s}: open without a stop" for s in unprotected(truth)]
    for symbol, (bybit_symbol, _qty, _price) in SYMBOLS.items():
        fields = dict(await client.hgetall(keys.position(symbol)))
        record = PositionRecord.from_fields(fields) if fields else None
        live = record is not None and record.state.is_live
        position = truth["positions"].get(bybit_symbol)
        if position is not None and (record is None or not live or record.state is not State.PROTECTED
                                     or abs(record.filled_qty - position["size"]) > 1e-9):
            problems.append(f"{symbol}: venue holds {position['size']}, Redis says {record and record.state}")
        if position is None and live:
            problems.append(f"{symbol}: record {record.state if record else '?'} but the venue is flat")
    return problems


class Soak:
    def __init__(self, args: argparse.Namespace, emu: EmulatorServer, server: PrivateRedisServer,
                 client: coredis.Redis[str], config: Path, log: Path) -> None:
        self.args = args
        self.emu = emu
        self.server = server
        self.client = client
        self.config = config
        self.log = log
        self.rng = random.Random(args.seed)
        self.keys = Keys(ACCOUNT)
        self.sent: dict[str, dict[str, str]] = {}  # intent id -> fields
        self.kind: dict[str, str] = {}  # intent id -> poison kind or "good"
        self.sent_at: dict[str, float] = {}
        self.reply_keys: dict[str, list[str]] = {}  # where each intent's replies may land
        self.final: dict[str, dict] = {}  # intent id -> its final reply
        self.resends = 0
        self.exits: list[int] = []
        self.disruptions: list[tuple[float, str]] = []
        self.process: anyio.abc.Process | None = None
        self.longest_bare = 0.0

    async def start_posguard(self) -> None:
        env = dict(os.environ, POSGUARD_API_KEY="emulator-key", POSGUARD_API_SECRET="emulator-secret")
        self.process = await anyio.open_process(
            [sys.executable, "-m", "posguard", "--config", str(self.config), "run"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"),
        )

    async def watch_process(self) -> None:
        """The process must never exit by itself: note it and start it again if it does."""
        while True:
            assert self.process is not None
            code = await self.process.wait()
            self.exits.append(code)
            await self.start_posguard()

    async def watch_exposure(self) -> None:
        since: dict[str, float] = {}
        while True:
            now = anyio.current_time()
            bare = set(unprotected(self.emu.truth()))
            for symbol in list(since):
                if symbol not in bare:
                    self.longest_bare = max(self.longest_bare, now - since.pop(symbol))
            for symbol in bare:
                since.setdefault(symbol, now)
                self.longest_bare = max(self.longest_bare, now - since[symbol])
            await anyio.sleep(0.1)

    async def send(self, key: str) -> None:
        fields = self.sent[key]
        try:
            entry_id = await self.client.xadd(self.keys.intents, fields)
        except (coredis.exceptions.ConnectionError, OSError, coredis.exceptions.RedisError):
            entry_id = None  # Redis is restarting: the resend will carry it
        # A well-formed id is answered under itself; a malformed one under ``invalid-<entry id>``.
        keys = self.reply_keys.setdefault(key, [self.keys.reply(fields.get("intent_id", ""))])
        if entry_id:
            keys.append(self.keys.reply(f"invalid-{entry_id}"))
        self.sent_at[key] = anyio.current_time()

    async def collect(self) -> None:
        """Poll the reply lists of every intent still awaiting its final answer."""
        pending = [(i, key) for i in self.sent if i not in self.final for key in self.reply_keys[i]]
        if not pending:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                results = [pipe.lrange(key, 0, -1) for _i, key in pending]
            for (intent_id, _key), result in zip(pending, results, strict=True):
                for raw in await result:
                    reply = json.loads(raw)
                    if reply.get("status") in FINAL:
                        self.final[intent_id] = reply
        except (coredis.exceptions.ConnectionError, OSError, coredis.exceptions.RedisError):
            return

    async def resend_stalled(self) -> None:
        now = anyio.current_time()
        for intent_id in [i for i in self.sent if i not in self.final]:
            if now - self.sent_at[intent_id] > self.args.resend_after:
                self.resends += 1
                await self.send(intent_id)

    async def disrupt(self, what: str) -> None:
        self.disruptions.append((anyio.current_time(), what))
        if what == "FLUSHALL":
            await self.client.flushall()
        else:  # an empty restart: no persistence, everything gone
            self.server.halt()
            await anyio.sleep(1.0)
            self.server = restart_redis_server(self.server, appendonly=False)

    def next_intent(self, number: int, good_state: dict[str, bool]) -> tuple[str, dict[str, str], str]:
        intent_id = f"s{number}"
        if self.rng.random() < self.args.poison:
            kinds = poison_kinds(int(time.time() * 1000))
            if self.rng.random() < 0.1 and self.final:
                first = self.rng.choice(sorted(self.final))
                return f"{first}", dict(self.sent[first]), "duplicate of a handled id"
            name = sorted(kinds)[number % len(kinds)]
            fields = {"intent_id": intent_id} | kinds[name]
            return fields["intent_id"] if "\n" not in fields["intent_id"] and len(fields["intent_id"]) <= 64 \
                else f"{intent_id}-badid", fields, name
        symbol = self.rng.choice(sorted(SYMBOLS))
        _bybit, qty, price = SYMBOLS[symbol]
        if not good_state.get(symbol):
            side = self.rng.choice(["buy", "sell"])
            stop = price * (0.97 if side == "buy" else 1.03)
            fields = {"intent_id": intent_id, "action": "open", "symbol": symbol, "side": side,
                      "qty": str(qty), "stop_price": f"{stop:.6g}"}
        else:
            fields = {"intent_id": intent_id, "action": "close", "symbol": symbol}
        good_state[symbol] = not good_state.get(symbol)
        return intent_id, fields, "good"

    async def run(self) -> None:
        n = self.args.intents
        disruptions = {int(n * 0.3): "FLUSHALL", int(n * 0.55): "FLUSHALL", int(n * 0.8): "empty restart"}
        good_state: dict[str, bool] = {}
        number = 0
        while number < n or any(i not in self.final for i in self.sent):
            await self.collect()
            await self.resend_stalled()
            waiting = sum(1 for i in self.sent if i not in self.final)
            while number < n and waiting < self.args.window:
                if number in disruptions:
                    await self.disrupt(disruptions.pop(number))
                key, fields, kind = self.next_intent(number, good_state)
                number += 1
                if kind == "duplicate of a handled id":
                    # Sent again as it was; its answer is already known, a second one is extra.
                    await self.client.xadd(self.keys.intents, fields)
                    self.kind.setdefault(f"dup-{number}", kind)
                    continue
                self.sent[key] = fields
                self.kind[key] = kind
                await self.send(key)
                waiting += 1
            if anyio.current_time() - self.started > self.args.max_seconds:
                break
            await anyio.sleep(0.05)

    started = 0.0


async def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="posguard-soak-"))
    log = workdir / "posguard.log"
    server = start_redis_server()
    try:
        async with running_emulator(seed=args.seed) as emu, coredis.Redis.from_url(
            server.url, decode_responses=True
        ) as client:
            emu.faults.position_list_lag = 0.5
            emu.faults.push_drop = {"position": 0.01, "order": 0.01, "execution": 0.01}
            config = write_config(workdir / "config.toml", emu, server.url)
            soak = Soak(args, emu, server, client, config, log)
            soak.started = anyio.current_time()
            await soak.start_posguard()
            async with anyio.create_task_group() as tg:
                tg.start_soon(soak.watch_process)
                tg.start_soon(soak.watch_exposure)
                await soak.run()
                problems = ["not checked"]
                with anyio.move_on_after(90):
                    while problems:
                        await anyio.sleep(1.0)
                        try:
                            problems = await disagreements(emu, client)
                        except (coredis.exceptions.RedisError, OSError) as exc:
                            problems = [str(exc)]
                tg.cancel_scope.cancel()
            assert soak.process is not None
            soak.process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(30):
                await soak.process.wait()
            stop_code = soak.process.returncode
            truth = emu.truth()
    finally:
        soak_server = locals().get("soak")
        (soak_server.server if soak_server else server).stop()

    statuses = Counter(r.get("status") for r in soak.final.values())
    by_kind: dict[str, Counter[str]] = {"good": Counter(), "poison": Counter()}
    for intent_id, reply in soak.final.items():
        by_kind["good" if soak.kind[intent_id] == "good" else "poison"][reply.get("status", "?")] += 1
    poison_done = by_kind["poison"]["done"]
    poison = [i for i, k in soak.kind.items() if k != "good" and i in soak.sent]
    entry_orders = Counter(o["order_link_id"] for o in truth["orders"] if o["order_link_id"].endswith("-e"))
    poison_orders = [i for i in poison if ids.entry_id(ACCOUNT, i) in entry_orders]
    unanswered = [i for i in soak.sent if i not in soak.final]
    rows = [
        ["intents sent (distinct ids)", str(len(soak.sent))],
        ["  of which poison", f"{len(poison)} ({len(poison) / max(1, len(soak.sent)):.0%}),"
                             f" {len({soak.kind[i] for i in poison})} kinds"],
        ["  re-sent duplicates of handled ids", str(sum(1 for k in soak.kind.values() if k.startswith("duplicate")))],
        ["disruptions", ", ".join(w for _t, w in soak.disruptions)],
        ["final replies", ", ".join(f"{s} {n}" for s, n in sorted(statuses.items()))],
        ["  to good intents", ", ".join(f"{s} {n}" for s, n in sorted(by_kind["good"].items()))],
        ["  to poison intents", ", ".join(f"{s} {n}" for s, n in sorted(by_kind["poison"].items()))],
        ["intents re-sent after no answer", str(soak.resends)],
        ["intents with no final reply", str(len(unanswered))],
        ["poison intents that reached the venue", str(len(poison_orders))],
        ["entry orders / max per intent", f"{len(entry_orders)} / {max(entry_orders.values(), default=0)}"],
        ["times the process exited by itself", ", ".join(f"{n} x code {c}" for c, n in Counter(soak.exits).items())
         or "0"],
        ["exit code on SIGTERM", str(stop_code)],
        ["venue positions at the end", str(len(truth["positions"]))],
        ["positions without a stop at the end", str(len(unprotected(truth)))],
        ["longest time a position had no stop", f"{soak.longest_bare:.2f} s"],
        ["Redis vs venue after the last disruption", "agree" if not problems else f"{len(problems)} disagreements"],
        ["wall time", f"{time.monotonic() - started:.0f} s"],
    ]
    print_table(f"soak: {args.intents} intents, poison {args.poison:.0%}, seed {args.seed} ({machine()}); log {log}",
                ["", ""], rows)
    refusals = Counter(reply.get("reason", "")[:70] for i, reply in soak.final.items()
                       if soak.kind[i] == "good" and reply.get("status") != "done")
    for reason, n in refusals.most_common(5):
        print(f"  good intent refused x{n}: {reason}")
    for problem in problems:
        print("  disagreement:", problem)
    failed = bool(soak.exits or unanswered or poison_orders or poison_done or problems or stop_code != 0
                  or max(entry_orders.values(), default=0) > 1 or unprotected(truth))
    print("RESULT:", "FAILED" if failed else "ok")
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--intents", type=int, default=1000)
    parser.add_argument("--poison", type=float, default=0.15, help="fraction of intents that are poison")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--window", type=int, default=20, help="intents awaiting an answer at once")
    parser.add_argument("--resend-after", type=float, default=20.0, help="seconds without a final answer")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(anyio.run(main, parse_args(), backend="asyncio"))
