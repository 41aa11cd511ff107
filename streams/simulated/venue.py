"""An in-memory exchange that implements `Venue`, with the faults real exchanges have.

A fake that is easier than the real thing hides bugs, so this one lags, drops, disconnects,
fails requests, loses responses and stops positions out. What it never does is lie about its
own ground truth: `FakeVenue.truth` is what a test asserts against, not the actor's record.

Time is anyio's clock, so the venue runs under trio's MockClock in tests (virtual seconds)
and in real time in the demo. Every random decision is drawn from an RNG derived from the
seed and a stable key (the client order id, the call number), so a run is reproducible
whatever order concurrent tasks happen to run in.

This module is the seam: the `Venue` methods and the controls tests turn by hand. What an
order does is the matching engine's (`matching`), what REST reads see is the lagged views'
(`views`), what goes wrong is the fault knobs' (`knobs`, `rest_faults`, `disconnects`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

import anyio
from anyio.abc import ObjectSendStream, TaskGroup

from posguard.streams.simulated.clock import VenueClock
from posguard.streams.simulated.disconnects import ScheduledDisconnects
from posguard.streams.simulated.knobs import FaultKnobs
from posguard.streams.simulated.markets import DEFAULT_MARKETS
from posguard.streams.simulated.matching import MatchingEngine
from posguard.streams.simulated.price_walk import PriceWalk
from posguard.streams.simulated.private_stream import PrivateStream
from posguard.streams.simulated.rest_faults import RestFaults
from posguard.streams.simulated.rng import KeyedRandom
from posguard.streams.simulated.scheduler import Scheduler
from posguard.streams.simulated.truth import GroundTruth
from posguard.streams.simulated.views import RestViews
from posguard.streams.venue.errors import VenueUnavailable
from posguard.streams.venue.events import Execution, Order, Position, VenueEvent
from posguard.streams.venue.markets import MarketRules
from posguard.streams.venue.protocol import (
    IDS_KEPT_FOR_GOOD,
    AmendRequest,
    OrderRequest,
    StopRequest,
    UnknownOrderRule,
    ids_reusable_once_closed,
)

__all__ = ["ACCOUNT", "FakeVenue"]

ACCOUNT = "*"
"""The key of `FakeVenue.position_lists` for a list of the whole account's positions."""


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
        self._knobs = knobs or FaultKnobs()
        markets = markets if markets is not None else DEFAULT_MARKETS
        self._supports_attached_stop = supports_attached_stop
        self.calls: Counter[str] = Counter()
        """Calls per REST method, plus the scheduled faults' and price walk's own counts."""
        self.position_lists: Counter[str] = Counter()
        """`fetch_positions` calls by what they asked for: a symbol, or `ACCOUNT` for every
        position of the account (a fallback that asks for all is what a test looks for here)."""
        rng = KeyedRandom(seed)
        self._clock = VenueClock()
        self._scheduler = Scheduler()
        self._stream = PrivateStream(knobs=self._knobs, clock=self._clock, scheduler=self._scheduler)
        self._views = RestViews()
        self._rest = RestFaults(knobs=self._knobs, calls=self.calls, rng=rng, scheduler=self._scheduler)
        self._engine = MatchingEngine(
            knobs=self._knobs,
            markets=markets,
            supports_attached_stop=supports_attached_stop,
            rng=rng,
            clock=self._clock,
            scheduler=self._scheduler,
            stream=self._stream,
            views=self._views,
        )
        self._disconnects = ScheduledDisconnects(
            knobs=self._knobs, calls=self.calls, rng=rng, scheduler=self._scheduler, stream=self._stream
        )
        self._price_walk = PriceWalk(
            knobs=self._knobs, calls=self.calls, rng=rng, scheduler=self._scheduler, engine=self._engine
        )
        self._rng = rng
        self._task_group: TaskGroup | None = None

    @property
    def seed(self) -> int:
        return self._rng.seed

    @property
    def knobs(self) -> FaultKnobs:
        """The venue's faults; turn them in place (``venue.knobs.reject_rate = 1.0``) mid-test."""
        return self._knobs

    @property
    def truth(self) -> GroundTruth:
        """What is really on the venue; never lags, never lies."""
        return self._engine.truth

    @property
    def rules(self) -> dict[str, MarketRules]:
        return self._engine.rules

    @property
    def prices(self) -> dict[str, float]:
        """The current price per symbol (move it with `set_price`, not by assignment)."""
        return self._engine.prices

    @property
    def connected(self) -> bool:
        """Whether the private stream is up."""
        return self._stream.connected

    @property
    def rest_down(self) -> bool:
        """Whether REST is in an outage (every call a 503)."""
        return self._rest.down

    def rest_outages(self) -> list[tuple[float, float]]:
        """Every REST outage so far, (start, end) in anyio time (`RestFaults.outages`)."""
        return self._rest.outages()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def supports_attached_stop(self) -> bool:
        return self._supports_attached_stop

    @property
    def unknown_order_rule(self) -> UnknownOrderRule:
        """Bybit's rule by default; Binance's with `FaultKnobs.reject_duplicate_client_ids`
        off (read at each call, so a test may turn the knob mid-run)."""
        return IDS_KEPT_FOR_GOOD if self._knobs.reject_duplicate_client_ids else ids_reusable_once_closed()

    async def __aenter__(self) -> FakeVenue:
        self._clock.start()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._scheduler.run, self._stream.flush)
        if self.knobs.heartbeat_interval > 0:
            self._stream.start_heartbeats()
        if self.knobs.disconnect_every is not None:
            self._disconnects.start()
        if self.knobs.price_step_interval > 0:
            self._price_walk.start()
        if self.knobs.rest_outage_every is not None:
            self._rest.start_outages()
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
        self._rest.fail_next(method, *errors)

    def disconnect(self, reason: str = "forced disconnect") -> None:
        """Drop the private stream: a StreamStatus(connected=False) per topic, then silence."""
        self._stream.disconnect(reason)

    def reconnect(self) -> None:
        self._stream.reconnect()

    def set_price(self, symbol: str, price: float) -> None:
        """Move the market; stops the move crosses are triggered at that price."""
        self._engine.set_price(symbol, price)

    def set_leverage(self, symbol: str, leverage: float) -> None:
        """The account's leverage on ``symbol`` (as if set on the venue's site): where new
        positions are liquidated (`Position.liq_price`) and what `fetch_leverage` answers."""
        self._engine.leverage[symbol] = leverage

    def liquidate(self, symbol: str) -> None:
        """Close the whole position by liquidation: an execution with no client order id."""
        self._engine.liquidate(symbol)

    @contextmanager
    def hide_position(self, symbol: str) -> Iterator[None]:
        """Leave ``symbol`` out of `fetch_positions` inside the block, whatever it holds.

        The seed's failure from the other side: a position list that does not show a position
        which is there (or, after a stop-out, one that is gone), so a test can prove the audit
        acts only on positive evidence. The truth, the pushes and the other reads are untouched;
        the position shows again (as it is by then) when the block ends.
        """
        already_hidden = self._views.is_position_hidden(symbol)
        self._views.hide_position(symbol)
        try:
            yield
        finally:
            if not already_hidden:
                self._views.show_position(symbol)

    # -- Venue: reads ----------------------------------------------------------------------

    async def load_markets(self) -> dict[str, MarketRules]:
        await self._rest.call("load_markets")
        return dict(self.rules)

    async def fetch_price(self, symbol: str) -> float:
        await self._rest.call("fetch_price")
        self._engine.rules_for(symbol)
        return self.prices[symbol]

    async def fetch_leverage(self, symbol: str) -> float | None:
        await self._rest.call("fetch_leverage")
        self._engine.rules_for(symbol)
        return self._engine.leverage[symbol]

    async def fetch_positions(self, symbol: str | None = None) -> list[Position]:
        self.position_lists[ACCOUNT if symbol is None else symbol] += 1
        await self._rest.call("fetch_positions")
        if symbol is not None:
            self._engine.rules_for(symbol)
        return self._views.positions(anyio.current_time(), symbol)

    async def fetch_order(self, symbol: str, client_order_id: str, *, conditional: bool | None = None) -> Order | None:
        # One book for every order here: ``conditional`` changes nothing.
        await self._rest.call("fetch_order")
        return self._views.order(symbol, client_order_id, anyio.current_time())

    async def fetch_executions(self, symbol: str, since_ms: int) -> list[Execution]:
        await self._rest.call("fetch_executions")
        return self._views.executions(symbol, since_ms, anyio.current_time())

    async def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        await self._rest.call("fetch_open_orders")
        return self._views.open_orders(symbol, anyio.current_time())

    # -- Venue: writes ---------------------------------------------------------------------

    async def create_order(self, request: OrderRequest) -> Order:
        await self._rest.call("create_order", effect_follows=True)
        rng = self._rng("create", request.client_order_id)
        order = self._engine.market_order(request, rng)
        await self._rest.half_trip("create_order")
        if self._rest.create_response_lost(rng):
            raise VenueUnavailable("create_order: response lost after the order was placed (timeout)")
        return order

    async def place_stop(self, request: StopRequest) -> Order:
        await self._rest.call("place_stop", effect_follows=True)
        order = self._engine.place_stop(request)
        await self._rest.half_trip("place_stop")
        return order

    async def amend_attached(self, request: AmendRequest) -> None:
        await self._rest.call("amend_attached", effect_follows=True)
        self._engine.amend_attached(request)
        await self._rest.half_trip("amend_attached")

    async def cancel_order(self, symbol: str, client_order_id: str) -> Order | None:
        await self._rest.call("cancel_order", effect_follows=True)
        cancelled = self._engine.cancel(symbol, client_order_id)
        await self._rest.half_trip("cancel_order")
        return cancelled

    async def stream(self, sink: ObjectSendStream[VenueEvent]) -> None:
        await self._stream.serve(sink)

    # -- time ------------------------------------------------------------------------------

    def clock_time(self, ts_ms: int) -> float:
        """anyio clock time of a venue timestamp (to compare with times the caller took)."""
        return self._clock.clock_time(ts_ms)

    def now_ms(self) -> int:
        """Epoch milliseconds, advancing with anyio's clock (virtual under a mock clock)."""
        return self._clock.now_ms()
