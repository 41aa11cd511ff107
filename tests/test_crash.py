"""Kill `posguard run` with SIGKILL, again and again, and check that the venue and Redis agree.

A real process (`python -m posguard run`) trades through real ccxt against an emulator, Bybit's
or Binance USD-M's (the test runs on each; the emulator lives in this test's process, so it
outlives every kill), with this test's own
redis-server. Intents arrive through the Redis intents stream: opens, closes of positions the
run opened, and intent ids sent again with the same body. Every other run is SIGKILLed at a
random moment; the runs between kill themselves at a failpoint (`posguard.actors.failpoints`),
each in turn: right after an entry order is sent, right after a record is written in each
state, and right before each kind of intent reply is written, the windows write-ahead exists for. Each failpoint run sends the
intents (and sets the emulator faults) that lead to its failpoint. It is restarted each time.
At the end one more run is left to converge and then stopped with SIGTERM (it must exit 0).
From the emulator's ground truth and Redis:

* no position was open without a stop for longer than the bound (sampled every 100 ms);
* no intent produced more than one entry order, counted as order objects the venue holds
  under the entry's id (on Binance an id is unique among open orders only, so a resent entry
  is a second order, and a second position, under the same id); no position nobody asked for;
* the Redis records equal the venue: every venue position has a live record of its size and
  side, and no live record lacks its venue position;
* every intent sent is answered: its intent record has a final status;
* every failpoint tried was reached at least once (with the default number of kills, all).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import coredis
import pytest

from posguard.actors import ids
from posguard.actors.failpoints import ENTRY_SENT, before_reply, record_saved
from posguard.actors.intents import FINAL_STATUSES
from posguard.actors.records import PositionRecord, State
from posguard.actors.store.keys import Keys
from posguard.streams.venue.protocol import ID_REUSE_GRACE
from posguard.streams.emulators.bybit.client import run_config
from posguard.streams.emulators.engine.faults import Faults, ScriptedFailure
from posguard.streams.emulators.engine.serving import EmulatorBase
from posguard.streams.emulators.engine.truth import is_protected
from tests.emulator_fixtures import EMULATORS, EmulatorKind, loopback_network_only  # noqa: F401

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "crash"
SYMBOLS = {"BTC/USDT:USDT": ("BTCUSDT", 0.01, 60_000.0), "ETH/USDT:USDT": ("ETHUSDT", 0.1, 3_000.0),
           "SOL/USDT:USDT": ("SOLUSDT", 1.0, 150.0)}
LOG = Path(os.environ.get("POSGUARD_CRASH_LOG", "/dev/null"))
UNPROTECTED_BOUND = 10.0  # seconds: restart + start-up audit, with room for a loaded machine
CONVERGE_WAIT = 120.0
HARD_DEADLINE = 20.0  # verification.hard_deadline in the config below

REPLY_STATUSES = sorted(FINAL_STATUSES | {"accepted", "duplicate"})
HELD_STATES = frozenset({State.SUBMITTED, State.VERIFYING})
"""States the entry passes through in memory only, written with the record's next write
(`ActorContext.stage`, issue 16): no failpoint follows a write of theirs."""
TARGETS = ([ENTRY_SENT] + [record_saved(state) for state in State if state not in HELD_STATES]
           + [before_reply(status) for status in REPLY_STATUSES])
"""Every failpoint a run can kill at: the entry sent, one per written record state, one per reply status."""
DEFAULT_KILLS = 2 * len(TARGETS) + 2
"""Every failpoint tried twice, and as many random kills between them."""
KILL_TARGETS = [t for t in TARGETS if t in os.environ.get("POSGUARD_CRASH_TARGETS", "").split(",")] or TARGETS
"""``POSGUARD_CRASH_TARGETS`` (comma-separated failpoint names) narrows the failpoint runs to
those, to look into one window; unset, every failpoint in turn."""


def target_of(run: int) -> str:
    """Odd runs kill at the next failpoint of `KILL_TARGETS`, even runs at a random moment."""
    return KILL_TARGETS[(run // 2) % len(KILL_TARGETS)] if run % 2 else ""


@dataclass(frozen=True)
class CrashVenue:
    """What differs between the venues in this test: where orders go, how long a run may wait."""

    kind: EmulatorKind
    stop_path: str
    """Where a separate stop is POSTed: Bybit's one create path; Binance's algo service
    (STOP_MARKET ``closePosition=true`` through ``POST /fapi/v1/algoOrder``)."""
    audit_interval: float
    """``audit.interval``: as often as the venue's request weights allow. A Binance audit lists
    the account's open orders and open algo orders without a symbol (weight 40 each, and ccxt
    spends 50 ms of its throttle per unit: 4 s for one audit), so audits every 3 s would keep
    every other call waiting behind them for good."""
    answer_carries_fill: bool
    """The answer to an entry's send says what filled (Binance ``RESULT``), not only its ids."""
    failpoint_wait: float
    """Seconds a failpoint run may take to reach its failpoint. Bybit: `unverified` takes about
    25 s (the lagging lists outlast the hard deadline). Binance: a failpoint run can queue
    behind a record left in `submitting` by an earlier kill, whose entry the venue rule lets
    posguard resend only after `ID_REUSE_GRACE` (60 s) of silence, counted from the restart."""

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def entry_path(self) -> str:
        """Where market orders (entries and closes) are POSTed."""
        return self.kind.create_path

    @property
    def kills(self) -> int:
        """``POSGUARD_CRASH_KILLS_<VENUE>``, else ``POSGUARD_CRASH_KILLS``, else `DEFAULT_KILLS`."""
        raw = os.environ.get(f"POSGUARD_CRASH_KILLS_{self.name.upper()}") or os.environ.get("POSGUARD_CRASH_KILLS")
        return int(raw) if raw else DEFAULT_KILLS


