"""What the streams have pushed, kept in memory for the actors to wait on.

The board keeps every event it is given whether or not anyone is waiting, so a fill that is
pushed before the create-order response returns is found the moment the actor looks (the seed
bot would have missed it: it only looked after sleeping). Waiters are woken on any change to
their symbol and on any change of stream health, so an actor waiting for a push switches to
REST the instant the stream drops rather than at its push deadline.

Bounded: per-symbol executions are capped, and order entries are dropped on `forget` (when the
actor is done with a client order id) or oldest-first past `max_orders`.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable

import anyio
import msgspec

from posguard.streams.venue.events import (
    TOPICS,
    Execution,
    Heartbeat,
    Order,
    Position,
    StreamStatus,
    Topic,
    VenueEvent,
)

__all__ = ["BoardStatistics", "EvidenceBoard", "newer_order", "newer_position"]

_STATUS_RANK = {"open": 0, "partially_filled": 1, "filled": 2, "cancelled": 2, "rejected": 2}


def newer_order(current: Order | None, candidate: Order) -> Order:
    """Pushes arrive out of order; keep the most advanced state of an order."""
    if current is None:
        return candidate
    key_current = (_STATUS_RANK[current.status], current.filled, current.ts_ms)
    key_candidate = (_STATUS_RANK[candidate.status], candidate.filled, candidate.ts_ms)
    return candidate if key_candidate >= key_current else current


def newer_position(current: Position | None, candidate: Position) -> Position:
    """Of two snapshots of one symbol's position, the one that tells its later state.

    Pushes arrive out of order and REST lists lag, so arrival order says nothing. Bybit stamps
    every position change with a cross sequence (``seq``): when both snapshots carry one, it
    decides, whatever their timestamps say (two changes in one millisecond, a REST answer
    stamped later than the push it lags behind). The timestamp breaks a tie (Bybit: a change
    of settings keeps the ``seq`` of the last fill) and decides alone when either lacks a
    ``seq`` (Binance has none). On a full tie the candidate wins: it is the same state, heard
    later.
    """
    if current is None:
        return candidate
    if current.seq and candidate.seq:
        newer = (candidate.seq, candidate.ts_ms) >= (current.seq, current.ts_ms)
    else:
        newer = candidate.ts_ms >= current.ts_ms
    return candidate if newer else current


class _Ring:
    """One symbol's newest executions, oldest first, with their ids in a set: a duplicate push
    (the stream and a REST sweep both tell a fill) is found by one lookup, not a scan."""

    __slots__ = ("ids", "items")

    def __init__(self, size: int) -> None:
        self.items: deque[Execution] = deque(maxlen=size)
        self.ids: set[str] = set()

    def add(self, execution: Execution) -> bool:
        """Keep ``execution`` unless its id is already kept; True if it was new."""
        if execution.exec_id in self.ids:
            return False
        items = self.items
        if items and len(items) == items.maxlen:
            self.ids.discard(items[0].exec_id)
        items.append(execution)
        self.ids.add(execution.exec_id)
        return True


class BoardStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What the board holds right now, beside its bounds: the board lives as long as the
    process, so its memory must be seen to stay bounded (metrics, benchmarks, tests)."""

    events_applied: int
    """Events given to `EvidenceBoard.apply` since the board was made."""
    orders: int
    """Client order ids with a pushed order state."""
    fill_ids: int
    """Client order ids with pushed fills."""
    executions: int
    """Executions in all symbols' rings together."""
    execution_symbols: int
    """Symbols with an execution ring."""
    positions: int
    """Symbols with a pushed position (flat ones included)."""
    max_orders: int
    """The bound on `orders` and on `fill_ids`."""
    executions_per_symbol: int
    """The bound on each symbol's ring."""


