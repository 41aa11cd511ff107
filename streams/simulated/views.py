"""What the simulated venue's REST reads see: the truth, each change visible only from its time.

Real venues serve REST reads from caches and replicas that catch up with the matching engine
late, and not all at the same pace: a fill can be in the pushed stream, in the executions and
not yet in the position list. These views are that lag, one per kind of read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from posguard.streams.venue.events import Execution, Order, Position

__all__ = ["LaggedView", "RestViews"]

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


class RestViews:
    """The lagged versions behind each REST read, and the symbols a test hides from the list.

    Hiding a symbol models a position list that leaves out an open position for a while (a
    venue's replica behind, or a query that filters differently), without touching the truth.
    """

    def __init__(self) -> None:
        self._positions: dict[str, LaggedView[Position]] = {}
        self._orders: dict[str, LaggedView[Order]] = {}
        self._executions: list[tuple[float, Execution]] = []
        self._hidden_positions: set[str] = set()

    def add_position(self, visible_at: float, position: Position) -> None:
        self._positions.setdefault(position.symbol, LaggedView()).add(visible_at, position)

    def add_order(self, visible_at: float, order: Order) -> None:
        self._orders.setdefault(order.client_order_id, LaggedView()).add(visible_at, order)

    def add_execution(self, visible_at: float, execution: Execution) -> None:
        self._executions.append((visible_at, execution))

    def hide_position(self, symbol: str) -> None:
        self._hidden_positions.add(symbol)

    def show_position(self, symbol: str) -> None:
        self._hidden_positions.discard(symbol)

    def is_position_hidden(self, symbol: str) -> bool:
        return symbol in self._hidden_positions

    def positions(self, now: float, symbol: str | None = None) -> list[Position]:
        """The position list as REST shows it at ``now``: the account's, or ``symbol``'s alone
        (read from its own view, so one symbol's list costs the same at any account size)."""
        views: Iterable[tuple[str, LaggedView[Position]]] = self._positions.items()
        if symbol is not None:
            own = self._positions.get(symbol)
            views = [] if own is None else [(symbol, own)]
        visible = (view.read(now) for name, view in views if name not in self._hidden_positions)
        return [p for p in visible if p is not None and p.is_open]

    def order(self, symbol: str, client_order_id: str, now: float) -> Order | None:
        view = self._orders.get(client_order_id)
        order = view.read(now) if view is not None else None
        return order if order is not None and order.symbol == symbol else None

    def executions(self, symbol: str, since_ms: int, now: float) -> list[Execution]:
        return [e for at, e in self._executions if at <= now and e.symbol == symbol and e.ts_ms >= since_ms]

    def open_orders(self, symbol: str | None, now: float) -> list[Order]:
        orders = (view.read(now) for view in self._orders.values())
        return [
            o for o in orders if o is not None and o.status == "open" and (symbol is None or o.symbol == symbol)
        ]