VENUES = {
    "bybit": CrashVenue(EMULATORS["bybit"], stop_path="/v5/order/create", audit_interval=3.0,
                        answer_carries_fill=False, failpoint_wait=60.0),
    "binance": CrashVenue(EMULATORS["binance"], stop_path="/fapi/v1/algoOrder", audit_interval=15.0,
                          answer_carries_fill=True, failpoint_wait=60.0 + ID_REUSE_GRACE),
}
assert set(VENUES) == set(EMULATORS), "every emulator gets the crash test"


def write_config(path: Path, emu: EmulatorBase, redis_url: str, venue: CrashVenue) -> Path:
    path.write_text(run_config(emu, redis_url, ACCOUNT, f"""
[streams]
stale_after = 5.0
[verification]
push_deadline = 1.0
hard_deadline = {HARD_DEADLINE}
lookup_grace = 2.0
[protection]
# A stop or close order the emulator keeps refusing gives up sooner, so that the failpoint
# runs for an emergency close and a failing close reach their write within the wait.
stop_deadline = 3.0
stop_attempts = 2
close_alert_after = 3
[supervisor]
shutdown_grace = 10.0
[audit]
interval = {venue.audit_interval}
[intents]
# Intents here may wait through many kills: staleness is not what this test is about.
max_age = 3600.0
"""))
    return path


class ExposureMonitor:
    """Samples the emulator's truth: the longest time any position went without a stop."""

    def __init__(self, emu: EmulatorBase) -> None:
        self.emu = emu
        self.since: dict[str, tuple[float, str]] = {}  # venue symbol -> bare since (anyio time, UTC clock)
        self.longest = 0.0
        self.worst = ""
        """Which symbol went longest without a stop, and from when (UTC, to read the log by)."""

    async def run(self) -> None:
        while True:
            truth = self.emu.truth()
            now = anyio.current_time()
            for bybit_symbol, _qty, _price in SYMBOLS.values():
                if is_protected(truth, bybit_symbol):
                    self.since.pop(bybit_symbol, None)
                    continue
                start, clock = self.since.setdefault(bybit_symbol, (now, time.strftime("%H:%M:%S", time.gmtime())))
                if now - start > self.longest:
                    self.longest = now - start
                    self.worst = f"{bybit_symbol} from {clock} UTC"
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


