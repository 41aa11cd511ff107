"""The emulator's matching engine: one Bybit UTA account trading linear contracts, one-way mode.

It is small and truthful: market orders fill completely at the current price (or in two
halves, with `Faults.split_fill_after`); positions
average their entry; reduce-only orders only ever reduce (a quantity above the position is
cut to it, a reduce-only order with nothing to reduce is refused); a stop-loss attached to an
entry becomes the position's stop; conditional orders trigger when the price crosses them;
an ``orderLinkId`` can be used once. Every change is published to the WebSocket hub and
becomes visible to REST lists after that list's lag (see `posguard.streams.emulators.bybit.faults`).

`Engine.truth` is what tests assert against. It never lags.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from posguard.streams.emulators.bybit.faults import Faults
from posguard.streams.emulators.bybit.instruments import DEFAULT_INSTRUMENTS, Instrument
from posguard.streams.emulators.bybit.payloads import execution_payload, fmt, order_payload, position_payload
from posguard.streams.venue.liquidation import DEFAULT_LEVERAGE

__all__ = [
    "EmuExecution",
    "EmuOrder",
    "EmuPosition",
    "Engine",
    "LEVERAGE",
    "LINK_ID",
    "Publish",
    "RECENT_CLOSED",
    "TAKER_FEE",
    "VenueReject",
    "now_ms",
]

TAKER_FEE = 0.00055
LEVERAGE = DEFAULT_LEVERAGE
RECENT_CLOSED = 500
"""Closed orders that ``/v5/order/realtime`` still lists (Bybit keeps the latest 500; after a
Bybit restart it lists none until new ones close: set `Engine.recent_closed_limit` to 0)."""
LINK_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}$")

Publish = Callable[[str, dict[str, Any]], None]


class VenueReject(Exception):
    """A request Bybit would refuse, with Bybit's retCode and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class EmuOrder:
    order_id: str
    link_id: str
    symbol: str
    side: str  # Buy | Sell
    qty: float
    reduce_only: bool
    close_on_trigger: bool
    created_ms: int
    updated_ms: int
    status: str = "New"
    cum_qty: float = 0.0
    cum_value: float = 0.0
    trigger_price: float = 0.0
    trigger_direction: int = 0
    stop_order_type: str = ""
    create_type: str = "CreateByUser"
    stop_loss: float = 0.0
    cancel_type: str = "UNKNOWN"
    reject_reason: str = "EC_NoError"
    last_price_on_created: float = 0.0

    @property
    def avg_price(self) -> float:
        return self.cum_value / self.cum_qty if self.cum_qty else 0.0

    @property
    def is_open(self) -> bool:
        return self.status in ("New", "PartiallyFilled", "Untriggered")


@dataclass
class EmuPosition:
    symbol: str
    side: str = ""  # Buy | Sell | "" (flat)
    size: float = 0.0
    avg_price: float = 0.0
    stop_loss: float = 0.0
    created_ms: int = 0
    updated_ms: int = 0
    realised_pnl: float = 0.0
    seq: int = 0


@dataclass
class EmuExecution:
    exec_id: str
    order: EmuOrder
    side: str
    price: float
    qty: float
    exec_type: str
    time_ms: int
    closed_size: float
    leaves_qty: float
    seq: int


@dataclass
class _Versions:
    """Copies of one record, each visible to REST lists from its own (monotonic) time on."""

    items: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def add(self, visible_at: float, payload: dict[str, Any]) -> None:
        self.items.append((visible_at, payload))

    def read(self, now: float) -> dict[str, Any] | None:
        for index in range(len(self.items) - 1, -1, -1):
            visible_at, payload = self.items[index]
            if visible_at <= now:
                del self.items[:index]
                return payload
        return None


