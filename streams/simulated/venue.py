"""An in-memory exchange that implements `Venue`, with the faults real exchanges have.

A fake that is easier than the real thing hides bugs, so this one lags, drops, disconnects,
fails requests, loses responses and stops positions out. What it never does is lie about its
own ground truth: `FakeVenue.truth` is what a test asserts against, not the actor's record.

Time is anyio's clock, so the venue runs under trio's MockClock in tests (virtual seconds)
and in real time in the demo. Every random decision is drawn from an RNG derived from the
seed and a stable key (the client order id, the call number), so a run is reproducible
whatever order concurrent tasks happen to run in.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

import anyio
import msgspec
from anyio.abc import ObjectSendStream, TaskGroup

from posguard.streams.simulated.lag import Lag
from posguard.streams.venue.errors import (
    DuplicateClientOrderId,
    NothingToReduce,
    OrderRejected,
    RateLimited,
    StopWouldTrigger,
    UnknownSymbol,
    VenueUnavailable,
)
from posguard.streams.venue.events import (
    TOPICS,
    Execution,
    Heartbeat,
    Order,
    OrderSide,
    Position,
    PositionSide,
    StreamStatus,
    Topic,
    VenueEvent,
    closing_side,
)
from posguard.streams.venue.markets import QTY_TOLERANCE, MarketRules
from posguard.streams.venue.protocol import OrderRequest, StopRequest


class FaultKnobs(msgspec.Struct, kw_only=True):
    """Everything that can go wrong, per venue. All default to a well-behaved exchange.

    Probabilities are per request (REST) or per event (push). Lags are sampled per event.
    """

    rest_latency: float = 0.02
    """Round trip of every REST call; the order takes effect halfway through."""
    position_lag: Lag = Lag()
    """Fill (or close) to the change showing in `fetch_positions`."""
    order_lag: Lag = Lag()
    """Order placed to `fetch_order` finding it by client order id."""
    execution_lag: Lag = Lag()
    """Fill to the execution showing in `fetch_executions`."""
    push_delay: dict[str, Lag] = msgspec.field(default_factory=dict)
    """Per topic (positions, orders, executions): fill to the pushed event."""
    push_drop: dict[str, float] = msgspec.field(default_factory=dict)
    """Per topic: probability that a pushed event is silently lost."""
    rest_error_rate: float = 0.0
    """Probability that a REST call fails with a 5xx before taking effect."""
    rate_limit_rate: float = 0.0
    """Probability that a REST call is refused by the rate limiter before taking effect."""
    rest_outage_every: Lag | None = None
    """When set, REST goes down entirely (every call a 503) after this long up ..."""
    rest_outage_for: Lag = Lag.fixed(30.0)
    """... for this long (exchange maintenance, a broken load balancer)."""
    lost_create_response_rate: float = 0.0
    """Probability that create_order takes effect but its response is lost (a timeout)."""
    outage_after_lost_response: float = 0.0
    """Probability that a lost create response is the start of a REST outage lasting
    `rest_outage_for`: the order is on the venue and nobody can ask about it."""
    reject_rate: float = 0.0
    """Probability that an entry order is rejected (insufficient margin)."""
    partial_fill_rate: float = 0.0
    """Probability that a market entry fills only partly; the rest is cancelled."""
    attached_stop_missing_rate: float = 0.0
    """Probability that a stop-loss attached to an entry is silently not set."""
    stop_reject_rate: float = 0.0
    """Probability that place_stop is rejected."""
    stop_out_rate: float = 0.0
    """Probability that the price jumps through the stop (or liquidates) right after a fill."""
    stop_out_delay: Lag = Lag.fixed(0.1)
    reject_duplicate_client_ids: bool = True
    """Bybit refuses any reused client order id. False models Binance, which accepts a reused
    id once the first order is no longer open: a blind resend could then open twice."""
    heartbeat_interval: float = 5.0
    """Seconds between stream heartbeats while connected."""
    disconnect_every: Lag | None = None
    """When set, the stream drops after this long connected ..."""
    disconnect_for: Lag = Lag.fixed(3.0)
    """... and comes back after this long."""
    price_step_interval: float = 0.0
    """When > 0, prices take a random-walk step this often (seconds)."""
    price_volatility: float = 0.0
    """Standard deviation of one random-walk step, as a fraction of the price."""


DEFAULT_MARKETS: dict[str, tuple[float, MarketRules]] = {
    rules.symbol: (price, rules)
    for price, rules in [
        (60_000.0, MarketRules(symbol="BTC/USDT:USDT", qty_step=0.001, min_qty=0.001, price_tick=0.1, min_notional=5)),
        (3_000.0, MarketRules(symbol="ETH/USDT:USDT", qty_step=0.01, min_qty=0.01, price_tick=0.01, min_notional=5)),
        (150.0, MarketRules(symbol="SOL/USDT:USDT", qty_step=0.1, min_qty=0.1, price_tick=0.01, min_notional=5)),
        (0.6, MarketRules(symbol="XRP/USDT:USDT", qty_step=1, min_qty=1, price_tick=0.0001, min_notional=5)),
        (1.5, MarketRules(symbol="AVL/USDT:USDT", qty_step=1, min_qty=1, price_tick=0.0001, min_notional=5)),
        (0.15, MarketRules(symbol="DOGE/USDT:USDT", qty_step=1, min_qty=1, price_tick=0.00001, min_notional=5)),
        (25.0, MarketRules(symbol="LINK/USDT:USDT", qty_step=0.1, min_qty=0.1, price_tick=0.001, min_notional=5)),
        (600.0, MarketRules(symbol="BNB/USDT:USDT", qty_step=0.01, min_qty=0.01, price_tick=0.01, min_notional=5)),
    ]
}


def synthetic_markets(count: int) -> dict[str, tuple[float, MarketRules]]:
    """``count`` made-up symbols (S0001/USDT:USDT ...) for scale tests and benchmarks."""
    return {
        f"S{i:04d}/USDT:USDT": (
            10.0,
            MarketRules(symbol=f"S{i:04d}/USDT:USDT", qty_step=0.1, min_qty=0.1, price_tick=0.001),
        )
        for i in range(count)
    }


T = TypeVar("T")


class LaggedView(Generic[T]):
    """Versions of one key, each visible over REST from its own time on.

    A REST read returns the newest version that is already visible, so a fill whose
    position-list entry lags shows the *previous* state until its time comes, exactly the
    seed's failure.
    """

    def __init__(self) -> None:
        self._versions: list[tuple[float, T]] = []

    def add(self, visible_at: float, value: T) -> None:
        self._versions.append((visible_at, value))

    def read(self, now: float) -> T | None:
        for index in range(len(self._versions) - 1, -1, -1):
            visible_at, value = self._versions[index]
            if visible_at <= now:
                del self._versions[:index]  # older versions can never be read again
                return value
        return None


class GroundTruth:
    """What is really on the venue, for tests to assert against. Never lags, never lies."""

    def __init__(self) -> None:
        self.positions: dict[str, Position] = {}
        self.orders: dict[str, Order] = {}  # by client order id (or venue id when it has none)
        self.executions: list[Execution] = []
        self.entries_filled: Counter[str] = Counter()  # symbol -> fills that opened or added
        self.unprotected_since: dict[str, float] = {}
        self.unprotected_windows: list[tuple[str, float, float]] = []

    def position(self, symbol: str) -> Position | None:
        position = self.positions.get(symbol)
        return position if position is not None and position.is_open else None

    def open_stops(self, symbol: str) -> list[Order]:
        return [
            o for o in self.orders.values() if o.symbol == symbol and o.kind == "stop" and o.status == "open"
        ]

    def is_protected(self, symbol: str) -> bool:
        """An open position is protected when a stop would close all of it."""
        position = self.position(symbol)
        if position is None:
            return True
        if position.stop_price is not None:
            return True
        covering = sum(
            o.qty for o in self.open_stops(symbol) if o.side == closing_side(position.side)
        )
        return covering >= position.size - QTY_TOLERANCE

    def unprotected_now(self) -> list[str]:
        return sorted(s for s in self.positions if not self.is_protected(s))

    def max_unprotected_seconds(self, now: float) -> float:
        finished = [end - start for _, start, end in self.unprotected_windows]
        running = [now - start for start in self.unprotected_since.values()]
        return max(finished + running, default=0.0)


class FakeVenue:
    """`Venue` in memory. Use as ``async with FakeVenue(...) as venue:``: it runs a scheduler
    task for delayed pushes, stop-outs, disconnects, heartbeats and the price walk."""

    name = "fake"

    def __init__(
        self,
        *,
        seed: int = 0,
        knobs: FaultKnobs | None = None,
        markets: dict[str, tuple[float, MarketRules]] | None = None,
        supports_attached_stop: bool = True,
    ) -> None:
        self.seed = seed
        self.knobs = knobs or FaultKnobs()
        markets = markets if markets is not None else DEFAULT_MARKETS
        self.rules: dict[str, MarketRules] = {symbol: rules for symbol, (_, rules) in markets.items()}
        self.prices: dict[str, float] = {symbol: price for symbol, (price, _) in markets.items()}
        self._supports_attached_stop = supports_attached_stop
        self.truth = GroundTruth()
        self.calls: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._scheduled: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._wakeup = anyio.Event()
        self._sinks: list[ObjectSendStream[VenueEvent]] = []
        self._outbox: deque[VenueEvent] = deque()
        self.connected = True
        self._connection_epoch = 0  # pushes in flight when the stream drops are lost
        self.rest_down = False
        self._position_views: dict[str, LaggedView[Position]] = {}
        self._order_views: dict[str, LaggedView[Order]] = {}
        self._execution_views: list[tuple[float, Execution]] = []
        self._task_group: TaskGroup | None = None
        self._epoch_offset = 0.0
        self.scripted_failures: dict[str, list[Exception]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def supports_attached_stop(self) -> bool:
        return self._supports_attached_stop

    async def __aenter__(self) -> FakeVenue:
        self._epoch_offset = time.time() - anyio.current_time()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._run_scheduler)
        if self.knobs.heartbeat_interval > 0:
            self._schedule(self.knobs.heartbeat_interval, self._heartbeat)
        if self.knobs.disconnect_every is not None:
            self._schedule(self.knobs.disconnect_every.sample(self._rng("disconnect", 0)), self._auto_disconnect)
        if self.knobs.price_step_interval > 0:
            self._schedule(self.knobs.price_step_interval, self._price_walk)
        if self.knobs.rest_outage_every is not None:
            self._schedule(self.knobs.rest_outage_every.sample(self._rng("outage", 0)), self._toggle_outage)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Nothing to release; the scheduler ends with the ``async with`` block."""

    # -- knobs tests turn by hand ----------------------------------------------------------

    def fail_next(self, method: str, *errors: Exception) -> None:
        """Make the next calls of ``method`` raise these errors, in order, before any effect."""
        self.scripted_failures.setdefault(method, []).extend(errors)

    def disconnect(self, reason: str = "forced disconnect") -> None:
        """Drop the private stream: a StreamStatus(connected=False) per topic, then silence."""
        if not self.connected:
            return
        self.connected = False
        self._connection_epoch += 1
        for topic in TOPICS:
            self._emit(StreamStatus(topic=topic, connected=False, reason=reason, ts_ms=self.now_ms()))

    def reconnect(self) -> None:
        if self.connected:
            return
        self.connected = True
        for topic in TOPICS:
            self._emit(StreamStatus(topic=topic, connected=True, reason="reconnected", ts_ms=self.now_ms()))

    def set_price(self, symbol: str, price: float) -> None:
        """Move the market; stops the move crosses are triggered at that price."""
        self.prices[symbol] = price
        self._trigger_stops(symbol)

    def liquidate(self, symbol: str) -> None:
        """Close the whole position by liquidation: an execution with no client order id."""
        position = self.truth.position(symbol)
        if position is not None:
            self._fill_close(symbol, position.size, order_id=f"liq-{next(self._ids)}", client_order_id="")

    # -- Venue: reads ----------------------------------------------------------------------

    async def load_markets(self) -> dict[str, MarketRules]:
        await self._rest_call("load_markets")
        return dict(self.rules)

    async def fetch_price(self, symbol: str) -> float:
        await self._rest_call("fetch_price")
        self._rules(symbol)
        return self.prices[symbol]

    async def fetch_positions(self) -> list[Position]:
        await self._rest_call("fetch_positions")
        now = anyio.current_time()
        visible = (view.read(now) for view in self._position_views.values())
        return [p for p in visible if p is not None and p.is_open]

    async def fetch_order(self, symbol: str, client_order_id: str) -> Order | None:
        await self._rest_call("fetch_order")
        view = self._order_views.get(client_order_id)
        order = view.read(anyio.current_time()) if view is not None else None
        return order if order is not None and order.symbol == symbol else None

    async def fetch_executions(self, symbol: str, since_ms: int) -> list[Execution]:
        await self._rest_call("fetch_executions")
        now = anyio.current_time()
        return [
            e for at, e in self._execution_views if at <= now and e.symbol == symbol and e.ts_ms >= since_ms
        ]

    async def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        await self._rest_call("fetch_open_orders")
        now = anyio.current_time()
        orders = (view.read(now) for view in self._order_views.values())
        return [
            o for o in orders if o is not None and o.status == "open" and (symbol is None or o.symbol == symbol)
        ]

    # -- Venue: writes ---------------------------------------------------------------------

    async def create_order(self, request: OrderRequest) -> Order:
        await self._rest_call("create_order", effect_follows=True)
        rng = self._rng("create", request.client_order_id)
        order = self._apply_market_order(request, rng)
        await self._half_trip()
        if self.knobs.lost_create_response_rate and rng.random() < self.knobs.lost_create_response_rate:
            if not self.rest_down and rng.random() < self.knobs.outage_after_lost_response:
                self.rest_down = True
                self._schedule(self.knobs.rest_outage_for.sample(rng), self._end_outage)
            raise VenueUnavailable("create_order: response lost after the order was placed (timeout)")
        return order

    async def place_stop(self, request: StopRequest) -> Order:
        await self._rest_call("place_stop", effect_follows=True)
        rules = self._rules(request.symbol)
        self._check_duplicate(request.client_order_id)
        rng = self._rng("stop", request.client_order_id)
        if self.knobs.stop_reject_rate and rng.random() < self.knobs.stop_reject_rate:
            raise OrderRejected("stop order rejected by the venue", code="fake-stop-reject")
        price = self.prices[request.symbol]
        would_trigger = price <= request.stop_price if request.side == "sell" else price >= request.stop_price
        if would_trigger:
            raise StopWouldTrigger(
                f"stop price {request.stop_price} is on the wrong side of the market {price}",
                code="fake-stop-side",
            )
        if request.qty < rules.min_qty:
            raise OrderRejected(f"qty {request.qty} below minimum {rules.min_qty}", code="fake-min-qty")
        order = Order(
            symbol=request.symbol,
            order_id=f"o{next(self._ids)}",
            client_order_id=request.client_order_id,
            side=request.side,
            kind="stop",
            qty=request.qty,
            filled=0.0,
            avg_price=None,
            status="open",
            reduce_only=True,
            stop_price=request.stop_price,
            ts_ms=self.now_ms(),
        )
        self._record_order(order, self._rng("stop-visibility", request.client_order_id))
        self._update_protection(request.symbol)
        await self._half_trip()
        return order

    async def cancel_order(self, symbol: str, client_order_id: str) -> Order | None:
        await self._rest_call("cancel_order", effect_follows=True)
        order = self.truth.orders.get(client_order_id)
        if order is None or order.symbol != symbol or order.status != "open":
            await self._half_trip()
            return None
        cancelled = msgspec.structs.replace(order, status="cancelled", ts_ms=self.now_ms())
        self._record_order(cancelled, self._rng("cancel", client_order_id))
        self._update_protection(symbol)
        await self._half_trip()
        return cancelled

    async def stream(self, sink: ObjectSendStream[VenueEvent]) -> None:
        self._sinks.append(sink)
        if self.connected:
            for topic in TOPICS:
                self._emit(StreamStatus(topic=topic, connected=True, reason="connected", ts_ms=self.now_ms()))
        try:
            await anyio.sleep_forever()
        finally:
            self._sinks.remove(sink)

    # -- matching engine -------------------------------------------------------------------

    def _apply_market_order(self, request: OrderRequest, rng: random.Random) -> Order:
        rules = self._rules(request.symbol)
        self._check_duplicate(request.client_order_id)
        if request.qty < rules.min_qty:
            raise OrderRejected(f"qty {request.qty} below minimum {rules.min_qty}", code="fake-min-qty")
        price = self.prices[request.symbol]
        position = self.truth.position(request.symbol)
        order_id = f"o{next(self._ids)}"

        def final(status: str, filled: float, avg: float | None) -> Order:
            return Order(
                symbol=request.symbol,
                order_id=order_id,
                client_order_id=request.client_order_id,
                side=request.side,
                kind="market",
                qty=request.qty,
                filled=filled,
                avg_price=avg,
                status=status,  # type: ignore[arg-type]
                reduce_only=request.reduce_only,
                stop_price=None,
                ts_ms=self.now_ms(),
            )

        if request.reduce_only:
            if position is None or request.side != closing_side(position.side):
                raise NothingToReduce("reduce-only order would not reduce the position", code="fake-reduce-only")
            # Like Bybit, a reduce-only quantity above the position is cut to the position.
            qty = min(request.qty, position.size)
            order = msgspec.structs.replace(final("filled", qty, price), qty=qty)
            self._record_order(order, rng)
            self._fill_close(request.symbol, qty, order_id=order_id, client_order_id=request.client_order_id)
            return order

        if self.knobs.reject_rate and rng.random() < self.knobs.reject_rate:
            rejected = final("rejected", 0.0, None)
            self._record_order(rejected, rng)
            raise OrderRejected("insufficient available balance", code="fake-margin")
        if request.stop_loss is not None:
            wrong_side = request.stop_loss >= price if request.side == "buy" else request.stop_loss <= price
            if wrong_side:
                self._record_order(final("rejected", 0.0, None), rng)
                raise OrderRejected(
                    f"stop-loss {request.stop_loss} is on the wrong side of the market {price}",
                    code="fake-sl-side",
                )
        qty = request.qty
        status = "filled"
        if self.knobs.partial_fill_rate and rng.random() < self.knobs.partial_fill_rate:
            qty = max(rules.min_qty, rules.round_qty(request.qty * rng.uniform(0.2, 0.8)))
            status = "cancelled" if qty < request.qty else "filled"
        order = final(status, qty, price)
        self._record_order(order, rng)
        self._fill_open(request, qty, price, order_id, rng)
        return order

    def _fill_open(self, request: OrderRequest, qty: float, price: float, order_id: str, rng: random.Random) -> None:
        symbol = request.symbol
        side: PositionSide = "long" if request.side == "buy" else "short"
        position = self.truth.position(symbol)
        if position is not None and position.side != side:
            # One-way mode: an opposite non-reduce-only order reduces first, then flips.
            reduce = min(qty, position.size)
            self._fill_close(symbol, reduce, order_id=order_id, client_order_id=request.client_order_id)
            qty -= reduce
            if qty <= 0:
                return
            position = None
        self._record_execution(request.side, symbol, qty, price, order_id, request.client_order_id, rng)
        size = qty + (position.size if position else 0.0)
        entry = price if position is None else (position.entry_price * position.size + price * qty) / size
        stop = position.stop_price if position else None
        if request.stop_loss is not None and self._supports_attached_stop:
            missing = self.knobs.attached_stop_missing_rate and rng.random() < self.knobs.attached_stop_missing_rate
            if not missing:
                stop = request.stop_loss
        self._set_position(
            Position(symbol=symbol, side=side, size=size, entry_price=entry, stop_price=stop, ts_ms=self.now_ms()),
            rng,
        )
        self.truth.entries_filled[symbol] += 1
        if self.knobs.stop_out_rate and rng.random() < self.knobs.stop_out_rate:
            self._schedule(self.knobs.stop_out_delay.sample(rng), lambda: self._stop_out(symbol))

    def _fill_close(self, symbol: str, qty: float, *, order_id: str, client_order_id: str) -> None:
        position = self.truth.position(symbol)
        if position is None:
            return
        price = self.prices[symbol]
        rng = self._rng("close", f"{order_id}:{client_order_id}")
        self._record_execution(closing_side(position.side), symbol, qty, price, order_id, client_order_id, rng)
        remaining = round(position.size - qty, 12)
        if remaining > 0:
            new = msgspec.structs.replace(position, size=remaining, ts_ms=self.now_ms())
        else:
            new = Position(symbol=symbol, side="flat", size=0.0, entry_price=0.0, stop_price=None, ts_ms=self.now_ms())
        self._set_position(new, rng)

    def _stop_out(self, symbol: str) -> None:
        position = self.truth.position(symbol)
        if position is None:
            return
        stops = [position.stop_price] if position.stop_price is not None else []
        stops += [o.stop_price for o in self.truth.open_stops(symbol) if o.stop_price is not None]
        if not stops:
            self.liquidate(symbol)
            return
        # Jump just through the nearest stop.
        if position.side == "long":
            self.set_price(symbol, max(stops) * 0.999)
        else:
            self.set_price(symbol, min(stops) * 1.001)

    def _trigger_stops(self, symbol: str) -> None:
        price = self.prices[symbol]
        position = self.truth.position(symbol)
        if position is not None and position.stop_price is not None:
            crossed = price <= position.stop_price if position.side == "long" else price >= position.stop_price
            if crossed:
                self._fill_close(symbol, position.size, order_id=f"tpsl-{next(self._ids)}", client_order_id="")
        for stop in self.truth.open_stops(symbol):
            assert stop.stop_price is not None
            crossed = price <= stop.stop_price if stop.side == "sell" else price >= stop.stop_price
            if not crossed:
                continue
            position = self.truth.position(symbol)
            rng = self._rng("trigger", stop.client_order_id)
            if position is None or stop.side != closing_side(position.side):
                # Reduce-only with nothing to reduce: the venue cancels it at trigger time.
                self._record_order(msgspec.structs.replace(stop, status="cancelled", ts_ms=self.now_ms()), rng)
                continue
            qty = min(stop.qty, position.size)
            filled = msgspec.structs.replace(stop, status="filled", filled=qty, avg_price=price, ts_ms=self.now_ms())
            self._record_order(filled, rng)
            self._fill_close(symbol, qty, order_id=stop.order_id, client_order_id=stop.client_order_id)
        self._update_protection(symbol)

    # -- bookkeeping: truth, REST views, pushes --------------------------------------------

    def _set_position(self, position: Position, rng: random.Random) -> None:
        self.truth.positions[position.symbol] = position
        now = anyio.current_time()
        self._position_views.setdefault(position.symbol, LaggedView()).add(
            now + self.knobs.position_lag.sample(rng), position
        )
        self._push("positions", position, rng)
        self._update_protection(position.symbol)

    def _record_order(self, order: Order, rng: random.Random) -> None:
        self.truth.orders[order.client_order_id or order.order_id] = order
        if order.client_order_id:
            self._order_views.setdefault(order.client_order_id, LaggedView()).add(
                anyio.current_time() + self.knobs.order_lag.sample(rng), order
            )
        self._push("orders", order, rng)

    def _record_execution(
        self,
        side: OrderSide,
        symbol: str,
        qty: float,
        price: float,
        order_id: str,
        client_order_id: str,
        rng: random.Random,
    ) -> None:
        execution = Execution(
            symbol=symbol,
            exec_id=f"x{next(self._ids)}",
            order_id=order_id,
            client_order_id=client_order_id,
            side=side,
            qty=qty,
            price=price,
            ts_ms=self.now_ms(),
        )
        self.truth.executions.append(execution)
        self._execution_views.append((anyio.current_time() + self.knobs.execution_lag.sample(rng), execution))
        self._push("executions", execution, rng)

    def _update_protection(self, symbol: str) -> None:
        now = anyio.current_time()
        protected = self.truth.is_protected(symbol)
        since = self.truth.unprotected_since.get(symbol)
        if protected and since is not None:
            del self.truth.unprotected_since[symbol]
            self.truth.unprotected_windows.append((symbol, since, now))
        elif not protected and since is None:
            self.truth.unprotected_since[symbol] = now

    def _push(self, topic: Topic, event: VenueEvent, rng: random.Random) -> None:
        if not self.connected:
            return
        if rng.random() < self.knobs.push_drop.get(topic, 0.0):
            return
        delay = self.knobs.push_delay.get(topic, Lag()).sample(rng)
        epoch = self._connection_epoch

        def deliver() -> None:
            if epoch == self._connection_epoch:
                self._emit(event)

        self._schedule(delay, deliver)

    def _emit(self, event: VenueEvent) -> None:
        """Queue an event for every connected subscriber; the scheduler sends it in order."""
        if self._sinks:
            self._outbox.append(event)
            self._wakeup.set()

    async def _flush_outbox(self) -> None:
        while self._outbox:
            event = self._outbox.popleft()
            for sink in list(self._sinks):
                try:
                    await sink.send(event)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    self._sinks.remove(sink)

    # -- scheduler -------------------------------------------------------------------------

    def _schedule(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._scheduled, (anyio.current_time() + delay, next(self._seq), action))
        self._wakeup.set()

    async def _run_scheduler(self) -> None:
        while True:
            now = anyio.current_time()
            while self._scheduled and self._scheduled[0][0] <= now:
                heapq.heappop(self._scheduled)[2]()
            self._wakeup = anyio.Event()
            # Backpressure: a slow consumer slows the venue's clockwork, it never loses events.
            await self._flush_outbox()
            if self._scheduled and self._scheduled[0][0] <= anyio.current_time():
                continue
            timeout = self._scheduled[0][0] - anyio.current_time() if self._scheduled else None
            with anyio.move_on_after(timeout):
                await self._wakeup.wait()

    def _heartbeat(self) -> None:
        if self.connected:
            for topic in TOPICS:
                self._emit(Heartbeat(topic=topic, ts_ms=self.now_ms()))
        self._schedule(self.knobs.heartbeat_interval, self._heartbeat)

    def _auto_disconnect(self) -> None:
        assert self.knobs.disconnect_every is not None
        count = self.calls["auto_disconnect"]
        self.calls["auto_disconnect"] += 1
        self.disconnect("scheduled disconnect")
        self._schedule(self.knobs.disconnect_for.sample(self._rng("reconnect", count)), self._auto_reconnect)

    def _auto_reconnect(self) -> None:
        assert self.knobs.disconnect_every is not None
        self.reconnect()
        count = self.calls["auto_disconnect"]
        self._schedule(self.knobs.disconnect_every.sample(self._rng("disconnect", count)), self._auto_disconnect)

    def _toggle_outage(self) -> None:
        assert self.knobs.rest_outage_every is not None
        count = self.calls["rest_outage"]
        self.calls["rest_outage"] += 1
        self.rest_down = not self.rest_down
        rng = self._rng("outage", count)
        lag = self.knobs.rest_outage_for if self.rest_down else self.knobs.rest_outage_every
        self._schedule(lag.sample(rng), self._toggle_outage)

    def _end_outage(self) -> None:
        self.rest_down = False

    def _price_walk(self) -> None:
        step = self.calls["price_walk"]
        self.calls["price_walk"] += 1
        rng = self._rng("price", step)
        for symbol in list(self.prices):
            rules = self.rules[symbol]
            moved = self.prices[symbol] * (1 + rng.gauss(0, self.knobs.price_volatility))
            self.set_price(symbol, max(rules.price_tick, rules.round_price(moved)))
        self._schedule(self.knobs.price_step_interval, self._price_walk)

    # -- helpers ---------------------------------------------------------------------------

    async def _rest_call(self, method: str, *, effect_follows: bool = False) -> None:
        """Count the call, spend the latency, and fail it before any effect when told to.

        Writes spend half the round trip here and half after taking effect, so a pushed
        event can overtake the response, as it does on real venues.
        """
        number = self.calls[method]
        self.calls[method] += 1
        await (self._half_trip() if effect_follows else anyio.sleep(self.knobs.rest_latency))
        scripted = self.scripted_failures.get(method)
        if scripted:
            raise scripted.pop(0)
        if self.rest_down:
            raise VenueUnavailable(f"{method}: HTTP 503 (venue REST outage)")
        rng = self._rng(f"rest:{method}", number)
        roll = rng.random()
        if roll < self.knobs.rate_limit_rate:
            raise RateLimited(f"{method}: rate limit exceeded (HTTP 429)")
        if roll < self.knobs.rate_limit_rate + self.knobs.rest_error_rate:
            raise VenueUnavailable(f"{method}: HTTP 503 service unavailable")

    async def _half_trip(self) -> None:
        await anyio.sleep(self.knobs.rest_latency / 2)

    def _check_duplicate(self, client_order_id: str) -> None:
        existing = self.truth.orders.get(client_order_id)
        if existing is None:
            return
        if self.knobs.reject_duplicate_client_ids or existing.status == "open":
            raise DuplicateClientOrderId(client_order_id)
        # Binance-like: the id is free again. Keep the first order's truth under a new key.
        self.truth.orders[f"{client_order_id}#{existing.order_id}"] = existing

    def _rules(self, symbol: str) -> MarketRules:
        try:
            return self.rules[symbol]
        except KeyError:
            raise UnknownSymbol(f"{symbol} is not listed on this venue") from None

    def _rng(self, purpose: str, key: object) -> random.Random:
        return random.Random(f"{self.seed}:{purpose}:{key}")

    def clock_time(self, ts_ms: int) -> float:
        """anyio clock time of a venue timestamp (to compare with times the caller took)."""
        return ts_ms / 1000 - self._epoch_offset

    def now_ms(self) -> int:
        """Epoch milliseconds, advancing with anyio's clock (virtual under a mock clock)."""
        return int((self._epoch_offset + anyio.current_time()) * 1000)