async def converged(emu: EmulatorBase, client: coredis.Redis[str]) -> list[str]:
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


class Trader:
    """What one crash-test session sends and sets: intents on the stream, faults on the emulator."""

    def __init__(self, emu: EmulatorBase, venue: CrashVenue, client: coredis.Redis[str], rng: random.Random) -> None:
        self.emu = emu
        self.venue = venue
        self.client = client
        self.rng = rng
        self.keys = Keys(ACCOUNT)
        self.intents: dict[str, dict[str, str]] = {}  # intent id -> the fields first sent
        self.sent_in: dict[str, str] = {}  # intent id -> the run it was first sent in (its failpoint)
        self.run = ""
        self.reused: list[str] = []
        self._next_id = 0
        self._balance: float | None = None

    async def send(self, fields: dict[str, str]) -> str:
        self.intents.setdefault(fields["intent_id"], fields)
        self.sent_in.setdefault(fields["intent_id"], self.run)
        await self.client.xadd(self.keys.intents, fields)
        return fields["intent_id"]

    def _new_id(self) -> str:
        self._next_id += 1
        return f"c{self._next_id}"

    async def open(self, symbol: str, *, expires_ms: int = 0, take_profit: bool = False) -> str:
        _bybit, qty, price = SYMBOLS[symbol]
        side = self.rng.choice(["buy", "sell"])
        stop = price * (0.97 if side == "buy" else 1.03)
        fields = {"intent_id": self._new_id(), "action": "open", "symbol": symbol, "side": side,
                  "qty": str(qty), "stop_price": f"{stop:.2f}"}
        if expires_ms:
            fields["expires_ms"] = str(expires_ms)
        if take_profit:
            fields["take_profit"] = f"{price * (1.03 if side == 'buy' else 0.97):.2f}"
        return await self.send(fields)

    async def close(self, symbol: str) -> str:
        return await self.send({"intent_id": self._new_id(), "action": "close", "symbol": symbol})

    async def reuse(self, intent_id: str) -> None:
        """The same intent id sent again, with the same body."""
        self.reused.append(intent_id)
        await self.send(self.intents[intent_id])

    async def live_symbols(self) -> list[str]:
        return sorted(s for s, r in (await load_records(self.client)).items() if r.state.is_live and s in SYMBOLS)

    async def flat_symbol(self, *, settled: bool = False) -> str:
        """A symbol with no live record: closed first if every symbol has one (the actor
        serves the close, then whatever is sent next, in order). ``settled``: the close is
        waited for too, for a scenario whose faults would otherwise meet the close as well."""
        live = await self.live_symbols()
        free = [s for s in SYMBOLS if s not in live]
        if free:
            return self.rng.choice(free)
        symbol = self.rng.choice(live)
        close_id = await self.close(symbol)
        while settled and await self.answer(close_id) not in FINAL_STATUSES:
            await anyio.sleep(0.05)
        return symbol

    async def protected_symbol(self) -> str:
        """A symbol whose record is protected; opened (and waited for) if there is none."""
        records = await load_records(self.client)
        protected = [s for s, r in records.items() if r.state is State.PROTECTED and s in SYMBOLS]
        if protected:
            return self.rng.choice(protected)
        symbol = await self.flat_symbol()
        await self.open(symbol)
        while (record := (await load_records(self.client)).get(symbol)) is None or record.state is not State.PROTECTED:
            await anyio.sleep(0.05)
        return symbol

    async def answer(self, intent_id: str) -> str:
        return await self.client.hget(self.keys.intent(intent_id), "status") or ""

    async def unanswered(self) -> dict[str, str]:
        """Intents whose intent record has no final status, with what it says."""
        statuses = {i: await self.answer(i) for i in self.intents}
        return {
            i: f"{status or '(no intent record)'}: {self.intents[i]['action']} {self.intents[i]['symbol']}, sent in {self.sent_in[i]}"
            for i, status in statuses.items() if status not in FINAL_STATUSES
        }

    async def wait_entry_sent(self, symbol: str) -> None:
        """Until the emulator holds an entry order for ``symbol`` (a failpoint run's cue)."""
        bybit_symbol = SYMBOLS[symbol][0]
        count = self._entry_orders(bybit_symbol)
        while self._entry_orders(bybit_symbol) == count:
            await anyio.sleep(0.01)

    def _entry_orders(self, bybit_symbol: str) -> int:
        return sum(1 for o in self.emu.truth()["orders"] if o["symbol"] == bybit_symbol and ids.is_entry_id(o["order_link_id"]))

    def refuse(self, path: str) -> None:
        """Every request to ``path`` fails with HTTP 503 (placing nothing) until `restore_venue`."""
        self.emu.engine.faults.fail_next.append(ScriptedFailure(path=path, kind="http_503", count=10_000))

    def starve_balance(self) -> None:
        """Entries are refused for margin (Bybit 110007, Binance -2019 "Margin is insufficient.")
        until `restore_venue`."""
        self._balance = self.emu.engine.balance
        self.emu.engine.balance = 0.0

    def restore_venue(self) -> None:
        """After a run: the emulator well-behaved again, with its balance and prices."""
        self.emu.engine.faults = Faults()
        if self._balance is not None:
            self.emu.engine.balance, self._balance = self._balance, None
        for bybit_symbol, _qty, price in SYMBOLS.values():
            self.emu.engine.set_price(bybit_symbol, price)