class Engine:
    def __init__(
        self,
        *,
        instruments: tuple[Instrument, ...] = DEFAULT_INSTRUMENTS,
        balance: float = 100_000.0,
        faults: Faults | None = None,
    ) -> None:
        self.instruments = {i.symbol: i for i in instruments}
        self.prices = {i.symbol: i.price for i in instruments}
        self.balance = balance
        self.faults = faults or Faults()
        self.orders: dict[str, EmuOrder] = {}  # by order id, in creation order
        self.link_ids: dict[str, str] = {}  # orderLinkId -> order id
        self.positions: dict[str, EmuPosition] = {}
        self.executions: list[EmuExecution] = []
        self.publishers: list[Publish] = []
        self.recent_closed_limit = RECENT_CLOSED
        self._seq = itertools.count(1)
        self._order_views: dict[str, _Versions] = {}
        self._position_views: dict[str, _Versions] = {}
        self._execution_views: list[tuple[float, EmuExecution]] = []

    # -- requests --------------------------------------------------------------------------

    def create_order(self, body: dict[str, Any]) -> EmuOrder:
        if body.get("category") != "linear":
            raise VenueReject(10001, "params error: the emulator lists category=linear only")
        instrument = self._instrument(body.get("symbol"))
        side = body.get("side")
        if side not in ("Buy", "Sell"):
            raise VenueReject(10001, "params error: side invalid")
        if body.get("orderType") != "Market":
            raise VenueReject(10001, "params error: the emulator supports orderType=Market only")
        if int(body.get("positionIdx") or 0) != 0:
            raise VenueReject(10001, "position idx not match position mode")
        qty = self._qty(instrument, body.get("qty"))
        link_id = str(body.get("orderLinkId") or "")
        if link_id and not LINK_ID.match(link_id):
            raise VenueReject(10001, "params error: orderLinkId invalid")
        if link_id and link_id in self.link_ids:
            raise VenueReject(110072, "OrderLinkedID is duplicate")
        reduce_only = _bool(body.get("reduceOnly"))
        price = self.prices[instrument.symbol]
        trigger = _num(body.get("triggerPrice"))
        stop_loss = _num(body.get("stopLoss"))
        if reduce_only and stop_loss:
            raise VenueReject(10001, "params error: TP/SL cannot be set on a reduce-only order")
        ts = now_ms()
        order = EmuOrder(
            order_id=str(uuid.uuid4()),
            link_id=link_id,
            symbol=instrument.symbol,
            side=side,
            qty=qty,
            reduce_only=reduce_only,
            close_on_trigger=_bool(body.get("closeOnTrigger")),
            created_ms=ts,
            updated_ms=ts,
            stop_loss=stop_loss,
            last_price_on_created=price,
        )
        if trigger:
            direction = int(body.get("triggerDirection") or 0)
            if direction == 1 and trigger <= price:
                raise VenueReject(110092, f"expect Rising, but trigger_price[{fmt(trigger)}] <= current[{fmt(price)}]??LastPrice")
            if direction == 2 and trigger >= price:
                raise VenueReject(110093, f"expect Falling, but trigger_price[{fmt(trigger)}] >= current[{fmt(price)}]??LastPrice")
            if direction not in (1, 2):
                raise VenueReject(10001, "params error: triggerDirection must be 1 or 2")
            order.trigger_price = trigger
            order.trigger_direction = direction
            order.stop_order_type = "Stop"
            order.status = "Untriggered"
            self._accept(order)
            return order
        self._check_entry(instrument, order, price)
        self._accept(order)
        step = Decimal(instrument.step)
        half = float((Decimal(str(qty)) / 2 // step) * step)
        if self.faults.split_fill_after > 0 and not reduce_only and half >= float(instrument.min_qty):
            self._execute(order, price, qty=half)
            asyncio.get_running_loop().call_later(self.faults.split_fill_after, self._fill_rest, order)
            return order
        self._execute(order, price)
        return order

    def _fill_rest(self, order: EmuOrder) -> None:
        """The second half of a split entry (`Faults.split_fill_after`), at the price of the moment."""
        if order.status == "PartiallyFilled":
            self._execute(order, self.prices[order.symbol])

    def cancel_order(self, body: dict[str, Any]) -> EmuOrder:
        order = self._find(body.get("orderId"), body.get("orderLinkId"))
        if order is None or order.symbol != body.get("symbol"):
            raise VenueReject(110001, "order not exists or too late to cancel")
        if not order.is_open:
            raise VenueReject(110001, "order not exists or too late to cancel")
        order.status = "Deactivated" if order.trigger_price else "Cancelled"
        order.cancel_type = "CancelByUser"
        self._order_changed(order)
        self._position_touched(order.symbol)  # Bybit pushes the position on every order change
        return order

    # -- the market ------------------------------------------------------------------------

    def set_price(self, symbol: str, price: float) -> None:
        """Move the last price; stops the move crosses trigger and fill at this price."""
        self._instrument(symbol)
        self.prices[symbol] = price
        position = self.positions.get(symbol)
        if position and position.size and position.stop_loss:
            crossed = price <= position.stop_loss if position.side == "Buy" else price >= position.stop_loss
            if crossed:
                self._close_by_system(position, create_type="CreateByStopLoss", stop_order_type="StopLoss",
                                      trigger=position.stop_loss, exec_type="Trade")
        for order in [o for o in self.orders.values() if o.symbol == symbol and o.status == "Untriggered"]:
            crossed = price >= order.trigger_price if order.trigger_direction == 1 else price <= order.trigger_price
            if crossed:
                self._trigger(order, price)

    def liquidate(self, symbol: str) -> None:
        position = self.positions.get(symbol)
        if position and position.size:
            self._close_by_system(position, create_type="CreateByLiq", stop_order_type="", trigger=0.0,
                                  exec_type="BustTrade")

    # -- matching --------------------------------------------------------------------------

    def _check_entry(self, instrument: Instrument, order: EmuOrder, price: float) -> None:
        position = self.positions.get(order.symbol)
        held = position.size if position and position.side else 0.0
        opposite = bool(position and position.side and position.side != order.side)
        if order.reduce_only:
            if not held or not opposite:
                raise VenueReject(110017, "current position is zero, cannot fix reduce-only order qty")
            order.qty = min(order.qty, held)  # Bybit cuts a reduce-only quantity to the position
            return
        increase = order.qty - (held if opposite else 0.0)
        if increase > 0 and increase * price < float(instrument.min_notional):
            raise VenueReject(110094, f"Order does not meet minimum order value {instrument.min_notional}USDT")
        if increase > 0 and increase * price / LEVERAGE > self.available_balance():
            raise VenueReject(110007, "ab not enough for new order")
        if order.stop_loss:
            if order.side == "Buy" and order.stop_loss >= price:
                raise VenueReject(10001, f"StopLoss:{fmt(order.stop_loss)} set for Buy position should lower than base_price:{fmt(price)}??LastPrice")
            if order.side == "Sell" and order.stop_loss <= price:
                raise VenueReject(10001, f"StopLoss:{fmt(order.stop_loss)} set for Sell position should higher than base_price:{fmt(price)}??LastPrice")

    def available_balance(self) -> float:
        used = sum(p.size * p.avg_price / LEVERAGE for p in self.positions.values() if p.size)
        return self.balance - used

    def _accept(self, order: EmuOrder) -> None:
        self.orders[order.order_id] = order
        if order.link_id:
            self.link_ids[order.link_id] = order.order_id
        self._order_changed(order)

    def _execute(self, order: EmuOrder, price: float, exec_type: str = "Trade", *, qty: float | None = None) -> None:
        """Fill ``qty`` of ``order`` (all that is left by default) at ``price`` against the
        one-way position."""
        position = self.positions.setdefault(order.symbol, EmuPosition(symbol=order.symbol, created_ms=now_ms()))
        qty = round(order.qty - order.cum_qty, 12) if qty is None else qty
        closed = 0.0
        if position.side and position.side != order.side:
            closed = min(qty, position.size)
            pnl = (price - position.avg_price) * closed * (1 if position.side == "Buy" else -1)
            position.realised_pnl += pnl
            self.balance += pnl
            position.size = round(position.size - closed, 12)
            if position.size <= 0:
                position.side, position.size, position.avg_price, position.stop_loss = "", 0.0, 0.0, 0.0
        opened = round(qty - closed, 12)
        if opened > 0 and not order.reduce_only:
            total = position.size + opened
            position.avg_price = (position.avg_price * position.size + price * opened) / total
            position.size = total
            position.side = order.side
            if order.stop_loss:
                position.stop_loss = order.stop_loss  # tpslMode Full: the position's stop
        self.balance -= qty * price * TAKER_FEE
        ts = now_ms()
        seq = next(self._seq)
        position.updated_ms = ts
        position.seq = seq
        order.cum_qty = round(order.cum_qty + qty, 12)
        order.cum_value += qty * price
        order.status = "Filled" if order.cum_qty >= order.qty else "PartiallyFilled"
        order.updated_ms = ts
        execution = EmuExecution(
            exec_id=str(uuid.uuid4()), order=order, side=order.side, price=price, qty=qty, exec_type=exec_type,
            time_ms=ts, closed_size=closed, leaves_qty=round(order.qty - order.cum_qty, 12), seq=seq,
        )
        self.executions.append(execution)
        self._order_changed(order)
        self._execution_added(execution)
        self._position_changed(position)

    def _trigger(self, order: EmuOrder, price: float) -> None:
        order.status = "Triggered"
        order.updated_ms = now_ms()
        self._order_changed(order)
        position = self.positions.get(order.symbol)
        reduces = bool(position and position.side and position.side != order.side)
        if order.reduce_only and not reduces:
            order.status = "Deactivated"
            order.reject_reason = "EC_ReduceOnlySetButNotReducing"
            self._order_changed(order)
            return
        if order.reduce_only and position is not None:
            order.qty = min(order.qty, position.size)
        self._execute(order, price)

    def _close_by_system(self, position: EmuPosition, *, create_type: str, stop_order_type: str,
                         trigger: float, exec_type: str) -> None:
        """A position stop or a liquidation: the venue's own order, with no orderLinkId."""
        ts = now_ms()
        order = EmuOrder(
            order_id=str(uuid.uuid4()), link_id="", symbol=position.symbol,
            side="Sell" if position.side == "Buy" else "Buy", qty=position.size, reduce_only=True,
            close_on_trigger=True, created_ms=ts, updated_ms=ts, trigger_price=trigger,
            stop_order_type=stop_order_type, create_type=create_type,
            last_price_on_created=self.prices[position.symbol],
        )
        self.orders[order.order_id] = order
        self._execute(order, self.prices[position.symbol], exec_type=exec_type)

    # -- publication and REST views --------------------------------------------------------

    def _order_changed(self, order: EmuOrder) -> None:
        payload = order_payload(order, self.instruments[order.symbol])
        self._order_views.setdefault(order.order_id, _Versions()).add(time.monotonic() + self.faults.order_list_lag, payload)
        self._publish("order", payload)

    def _execution_added(self, execution: EmuExecution) -> None:
        self._execution_views.append((time.monotonic() + self.faults.execution_list_lag, execution))
        self._publish("execution", execution_payload(execution, self.instruments[execution.order.symbol], self.prices))

    def _position_changed(self, position: EmuPosition) -> None:
        payload = position_payload(position, self.instruments[position.symbol], self.prices[position.symbol])
        self._position_views.setdefault(position.symbol, _Versions()).add(
            time.monotonic() + self.faults.position_list_lag, payload
        )
        self._publish("position", payload)

    def _position_touched(self, symbol: str) -> None:
        position = self.positions.get(symbol)
        if position is not None:
                self._publish("position", position_payload(position, self.instruments[symbol], self.prices[symbol]))

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        for publish in self.publishers:
            publish(topic, payload)

    def order_list(self) -> list[dict[str, Any]]:
        """Orders as REST sees them now (lagged), newest first."""
        now = time.monotonic()
        visible = (self._order_views[o].read(now) for o in reversed(self.orders) if o in self._order_views)
        return [p for p in visible if p is not None]

    def position_list(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        visible = (view.read(now) for view in self._position_views.values())
        return [p for p in visible if p is not None]

    def execution_list(self) -> list[EmuExecution]:
        """Fills as REST sees them now (lagged), newest first."""
        now = time.monotonic()
        return [e for at, e in reversed(self._execution_views) if at <= now]

    # -- ground truth ----------------------------------------------------------------------

    def truth(self) -> dict[str, Any]:
        """Everything as it really is, for tests: no lag, no faults."""
        return {
            "prices": dict(self.prices),
            "balance": self.balance,
            "positions": {
                s: {"side": p.side, "size": p.size, "avg_price": p.avg_price, "stop_loss": p.stop_loss or None}
                for s, p in self.positions.items() if p.size
            },
            "orders": [
                {
                    "order_id": o.order_id, "order_link_id": o.link_id, "symbol": o.symbol, "side": o.side,
                    "qty": o.qty, "cum_exec_qty": o.cum_qty, "avg_price": o.avg_price, "status": o.status,
                    "reduce_only": o.reduce_only, "trigger_price": o.trigger_price or None,
                    "trigger_direction": o.trigger_direction, "stop_order_type": o.stop_order_type,
                    "create_type": o.create_type, "stop_loss": o.stop_loss or None,
                }
                for o in self.orders.values()
            ],
            "executions": [
                {
                    "exec_id": e.exec_id, "order_id": e.order.order_id, "order_link_id": e.order.link_id,
                    "symbol": e.order.symbol, "side": e.side, "qty": e.qty, "price": e.price,
                    "exec_type": e.exec_type, "time_ms": e.time_ms,
                }
                for e in self.executions
            ],
        }

    # -- helpers ---------------------------------------------------------------------------

    def _instrument(self, symbol: object) -> Instrument:
        instrument = self.instruments.get(str(symbol or ""))
        if instrument is None:
            raise VenueReject(10001, "params error: symbol invalid")
        return instrument

    def _qty(self, instrument: Instrument, raw: object) -> float:
        try:
            qty = Decimal(str(raw))
        except InvalidOperation:
            raise VenueReject(10001, "params error: qty invalid") from None
        if qty <= 0 or qty % Decimal(instrument.step) != 0:
            raise VenueReject(10001, f"Qty invalid: must be a positive multiple of {instrument.step}")
        if qty < Decimal(instrument.min_qty):
            raise VenueReject(10001, "The number of contracts exceeds minimum limit allowed")
        if qty > Decimal(instrument.max_qty):
            raise VenueReject(10001, "The number of contracts exceeds maximum limit allowed")
        return float(qty)

    def _find(self, order_id: object, link_id: object) -> EmuOrder | None:
        if order_id:
            return self.orders.get(str(order_id))
        if link_id:
            found = self.link_ids.get(str(link_id))
            return self.orders.get(found) if found else None
        return None

    def recent_closed_ids(self) -> set[str]:
        closed = [o.order_id for o in self.orders.values() if not o.is_open]
        return set(closed[-self.recent_closed_limit:]) if self.recent_closed_limit else set()


def _bool(value: object) -> bool:
    return value is True or str(value).lower() == "true"


def _num(value: object) -> float:
    try:
        return float(value) if value not in (None, "") else 0.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise VenueReject(10001, f"params error: {value!r} is not a number") from None
