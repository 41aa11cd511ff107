"""What posguard adds on the happy path, in real time: push to verified, round trip to protected.

    python -m tests.bench.bench_happy_path [--opens 200]

Why: waiting on pushed evidence is only worth it if acting on the push is nearly free and
protection costs no more than the venue's own round trip. This drives the real `Engine`
(actors, evidence board, a real redis-server) on anyio's asyncio backend in wall-clock time
against a fault-free fake venue, one open at a time so nothing queues behind anything else.

Two setups, as rows:

* push after the response (REST 20 ms, pushes 30 ms after the fill): the actor is already
  waiting when the evidence lands, so "push -> verdict" is posguard's own cost of waking on
  the push and deciding (up to the moment the record write begins), and "push -> verified"
  adds writing the record to Redis (write-ahead: the state is in Redis before anything acts on
  it). The same for the position push that shows the attached stop ("stop push -> ...").
  Since issue 16 a fill whose stop rides on the entry is not written as `open`: the first
  record that says "verified" is the `protected` one, written once the stop push is in too,
  so "push -> verified" spans both pushes, and "stop push -> protected" is the one write.
  "Redis ping after 30 ms idle" is the floor under every written figure: one bare round trip
  from an idle loop on this machine.
* push before the response (pushes 1 ms after the fill) at several REST round trips: "sent ->
  protected" against "sent -> response", the one round trip an attached stop needs.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Sequence

import anyio
import coredis

from posguard.actors.intents import IntentRecord, OpenIntent
from posguard.actors.records import PositionRecord, State
from posguard.actors.settings import ActorSettings
from posguard.actors.store.client import open_redis
from posguard.actors.store.event_cache import RedisEventCache
from posguard.actors.store.positions import RedisStore
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag, synthetic_markets
from posguard.streams.venue.events import Execution, Order, Position, VenueEvent
from posguard.streams.venue.protocol import OrderRequest
from posguard.supervisor.engine import Engine
from posguard.supervisor.redis_server import start_redis_server
from tests.bench.common import machine, percentile, print_table
from tests.support import ClockHeld

QTY, STOP = 1.0, 9.8


class TimedVenue(FakeVenue):
    """The fake venue, noting when each create-order call was sent and answered, and how many
    store round trips (``trips``, set by the scenario) had been made by then."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.sent: dict[str, tuple[float, float]] = {}
        self.trips_at_send: dict[str, int] = {}
        self.trips: list[str] = []

    async def create_order(self, request: OrderRequest) -> Order:
        started = time.perf_counter()
        self.trips_at_send.setdefault(request.client_order_id, len(self.trips))
        order = await super().create_order(request)
        self.sent[request.client_order_id] = (started, time.perf_counter())
        return order


class TimedStore(RedisStore):
    """The Redis store, noting when each state's first write began (the moment the actor
    decided) and when it was in Redis. Timed here, not by an observer: a state the actor holds
    for its next write (`ActorContext.stage`) is observed before it is written."""

    def __init__(self, client: coredis.Redis[str], account: str) -> None:
        super().__init__(client, account)
        self.decided: dict[tuple[str, State], float] = {}
        self.written: dict[tuple[str, State], float] = {}

    async def save_record(self, record: PositionRecord, note: str = "", *, replies: Sequence[IntentRecord] = ()) -> None:
        key = (record.symbol, record.state)
        self.decided.setdefault(key, time.perf_counter())
        await super().save_record(record, note, replies=replies)
        self.written.setdefault(key, time.perf_counter())

    def first(self, times: dict[tuple[str, State], float], symbol: str, *states: State) -> float:
        return min(times.get((symbol, state), float("inf")) for state in states)


def knobs(rest_latency: float, push_delay: float) -> FaultKnobs:
    return FaultKnobs(
        rest_latency=rest_latency,
        push_delay={t: Lag.fixed(push_delay) for t in ("positions", "orders", "executions")},
    )