# -- what each failpoint run sends, to reach its failpoint ----------------------------------

async def entry(trader: Trader) -> None:
    await trader.open(await trader.flat_symbol())


async def separate_stop(trader: Trader) -> None:
    """An entry protected by a stop of its own, written `open` ahead of it: always on Binance;
    on Bybit, an entry whose attached stop cannot be confirmed (position pushes lost, the list
    lagging past the confirmation deadline). Where the attached stop is confirmed, `open` is
    never written: the fill rides with the `protected` write."""
    symbol = await trader.flat_symbol()
    if trader.venue.kind.attached_stop:
        trader.emu.engine.faults = Faults(position_list_lag=15.0, push_drop={"position": 1.0})
    await trader.open(symbol)


async def close(trader: Trader) -> None:
    """A requested close of a protected position (one opened first if there is none). Any live
    symbol would not do: a close of an entry still in flight is refused (nothing closes), so a
    run that picked one never reached `closed` (seen on Binance, seed 2)."""
    await trader.close(await trader.protected_symbol())


async def gap_through_stop(trader: Trader) -> None:
    """A protected position, then the market gaps through its stop: the venue closes it."""
    symbol = await trader.protected_symbol()
    bybit_symbol, _qty, price = SYMBOLS[symbol]
    position = trader.emu.truth()["positions"][bybit_symbol]
    trader.emu.engine.set_price(bybit_symbol, price * (0.9 if position["side"] == "Buy" else 1.1))


async def gap_through_take_profit(trader: Trader) -> None:
    """An entry with a take-profit, protected and its take-profit armed (held by the position
    on Bybit, its own order placed after the stop on Binance), then the market gaps through it."""
    symbol = await trader.flat_symbol(settled=True)
    if not trader.venue.kind.attached_stop:
        # Binance: the flat position push (ACCOUNT_UPDATE) can overtake the take-profit's own
        # fill push; the proof then reads REST, whose trade list names no client order id, and
        # the record settles `closed_externally` (correctly closed, on proof; only the cause is
        # lost: a known limitation, README "Venues"). Held back here so that the run reaches
        # the `closed_by_take_profit` write it is about.
        trader.emu.engine.faults = Faults(push_delay={"position": 1.0})
    intent_id = await trader.open(symbol, take_profit=True)
    bybit_symbol, _qty, price = SYMBOLS[symbol]
    take_profit = float(trader.intents[intent_id]["take_profit"])

    def armed() -> bool:
        truth = trader.emu.truth()
        held = truth["positions"].get(bybit_symbol, {}).get("take_profit") == take_profit
        return held or any(o["trigger_price"] == take_profit and o["status"] == "Untriggered" for o in truth["orders"])

    while not armed():
        await anyio.sleep(0.05)
    side = trader.emu.truth()["positions"][bybit_symbol]["side"]
    trader.emu.engine.set_price(bybit_symbol, price * (1.1 if side == "Buy" else 0.9))