class EvidenceBoard:
    def __init__(self, *, stale_after: float = 15.0, max_orders: int = 50_000, executions_per_symbol: int = 256) -> None:
        self.stale_after = stale_after
        self.max_orders = max_orders
        """Order states (and, separately, fill lists) kept by client order id; oldest go first."""
        self.executions_per_symbol = executions_per_symbol
        """Executions kept per symbol, by execution id (a duplicate is found by one lookup), oldest first."""
        self._orders: OrderedDict[str, Order] = OrderedDict()
        self._fills: OrderedDict[str, list[Execution]] = OrderedDict()  # by client order id, capped like orders
        self._executions: dict[str, _Ring] = {}  # by symbol
        self._positions: dict[str, Position] = {}
        self._connected: dict[str, bool] = dict.fromkeys(TOPICS, False)
        self._last_seen: dict[str, float] = dict.fromkeys(TOPICS, -math.inf)
        self._changed: dict[str, anyio.Event] = {}
        self._health_changed = anyio.Event()
        self._events_applied = 0

    # -- intake ----------------------------------------------------------------------------

    def apply(self, event: VenueEvent) -> None:
        self._events_applied += 1
        match event:
            case Order():
                self._seen("orders")
                if event.client_order_id:
                    previous = self._orders.get(event.client_order_id)
                    self._orders[event.client_order_id] = newer_order(previous, event)
                    if previous is None and len(self._orders) > self.max_orders:
                        self._orders.popitem(last=False)
                self._wake(event.symbol)
            case Execution():
                self._seen("executions")
                ring = self._executions.get(event.symbol)
                if ring is None:
                    ring = self._executions[event.symbol] = _Ring(self.executions_per_symbol)
                if ring.add(event):
                    if event.client_order_id:
                        fills = self._fills.get(event.client_order_id)
                        if fills is None:
                            fills = self._fills[event.client_order_id] = []
                            if len(self._fills) > self.max_orders:
                                self._fills.popitem(last=False)  # ids of other tools, old stops
                        fills.append(event)
                self._wake(event.symbol)
            case Position():
                self._seen("positions")
                self._positions[event.symbol] = newer_position(self._positions.get(event.symbol), event)
                self._wake(event.symbol)
            case StreamStatus():
                was_healthy = self.is_healthy()
                self._connected[event.topic] = event.connected
                if event.connected:
                    self._last_seen[event.topic] = anyio.current_time()
                if was_healthy != self.is_healthy() or not event.connected:
                    self._wake_all()
            case Heartbeat():
                self._seen(event.topic)

    def preload_executions(self, symbol: str, executions: Iterable[Execution]) -> None:
        """Start ``symbol``'s execution ring with ``executions`` (oldest first; only the newest
        `executions_per_symbol` are kept), replacing what it held, as if they had been pushed
        long ago: not counted, nobody woken, stream health untouched, not indexed as fills of
        a client order id. For benchmarks and tests that need a long-running board's steady
        state (full rings) without replaying
        every push through `apply`."""
        ring = self._executions[symbol] = _Ring(self.executions_per_symbol)
        for execution in executions:
            ring.add(execution)

    def forget_positions(self) -> None:
        """Drop every pushed position, as if the positions stream had never spoken: what a
        board knows after a restart, before the first push. Nobody is woken (nothing new was
        learned). Tests use it to stage "no push said anything" about a position."""
        self._positions.clear()

    def _seen(self, topic: Topic) -> None:
        self._last_seen[topic] = anyio.current_time()

    def _wake(self, symbol: str) -> None:
        event = self._changed.pop(symbol, None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        for event in self._changed.values():
            event.set()
        self._changed.clear()
        self._health_changed.set()
        self._health_changed = anyio.Event()

    # -- queries ---------------------------------------------------------------------------

    def order(self, client_order_id: str) -> Order | None:
        return self._orders.get(client_order_id)

    def fills(self, client_order_id: str) -> list[Execution]:
        return list(self._fills.get(client_order_id, ()))

    def executions(self, symbol: str, since_ms: int = 0) -> list[Execution]:
        ring = self._executions.get(symbol)
        return [e for e in ring.items if e.ts_ms >= since_ms] if ring is not None else []

    def position(self, symbol: str) -> Position | None:
        """The latest pushed position (size 0 when the venue pushed "flat"), or None."""
        return self._positions.get(symbol)

    def statistics(self) -> BoardStatistics:
        return BoardStatistics(
            events_applied=self._events_applied,
            orders=len(self._orders),
            fill_ids=len(self._fills),
            executions=sum(len(ring.items) for ring in self._executions.values()),
            execution_symbols=len(self._executions),
            positions=len(self._positions),
            max_orders=self.max_orders,
            executions_per_symbol=self.executions_per_symbol,
        )

    def is_healthy(self) -> bool:
        """All private topics connected and heard from within ``stale_after`` seconds."""
        now = anyio.current_time()
        return all(
            self._connected[t] and now - self._last_seen[t] < self.stale_after for t in TOPICS
        )

    def seconds_until_stale(self) -> float:
        """How long the streams stay healthy if nothing more is heard (0 if unhealthy now)."""
        if not self.is_healthy():
            return 0.0
        now = anyio.current_time()
        return max(0.0, min(self._last_seen[t] + self.stale_after - now for t in TOPICS))

    def health(self) -> dict[str, tuple[bool, float]]:
        """Per topic: connected, and seconds since last heard (inf if never)."""
        now = anyio.current_time()
        return {t: (self._connected[t], now - self._last_seen[t]) for t in TOPICS}

    # -- waiting ---------------------------------------------------------------------------

    async def wait_for_change(self, symbol: str) -> None:
        """Return at the next event about ``symbol`` or the next change of stream health."""
        event = self._changed.get(symbol)
        if event is None:
            event = self._changed[symbol] = anyio.Event()
        await event.wait()

    async def wait_for_health_change(self) -> None:
        await self._health_changed.wait()

    def forget(self, *client_order_ids: str) -> None:
        """The actor is done with these orders; their evidence need not be kept."""
        for client_order_id in client_order_ids:
            self._orders.pop(client_order_id, None)
            self._fills.pop(client_order_id, None)