async def scenario(redis_url: str, opens: int, rest_latency: float, push_delay: float) -> dict[str, list[float]]:
    """Open ``opens`` positions one after another; every time in milliseconds."""
    evidence_at: dict[str, float] = {}  # symbol -> first pushed proof of the fill
    stop_seen_at: dict[str, float] = {}  # symbol -> first pushed position carrying the stop

    def on_event(event: VenueEvent) -> None:
        now = time.perf_counter()
        match event:
            case Execution() | Order(kind="market"):
                evidence_at.setdefault(event.symbol, now)
            case Position(size=size, stop_price=stop) if size > 0:
                evidence_at.setdefault(event.symbol, now)
                if stop is not None:
                    stop_seen_at.setdefault(event.symbol, now)

    markets = synthetic_markets(opens)
    times: dict[str, list[float]] = {k: [] for k in (
        "push->verdict", "push->verified", "stop push->decided", "stop push->protected", "sent->response", "sent->protected",
        "intent->sent", "round trips before the send", "Redis ping after 30 ms idle",
    )}
    async with (
        open_redis(redis_url) as client,
        TimedVenue(seed=3, knobs=knobs(rest_latency, push_delay), markets=markets) as venue,
        anyio.create_task_group() as tg,
    ):
        account = f"happy{int(rest_latency * 1000)}-{int(push_delay * 1000)}"
        store = TimedStore(client, account)
        counted = ClockHeld(store, None)  # names every store call: each is one round trip
        venue.trips = counted.calls
        engine = Engine(
            venue=venue, store=counted,  # type: ignore[arg-type]
            cache=RedisEventCache(client, account),
            settings=ActorSettings(account=account), rng=random.Random(3),
        )
        engine.ingestor.listeners.append(on_event)
        await tg.start(engine.run)
        if not await engine.streams_ready(timeout=10):
            raise SystemExit("the fake venue's streams did not come up")
        for number, symbol in enumerate(markets):
            intent = OpenIntent(intent_id=f"h{number}", symbol=symbol, side="buy", qty=QTY, stop_price=STOP)
            venue.trips.clear()
            submitted = time.perf_counter()
            result = await (await engine.submit(intent)).wait()
            record = await engine.store.load_record(symbol)
            if record is None or record.state is not State.PROTECTED:
                raise SystemExit(f"{symbol}: expected protected, got {result}")
            sent, answered = venue.sent[record.client_order_id]
            times["intent->sent"].append(sent - submitted)
            times["round trips before the send"].append(venue.trips_at_send[record.client_order_id] / 1000)
            times["sent->response"].append(answered - sent)
            protected_at = store.written[(symbol, State.PROTECTED)]
            times["sent->protected"].append(protected_at - sent)
            pushed = max(evidence_at[symbol], answered)
            stop_pushed = max(stop_seen_at[symbol], answered)
            # The first record write holding the verified fill: `open` (ahead of a separate
            # stop) or, with the attached stop seen, `protected`.
            times["push->verdict"].append(store.first(store.decided, symbol, State.OPEN, State.PROTECTED) - pushed)
            times["push->verified"].append(store.first(store.written, symbol, State.OPEN, State.PROTECTED) - pushed)
            times["stop push->decided"].append(store.decided[(symbol, State.PROTECTED)] - stop_pushed)
            times["stop push->protected"].append(protected_at - stop_pushed)
            # The floor under every "written" figure: one bare round trip to this redis-server
            # from an idle loop, as the record write after a push is.
            await anyio.sleep(0.03)
            pinged = time.perf_counter()
            await client.ping()
            times["Redis ping after 30 ms idle"].append(time.perf_counter() - pinged)
        tg.cancel_scope.cancel()
    return {k: [v * 1000 for v in values] for k, values in times.items()}


async def run(redis_url: str, opens: int) -> None:
    late = await scenario(redis_url, opens, rest_latency=0.02, push_delay=0.03)
    print_table(
        f"push after the response (REST 20 ms, push 30 ms after the fill), {opens} opens, wall-clock ms",
        ["step", "p50", "p99", "max"],
        [[name, f"{percentile(late[name], 50):.2f}", f"{percentile(late[name], 99):.2f}", f"{max(late[name]):.2f}"]
         for name in ("intent->sent", "round trips before the send", "push->verdict", "push->verified",
                      "stop push->decided", "stop push->protected", "Redis ping after 30 ms idle")],
    )
    rows = []
    for rtt in (0.02, 0.05, 0.1):
        early = await scenario(redis_url, opens, rest_latency=rtt, push_delay=0.001)
        response, protected = early["sent->response"], early["sent->protected"]
        p50r, p50p = percentile(response, 50), percentile(protected, 50)
        p99r, p99p = percentile(response, 99), percentile(protected, 99)
        rows.append([f"{rtt * 1000:.0f} ms", f"{p50r:.2f}", f"{p50p:.2f}", f"{(p50p / p50r - 1) * 100:+.1f} %",
                     f"{p99r:.2f}", f"{p99p:.2f}", f"{(p99p / p99r - 1) * 100:+.1f} %"])
    print_table(
        f"push before the response (1 ms after the fill), attached stop, {opens} opens per row, wall-clock ms",
        ["venue round trip", "sent->response p50", "sent->protected p50", "over", "response p99", "protected p99", "over"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    print(f"machine: {machine()}")
    print("asyncio backend, real time; Redis is a private redis-server on this machine")
    with start_redis_server() as server:
        anyio.run(run, server.url, args.opens, backend="asyncio")


if __name__ == "__main__":
    main()