async def refused_for_margin(trader: Trader) -> None:
    trader.starve_balance()
    await trader.open(await trader.flat_symbol())


async def close_nothing(trader: Trader) -> None:
    """A close of a symbol with no live record: refused (``rejected``)."""
    symbol = await trader.flat_symbol()
    await trader.close(symbol)


async def stale_open(trader: Trader) -> None:
    await trader.open(trader.rng.choice(list(SYMBOLS)), expires_ms=int(time.time() * 1000) - 60_000)


async def reused_after_answer(trader: Trader) -> None:
    """An id sent again after it was answered: the reply is ``duplicate``."""
    answered = [i for i in trader.intents if await trader.answer(i) in FINAL_STATUSES]
    if not answered:
        answered = [await trader.close(trader.rng.choice(list(SYMBOLS)))]
        while await trader.answer(answered[0]) not in FINAL_STATUSES:
            await anyio.sleep(0.05)
    await trader.reuse(trader.rng.choice(answered))


async def no_evidence(trader: Trader) -> None:
    """Every push lost and every REST list lagging past the hard deadline: the entry is
    `unverified` (protected anyway). Binance answers a market entry with its result (ccxt asks
    for ``RESULT``), which is evidence of the fill: there the answers to the run's sends are
    lost too (every one: a scripted failure is spent by any request to its path, lookups
    included, and only writes lose their answer).

    On Binance, with no attached stop, the filled position used to be bare until the evidence
    showed up or the hard deadline made it `unverified` (20 s here, 60 s by default; longer
    after a restart; 22-47 s measured). posguard arms a whole-position stop (``closePosition``)
    as soon as the send's outcome is unknown, retried while Binance refuses it for want of a
    position (-4509): within `UNPROTECTED_BOUND` since issue 14."""
    symbol = await trader.flat_symbol(settled=True)  # before the faults: a close under them outlasts the run
    lag = HARD_DEADLINE + 5
    trader.emu.engine.faults = Faults(position_list_lag=lag, order_list_lag=lag, execution_list_lag=lag,
                                      push_drop={"position": 1.0, "order": 1.0, "execution": 1.0})
    if trader.venue.answer_carries_fill:
        trader.emu.engine.faults.fail_next.append(ScriptedFailure(path=trader.venue.entry_path, kind="lost_504",
                                                                  count=10_000))
    await trader.open(symbol)


async def no_stop_placeable(trader: Trader) -> None:
    """No stop can be placed: an emergency close.

    Bybit: the filled position's attached stop cannot be confirmed (position pushes lost, the
    list lagging) and no separate stop can be placed (every create refused); the attached stop
    stays on the venue, so the position is never bare. Binance has no attached stop: every
    algo order is refused, the position is bare from its fill until the emergency close (or a
    restart's stop), and the exposure bound must hold over that."""
    symbol = await trader.flat_symbol()
    if not trader.venue.kind.attached_stop:
        trader.refuse(trader.venue.stop_path)
        await trader.open(symbol)
        return
    trader.emu.engine.faults = Faults(position_list_lag=15.0, push_drop={"position": 1.0})
    await trader.open(symbol)
    await trader.wait_entry_sent(symbol)
    trader.refuse(trader.venue.stop_path)


async def close_keeps_failing(trader: Trader) -> None:
    """A requested close whose every order is refused."""
    symbol = await trader.protected_symbol()
    trader.refuse(trader.venue.entry_path)
    await trader.close(symbol)


Scenario = Callable[[Trader], Awaitable[None]]

SCENARIOS: dict[str, Scenario] = {
    ENTRY_SENT: entry,
    **{record_saved(s): entry for s in ("submitting", "protected")},
    record_saved("open"): separate_stop,
    **{record_saved(s): close for s in ("closing", "closed")},
    record_saved("closed_externally"): gap_through_stop,
    record_saved("closed_by_take_profit"): gap_through_take_profit,
    record_saved("rejected"): refused_for_margin,
    record_saved("unverified"): no_evidence,
    record_saved("emergency_closing"): no_stop_placeable,
    record_saved("close_failing"): close_keeps_failing,  # defect 3's state, once the lead's table has it
    before_reply("accepted"): entry,
    before_reply("done"): close,
    before_reply("rejected"): close_nothing,
    before_reply("stale"): stale_open,
    before_reply("duplicate"): reused_after_answer,
}


async def random_intents(trader: Trader) -> None:
    """A random run's intents: opens, closes of what the run opened, ids sent again."""
    rng = trader.rng
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.1 and trader.intents:
            await trader.reuse(rng.choice(list(trader.intents)))
        elif roll < 0.45 and (live := await trader.live_symbols()):
            await trader.close(rng.choice(live))
        else:
            await trader.open(rng.choice(list(SYMBOLS)))
    if rng.random() < 0.15:  # the market gaps through someone's stop
        bybit_symbol, _qty, price = SYMBOLS[rng.choice(list(SYMBOLS))]
        trader.emu.engine.set_price(bybit_symbol, price * rng.choice([0.95, 1.05]))


async def run_until_killed(trader: Trader, process: anyio.abc.Process, target: str) -> bool:
    """One run: its intents (the failpoint's scenario, or random ones) until ``process`` kills
    itself at ``target`` or, for a random kill, a random moment; then SIGKILL if it still runs.
    True if it died at its failpoint. A failpoint run ends when the process kills itself there;
    a loaded machine may take many seconds to get that far, so it waits for the event, not a
    guess (up to `CrashVenue.failpoint_wait`)."""
    async with anyio.create_task_group() as run_tg:
        run_tg.start_soon(SCENARIOS[target] if target else random_intents, trader)
        with anyio.move_on_after(trader.venue.failpoint_wait if target else trader.rng.uniform(0.3, 4.0)):
            await process.wait()
        run_tg.cancel_scope.cancel()
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
        await process.wait()
        return False
    return bool(target) and process.returncode == -signal.SIGKILL


async def until_converged(emu: EmulatorBase, client: coredis.Redis[str], trader: Trader) -> tuple[list[str], dict[str, str]]:
    """Wait (up to `CONVERGE_WAIT`) for Redis to agree with the venue and every intent to be
    answered; what still disagrees and what is still unanswered."""
    problems: list[str] = ["not checked yet"]
    unanswered: dict[str, str] = {}
    with anyio.move_on_after(CONVERGE_WAIT):
        while problems or unanswered:
            await anyio.sleep(1.0)
            problems = await converged(emu, client)
            unanswered = await trader.unanswered()
    return problems, unanswered


def entry_orders_on_the_venue(truth: dict[str, Any], trader: Trader) -> tuple[Counter[str], set[str]]:
    """Every order object the venue holds under an entry id (two under one id are two entries),
    and the entry ids the run's open intents asked for."""
    entry_orders = Counter(o["order_link_id"] for o in truth["orders"] if ids.is_entry_id(o["order_link_id"]))
    asked = {ids.entry_id(ACCOUNT, i) for i, fields in trader.intents.items() if fields["action"] == "open"}
    return entry_orders, asked


def assert_every_crash_check(problems: list[str], unanswered: dict[str, str], entry_orders: Counter[str],
                             asked: set[str], tried: Counter[str], reached: Counter[str], monitor: ExposureMonitor) -> None:
    """The checks both crash tests end with, against the venue's truth and Redis."""
    missed = sorted(set(tried) - set(reached))
    assert problems == [], f"venue and Redis disagree after recovery: {problems}"
    assert unanswered == {}, f"intents never answered after the kills: {unanswered}"
    assert set(entry_orders) <= asked, f"entry orders nobody asked for: {set(entry_orders) - asked}"
    assert all(n == 1 for n in entry_orders.values()), f"an intent produced two entries: {entry_orders}"
    assert not missed, f"failpoint runs that never reached their failpoint: {missed} (tried {dict(tried)})"
    assert monitor.longest <= UNPROTECTED_BOUND, f"a position went {monitor.longest:.1f} s without a stop ({monitor.worst})"


def test_every_failpoint_has_a_scenario() -> None:
    assert set(TARGETS) <= set(SCENARIOS), f"no crash-test scenario reaches {sorted(set(TARGETS) - set(SCENARIOS))}"


@pytest.mark.parametrize("venue_name", sorted(VENUES))
async def test_sigkill_at_random_moments_and_every_failpoint_then_venue_and_redis_agree(
        venue_name: str, redis_url: str, tmp_path: Path) -> None:
    venue = VENUES[venue_name]
    kills = venue.kills
    rng = random.Random(int(os.environ.get("POSGUARD_CRASH_SEED", "1")))
    started = time.monotonic()
    async with venue.kind.running() as emu, coredis.Redis.from_url(redis_url, decode_responses=True) as client, \
            anyio.create_task_group() as tg:
        config = write_config(tmp_path / "config.toml", emu, redis_url, venue)
        monitor = ExposureMonitor(emu)
        tg.start_soon(monitor.run)
        trader = Trader(emu, venue, client, rng)
        tried: Counter[str] = Counter()
        reached: Counter[str] = Counter()
        for run in range(kills):
            target = target_of(run)
            trader.run = f"run {run} ({target or 'random kill'})"
            process = await start_posguard(config, target)
            if await run_until_killed(trader, process, target):
                reached[target] += 1
            if target:
                tried[target] += 1
            trader.restore_venue()

        process = await start_posguard(config)
        problems, unanswered = await until_converged(emu, client, trader)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            code = await process.wait()
        tg.cancel_scope.cancel()

        truth = emu.truth()
        entry_orders, asked = entry_orders_on_the_venue(truth, trader)
        missed = sorted(set(tried) - set(reached))
        print(f"\ncrash test on {venue.name}: {kills} SIGKILLs ({sum(reached.values())} at failpoints: {dict(sorted(reached.items()))}),"
              f" {len(trader.intents)} intents ({len(trader.reused)} ids sent again),"
              f" {len(entry_orders)} entry orders, {len(truth['executions'])} executions,"
              f" longest unprotected {monitor.longest:.2f} s ({monitor.worst}), open at the end {sorted(truth['positions'])};"
              f" failpoints tried but not reached: {missed}; not tried: {sorted(set(TARGETS) - set(tried))};"
              f" unanswered: {unanswered}; {time.monotonic() - started:.0f} s")

        assert_every_crash_check(problems, unanswered, entry_orders, asked, tried, reached, monitor)
        assert code == 0, "SIGTERM must stop posguard gracefully with exit code 0"
        if kills >= 2 * len(KILL_TARGETS):
            assert set(tried) == set(KILL_TARGETS)


STANDBY_KILLS = int(os.environ.get("POSGUARD_STANDBY_KILLS", "20"))
"""Issue 15's bound: 20 or more SIGKILLs of whichever process leads."""


async def lease_pid(client: coredis.Redis[str]) -> int | None:
    from posguard.actors.store.lease import read_lease

    holder = await read_lease(client, ACCOUNT)
    return holder.pid if holder is not None else None


def live_stops(truth: dict[str, object], bybit_symbol: str) -> list[str]:
    """posguard's untriggered stop orders for one venue symbol, by client id."""
    return [o["order_link_id"] for o in truth["orders"]  # type: ignore[attr-defined]
            if o["symbol"] == bybit_symbol and o["status"] == "Untriggered" and ids.is_ours(o["order_link_id"])]


@pytest.mark.parametrize("venue_name", sorted(VENUES))
async def test_sigkill_whichever_leads_with_a_hot_standby_then_venue_and_redis_agree(
        venue_name: str, redis_url: str, tmp_path: Path) -> None:
    """Issue 15: two `posguard run` on one account, always: one leads, one stands by. Each run
    SIGKILLs whichever process holds the lease (at a random moment, or at a failpoint that the
    process was started with, reached once it leads); a new standby is started at once, so the
    one that stood by takes over while the next waits.

    The checks of the single-process crash test, plus: every kill met a standby that took the
    lease, no venue position ever holds two of posguard's live stops, and at the end the
    leader and the standby both stop with exit 0 on SIGTERM."""
    venue = VENUES[venue_name]
    rng = random.Random(int(os.environ.get("POSGUARD_CRASH_SEED", "1")))
    started = time.monotonic()

    async with venue.kind.running() as emu, coredis.Redis.from_url(redis_url, decode_responses=True) as client, \
            anyio.create_task_group() as tg:
        config = write_config(tmp_path / "config.toml", emu, redis_url, venue)
        monitor = ExposureMonitor(emu)
        tg.start_soon(monitor.run)
        trader = Trader(emu, venue, client, rng)
        tried: Counter[str] = Counter()
        reached: Counter[str] = Counter()
        double_stops: list[str] = []
        takeovers = 0
        leader = await start_posguard(config, target_of(0))
        for run in range(STANDBY_KILLS + 1):
            target = target_of(run)
            trader.run = f"run {run} ({target or 'random kill'})"
            with anyio.fail_after(venue.failpoint_wait):  # the process started for this run leads
                while await lease_pid(client) != leader.pid:
                    assert leader.returncode is None, f"{trader.run}: the process meant to lead exited {leader.returncode}"
                    await anyio.sleep(0.05)
            # The next standby starts only now: started while the lease was free (between a
            # kill and the takeover), it could take the lease ahead of the one standing by.
            standby = await start_posguard(config, target_of(run + 1) if run < STANDBY_KILLS else "")
            takeovers += run > 0
            if run == STANDBY_KILLS:
                break  # a leader and a standby for the end
            if await run_until_killed(trader, leader, target):
                reached[target] += 1
            assert leader.returncode == -signal.SIGKILL, f"{trader.run}: the leader exited {leader.returncode}"
            assert standby.returncode is None, f"{trader.run}: the standby exited {standby.returncode}"
            if target:
                tried[target] += 1
            trader.restore_venue()
            truth = emu.truth()
            double_stops += [f"{trader.run}: {s} {stops}" for s in truth["positions"]
                             if len(stops := live_stops(truth, s)) > 1]
            leader = standby

        problems, unanswered = await until_converged(emu, client, trader)
        # The standby first: a leader's graceful stop hands it the lease, and it would lead on.
        codes = []
        for process in (standby, leader):
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                codes.append(await process.wait())
        tg.cancel_scope.cancel()

        truth = emu.truth()
        entry_orders, asked = entry_orders_on_the_venue(truth, trader)
        double_stops += [f"at the end: {s} {stops}" for s in truth["positions"] if len(stops := live_stops(truth, s)) > 1]
        missed = sorted(set(tried) - set(reached))
        print(f"\nstandby crash test on {venue.name}: {STANDBY_KILLS} SIGKILLs of the leader, {takeovers} takeovers"
              f" ({sum(reached.values())} at failpoints: {dict(sorted(reached.items()))}),"
              f" {len(trader.intents)} intents ({len(trader.reused)} ids sent again), {len(entry_orders)} entry orders,"
              f" longest unprotected {monitor.longest:.2f} s ({monitor.worst}), open at the end {sorted(truth['positions'])};"
              f" failpoints tried but not reached: {missed}; unanswered: {unanswered};"
              f" {time.monotonic() - started:.0f} s")

        assert_every_crash_check(problems, unanswered, entry_orders, asked, tried, reached, monitor)
        assert codes == [0, 0], f"SIGTERM must stop the standby and the leader with exit 0: {codes}"
        assert double_stops == [], f"two live stops of posguard on one position: {double_stops}"
        assert takeovers == STANDBY_KILLS
