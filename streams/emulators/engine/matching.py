"""The emulators' matching engine: one futures account trading linear contracts, one-way mode.

Venue-neutral: the Bybit and Binance fronts parse their own wire requests into `NewOrder`,
call the engine, and turn its `Reject` (a reason, never a venue code) into their venue's
code and message through their own table. The engine publishes snapshots of its own records
(`EmuOrder`, `EmuExecution`, `EmuPosition`) and keeps lagged copies for REST; each front
formats them its venue's way.

It is small and truthful: market orders fill completely at the current price (or in two
halves, with `Faults.split_fill_after`); positions average their entry; reduce-only orders
only ever reduce (a quantity above the position is cut to it, a reduce-only order with nothing
to reduce is refused); a stop-loss attached to an entry becomes the position's stop, and a
take-profit attached beside it the position's take-profit (Bybit tpslMode Full: it closes all
of the position when the price reaches it, under an order of the venue's own with
``stopOrderType`` TakeProfit);
conditional orders trigger when the price crosses them; a close-position conditional order
(Binance ``closePosition=true``) is refused while there is nothing to close (Binance -4509),
closes whatever the position is at trigger and expires when the position is closed by other
means. Client order ids follow the venue's `IdRule`.

Statuses are the engine's own vocabulary (``New``, ``PartiallyFilled``, ``Filled``,
``Cancelled``, ``Untriggered``, ``Triggered``, ``Deactivated``); sides are ``Buy``/``Sell``.

`Engine.truth` is what tests assert against. It never lags.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from posguard.streams.emulators.engine.faults import Faults
from posguard.streams.emulators.engine.instruments import DEFAULT_INSTRUMENTS, Instrument
from posguard.streams.venue.liquidation import DEFAULT_LEVERAGE

__all__ = [
    "EmuExecution",
    "EmuOrder",
    "EmuPosition",
    "Engine",
    "IdRule",
    "LEVERAGE",
    "NewOrder",
    "Publish",
    "RECENT_CLOSED",
    "Reject",
    "RejectReason",
    "TAKER_FEE",
    "fmt",
    "now_ms",
]

TAKER_FEE = 0.00055
LEVERAGE = DEFAULT_LEVERAGE
RECENT_CLOSED = 500
"""Closed orders that Bybit's ``/v5/order/realtime`` still lists (Bybit keeps the latest 500;
after a Bybit restart it lists none until new ones close: set `Engine.recent_closed_limit` to 0)."""

Publish = Callable[[str, Any], None]
"""``(topic, record)``: topic ``order`` (an `EmuOrder` copy), ``execution`` (`EmuExecution`),
``position`` (an `EmuPosition` copy) or ``position_touched`` (a position copy, unchanged,
republished because one of its orders changed: Bybit pushes it, Binance does not)."""

IdRule = Literal["forever", "open_only"]
"""``forever``: a client order id can be used once (Bybit ``orderLinkId``, retCode 110072).
``open_only``: unique among the *open* orders of the same book only (Binance
``newClientOrderId`` / ``clientAlgoId``: "A unique id among open orders. Automatically
generated if not sent." on https://developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api
and .../trade/rest-api/New-Algo-Order), so a filled market order's id can be sent again and
opens a second position. Bybit: https://bybit-exchange.github.io/docs/v5/order/create-order
("orderLinkId ... should be unique"; a repeat is 110072)."""

RejectReason = Literal[
    "bad_symbol", "bad_qty", "qty_step", "qty_min", "qty_max", "duplicate_id", "nothing_to_reduce",
    "would_trigger", "min_notional", "insufficient_margin", "stop_loss_side", "take_profit_side", "not_found",
    "close_position_exists", "too_many_conditionals", "nothing_to_close", "zero_position", "not_modified",
]


class Reject(Exception):
    """A request the venue would refuse, by reason; each front owns reason -> (code, message).

    ``detail`` carries what a front's message may quote (``trigger``, ``price``, ``direction``,
    ``side``, ``min_notional``, ``step``); `key` adds a variant where one reason has two codes.
    """

    def __init__(self, reason: RejectReason, **detail: Any) -> None:
        super().__init__(f"{reason} {detail}")
        self.reason: RejectReason = reason
        self.detail = detail

    @property
    def key(self) -> str:
        variant = self.detail.get("variant")
        return f"{self.reason}:{variant}" if variant else self.reason

    def render(self, table: dict[str, tuple[int, str]]) -> tuple[int, str]:
        """This reject in a front's terms: ``table`` maps `key` (or the bare reason) to
        ``(code, message template)``; numbers are written with `fmt`."""
        code, template = table[self.key] if self.key in table else table[self.reason]
        values = {k: fmt(v) if isinstance(v, float) else v for k, v in self.detail.items()}
        return code, template.format(**values)


def now_ms() -> int:
    return int(time.time() * 1000)


def fmt(value: float, step: str = "0.00000001") -> str:
    """A number as the venues write it: a string, to the instrument's precision."""
    if not value:
        return "0"
    return format(Decimal(repr(value)).quantize(Decimal(step)).normalize(), "f")


@dataclass(frozen=True, kw_only=True)
class NewOrder:
    """A venue-neutral order request, parsed and checked for form by a front."""

    symbol: str
    side: str  # Buy | Sell
    qty: float  # 0.0 with close_position
    client_id: str = ""
    reduce_only: bool = False
    close_on_trigger: bool = False
    stop_loss: float = 0.0
    take_profit: float = 0.0
    trigger_price: float = 0.0
    trigger_direction: int = 0  # 1: rising to the trigger, 2: falling to it
    close_position: bool = False
    working_type: str = ""
    order_type: str = "Market"  # the venue's conditional type for a front to echo (STOP_MARKET, ...)


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
    take_profit: float = 0.0
    cancel_type: str = "UNKNOWN"
    reject_reason: str = "EC_NoError"
    last_price_on_created: float = 0.0
    close_position: bool = False
    working_type: str = ""
    order_type: str = "Market"
    triggered_ms: int = 0
    fill_order_id: str = ""
    """For a triggered conditional order: the id of the market order it became (Binance's
    ``actualOrderId``); the engine fills the same record."""

    @property
    def avg_price(self) -> float:
        return self.cum_value / self.cum_qty if self.cum_qty else 0.0

    @property
    def is_open(self) -> bool:
        return self.status in ("New", "PartiallyFilled", "Untriggered")

    @property
    def conditional(self) -> bool:
        return bool(self.trigger_price)


@dataclass
class EmuPosition:
    symbol: str
    side: str = ""  # Buy | Sell | "" (flat)
    size: float = 0.0
    avg_price: float = 0.0
    stop_loss: float = 0.0
    take_profit: float = 0.0
    created_ms: int = 0
    updated_ms: int = 0
    realised_pnl: float = 0.0
    seq: int = 0
    mark_price: float = 0.0
    """The price when this copy was taken (set on published and lagged copies)."""


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
    realised_pnl: float = 0.0
    fee: float = 0.0
    mark_price: float = 0.0


@dataclass
class _Versions:
    """Copies of one record, each visible to REST lists from its own (monotonic) time on."""

    items: list[tuple[float, Any]] = field(default_factory=list)

    def add(self, visible_at: float, record: Any) -> None:
        self.items.append((visible_at, record))

    def read(self, now: float) -> Any | None:
        for index in range(len(self.items) - 1, -1, -1):
            visible_at, record = self.items[index]
            if visible_at <= now:
                del self.items[:index]
                return record
        return None


def uuid_ids() -> Callable[[], str]:
    return lambda: str(uuid.uuid4())


def numeric_ids(start: int) -> Callable[[], str]:
    counter = itertools.count(start)
    return lambda: str(next(counter))


class Engine:
    def __init__(
        self,
        *,
        instruments: tuple[Instrument, ...] = DEFAULT_INSTRUMENTS,
        balance: float = 100_000.0,
        faults: Faults | None = None,
        id_rule: IdRule = "forever",
        new_id: Callable[[], str] | None = None,
        max_open_conditional: int | None = None,
    ) -> None:
        self.instruments = {i.symbol: i for i in instruments}
        self.prices = {i.symbol: i.price for i in instruments}
        self.balance = balance
        self.faults = faults or Faults()
        self.id_rule: IdRule = id_rule
        self.new_id = new_id or uuid_ids()
        self.max_open_conditional = max_open_conditional
        """Open conditional orders allowed in the account, all symbols together (None: no limit)."""
        self.orders: dict[str, EmuOrder] = {}  # by order id, in creation order
        self.positions: dict[str, EmuPosition] = {}
        self.executions: list[EmuExecution] = []
        self.publishers: list[Publish] = []
        self.recent_closed_limit = RECENT_CLOSED
        self._seq = itertools.count(1)
        self._order_views: dict[str, _Versions] = {}
        self._position_views: dict[str, _Versions] = {}
        self._execution_views: list[tuple[float, EmuExecution]] = []

    # -- requests --------------------------------------------------------------------------

    def instrument(self, symbol: object) -> Instrument:
        instrument = self.instruments.get(str(symbol or ""))
        if instrument is None:
            raise Reject("bad_symbol", symbol=str(symbol or ""))
        return instrument

    def qty(self, instrument: Instrument, raw: object) -> float:
        """A quantity as the instrument allows it, else a `Reject`."""
        try:
            qty = Decimal(str(raw))
        except InvalidOperation:
            raise Reject("bad_qty", raw=str(raw)) from None
        if not qty.is_finite():
            raise Reject("bad_qty", raw=str(raw))
        if qty <= 0 or qty % Decimal(instrument.step) != 0:
            raise Reject("qty_step", step=instrument.step)
        if qty < Decimal(instrument.min_qty):
            raise Reject("qty_min", min_qty=instrument.min_qty)
        if qty > Decimal(instrument.max_qty):
            raise Reject("qty_max", max_qty=instrument.max_qty)
        return float(qty)

    def create_order(self, new: NewOrder) -> EmuOrder:
        instrument = self.instrument(new.symbol)
        conditional = bool(new.trigger_price)
        if new.client_id and self.clashes(new.client_id, conditional=conditional):
            raise Reject("duplicate_id", client_id=new.client_id, conditional=conditional)
        price = self.prices[instrument.symbol]
        ts = now_ms()
        order = EmuOrder(
            order_id=self.new_id(), link_id=new.client_id, symbol=instrument.symbol, side=new.side, qty=new.qty,
            reduce_only=new.reduce_only, close_on_trigger=new.close_on_trigger, created_ms=ts, updated_ms=ts,
            stop_loss=new.stop_loss, take_profit=new.take_profit, last_price_on_created=price,
            close_position=new.close_position,
            working_type=new.working_type, order_type=new.order_type,
        )
        if conditional:
            trigger, direction = new.trigger_price, new.trigger_direction
            if direction == 1 and trigger <= price:
                raise Reject("would_trigger", variant="rising", trigger=trigger, price=price)
            if direction == 2 and trigger >= price:
                raise Reject("would_trigger", variant="falling", trigger=trigger, price=price)
            armed = [o for o in self.orders.values() if o.is_open and o.conditional]
            # One per direction and type: a closePosition TAKE_PROFIT_MARKET beside the
            # STOP_MARKET is what Binance's own whole-position TP/SL places (two armed together
            # in a user's report: github.com/Binance-docs/Binance_Futures_python/issues/100).
            if new.close_position and any(
                o.close_position and o.side == new.side and o.symbol == order.symbol
                and o.order_type == new.order_type for o in armed
            ):
                raise Reject("close_position_exists", side=new.side)
            if new.close_position and not self._something_to_close(order):
                raise Reject("nothing_to_close", side=new.side)
            if self.max_open_conditional is not None and len(armed) >= self.max_open_conditional:
                raise Reject("too_many_conditionals", limit=self.max_open_conditional)
            order.trigger_price = trigger
            order.trigger_direction = direction
            order.stop_order_type = "Stop"
            order.status = "Untriggered"
            self._accept(order)
            return order
        self._check_entry(instrument, order, price)
        self._accept(order)
        step = Decimal(instrument.step)
        half = float((Decimal(str(order.qty)) / 2 // step) * step)
        if self.faults.split_fill_after > 0 and not order.reduce_only and half >= float(instrument.min_qty):
            self._execute(order, price, qty=half)
            asyncio.get_running_loop().call_later(self.faults.split_fill_after, self._fill_rest, order)
            return order
        self._execute(order, price)
        return order

    def _something_to_close(self, order: EmuOrder) -> bool:
        """Whether a ``closePosition`` stop has anything to close: a position it would reduce,
        or an open (non-conditional) order on the opposite side that may open one.

        Real Binance refuses a closePosition conditional order when there is neither (-4509
        "Time in Force (TIF) GTE can only be used with open positions or open orders. Please
        ensure that positions are available.", HTTP 400; many independent field reports of
        that message, e.g. ccxt and python-binance users placing a closePosition STOP_MARKET
        while flat). The emulator used to accept it and expire it at trigger."""
        position = self.positions.get(order.symbol)
        if position is not None and position.side and position.side != order.side and position.size > 0:
            return True
        return any(o.symbol == order.symbol and o.is_open and not o.conditional and o.side != order.side
                   for o in self.orders.values())

    def clashes(self, client_id: str, *, conditional: bool) -> bool:
        """Whether ``client_id`` may not be used now, by the venue's `IdRule`."""
        if self.id_rule == "forever":
            return any(o.link_id == client_id for o in self.orders.values())
        return any(o.link_id == client_id and o.is_open and o.conditional == conditional for o in self.orders.values())

    def _fill_rest(self, order: EmuOrder) -> None:
        """The second half of a split entry (`Faults.split_fill_after`), at the price of the moment."""
        if order.status == "PartiallyFilled":
            self._execute(order, self.prices[order.symbol])

    def cancel_order(self, order: EmuOrder | None, symbol: object) -> EmuOrder:
        """Cancel an open order found by the front (`find`)."""
        if order is None or order.symbol != symbol or not order.is_open:
            raise Reject("not_found")
        order.status = "Deactivated" if order.trigger_price else "Cancelled"
        order.cancel_type = "CancelByUser"
        self._order_changed(order)
        self._position_touched(order.symbol)
        return order

    def find(self, order_id: object = None, client_id: object = None, *, conditional: bool | None = None) -> EmuOrder | None:
        """An order by venue id, else the newest with this client id (in one book, if given)."""
        if order_id:
            found = self.orders.get(str(order_id))
            return found if found is not None and conditional in (None, found.conditional) else None
        if client_id:
            for order in reversed(self.orders.values()):
                if order.link_id == str(client_id) and conditional in (None, order.conditional):
                    return order
        return None

    # -- the market ------------------------------------------------------------------------

    def set_price(self, symbol: str, price: float) -> None:
        """Move the last (and mark) price; stops the move crosses trigger and fill at this price."""
        self.instrument(symbol)
        self.prices[symbol] = price
        position = self.positions.get(symbol)
        if position and position.size and position.stop_loss:
            crossed = price <= position.stop_loss if position.side == "Buy" else price >= position.stop_loss
            if crossed:
                self._close_by_system(position, create_type="CreateByStopLoss", stop_order_type="StopLoss",
                                      trigger=position.stop_loss, exec_type="Trade")
        if position and position.size and position.take_profit:
            reached = price >= position.take_profit if position.side == "Buy" else price <= position.take_profit
            if reached:
                self._close_by_system(position, create_type="CreateByTakeProfit", stop_order_type="TakeProfit",
                                      trigger=position.take_profit, exec_type="Trade")
        for order in [o for o in self.orders.values() if o.symbol == symbol and o.status == "Untriggered"]:
            if order.status != "Untriggered":
                continue  # expired by an earlier trigger's close
            crossed = price >= order.trigger_price if order.trigger_direction == 1 else price <= order.trigger_price
            if crossed:
                self._trigger(order, price)

    def set_trading_stop(self, symbol: str, *, stop_loss: float | None, take_profit: float | None) -> EmuPosition:
        """The position's own stop-loss / take-profit changed in place (Bybit's
        ``POST /v5/position/trading-stop`` in Full mode: "This API can be used to modify the
        parameters of existing TP/SL orders"; ``takeProfit`` "0 means cancel TP",
        https://bybit-exchange.github.io/docs/v5/position/trading-stop). None: not given, left
        as it is. Checked against the last price as an entry's attached ones are; refused
        whole, the position keeps what it had."""
        self.instrument(symbol)
        position = self.positions.get(symbol)
        if position is None or not position.size:
            raise Reject("zero_position")
        price = self.prices[symbol]
        if stop_loss:
            if position.side == "Buy" and stop_loss >= price:
                raise Reject("stop_loss_side", variant="Buy", stop_loss=stop_loss, price=price)
            if position.side == "Sell" and stop_loss <= price:
                raise Reject("stop_loss_side", variant="Sell", stop_loss=stop_loss, price=price)
        if take_profit:
            if position.side == "Buy" and take_profit <= price:
                raise Reject("take_profit_side", variant="Buy", take_profit=take_profit, price=price)
            if position.side == "Sell" and take_profit >= price:
                raise Reject("take_profit_side", variant="Sell", take_profit=take_profit, price=price)
        new_stop = position.stop_loss if stop_loss is None else stop_loss
        new_take_profit = position.take_profit if take_profit is None else take_profit
        if (new_stop, new_take_profit) == (position.stop_loss, position.take_profit):
            raise Reject("not_modified")
        position.stop_loss, position.take_profit = new_stop, new_take_profit
        self._position_changed(position)
        return position

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
                raise Reject("nothing_to_reduce")
            order.qty = min(order.qty, held)  # a reduce-only quantity is cut to the position
            return
        increase = order.qty - (held if opposite else 0.0)
        if increase > 0 and increase * price < float(instrument.min_notional):
            raise Reject("min_notional", min_notional=instrument.min_notional)
        if increase > 0 and increase * price / LEVERAGE > self.available_balance():
            raise Reject("insufficient_margin")
        if order.stop_loss:
            if order.side == "Buy" and order.stop_loss >= price:
                raise Reject("stop_loss_side", variant="Buy", stop_loss=order.stop_loss, price=price)
            if order.side == "Sell" and order.stop_loss <= price:
                raise Reject("stop_loss_side", variant="Sell", stop_loss=order.stop_loss, price=price)
        if order.take_profit:
            if order.side == "Buy" and order.take_profit <= price:
                raise Reject("take_profit_side", variant="Buy", take_profit=order.take_profit, price=price)
            if order.side == "Sell" and order.take_profit >= price:
                raise Reject("take_profit_side", variant="Sell", take_profit=order.take_profit, price=price)

    def available_balance(self) -> float:
        used = sum(p.size * p.avg_price / LEVERAGE for p in self.positions.values() if p.size)
        return self.balance - used

    def _accept(self, order: EmuOrder) -> None:
        self.orders[order.order_id] = order
        self._order_changed(order)

    def _execute(self, order: EmuOrder, price: float, exec_type: str = "Trade", *, qty: float | None = None) -> None:
        """Fill ``qty`` of ``order`` (all that is left by default) at ``price`` against the
        one-way position."""
        position = self.positions.setdefault(order.symbol, EmuPosition(symbol=order.symbol, created_ms=now_ms()))
        qty = round(order.qty - order.cum_qty, 12) if qty is None else qty
        closed = 0.0
        pnl = 0.0
        if position.side and position.side != order.side:
            closed = min(qty, position.size)
            pnl = (price - position.avg_price) * closed * (1 if position.side == "Buy" else -1)
            position.realised_pnl += pnl
            self.balance += pnl
            position.size = round(position.size - closed, 12)
            if position.size <= 0:
                position.side, position.size, position.avg_price, position.stop_loss = "", 0.0, 0.0, 0.0
                position.take_profit = 0.0
        opened = round(qty - closed, 12)
        if opened > 0 and not order.reduce_only:
            total = position.size + opened
            position.avg_price = (position.avg_price * position.size + price * opened) / total
            position.size = total
            position.side = order.side
            if order.stop_loss:
                position.stop_loss = order.stop_loss  # Bybit tpslMode Full: the position's stop
            if order.take_profit:
                position.take_profit = order.take_profit  # and its take-profit
        fee = qty * price * TAKER_FEE
        self.balance -= fee
        ts = now_ms()
        seq = next(self._seq)
        position.updated_ms = ts
        position.seq = seq
        order.cum_qty = round(order.cum_qty + qty, 12)
        order.cum_value += qty * price
        order.status = "Filled" if order.cum_qty >= order.qty else "PartiallyFilled"
        order.updated_ms = ts
        execution = EmuExecution(
            exec_id=self.new_id(), order=order, side=order.side, price=price, qty=qty, exec_type=exec_type,
            time_ms=ts, closed_size=closed, leaves_qty=round(order.qty - order.cum_qty, 12), seq=seq,
            realised_pnl=pnl, fee=fee, mark_price=self.prices[order.symbol],
        )
        self.executions.append(execution)
        self._order_changed(order)
        self._execution_added(execution)
        self._position_changed(position)
        if not position.size:
            self._expire_close_position_orders(order.symbol, but=order)

    def _expire_close_position_orders(self, symbol: str, *, but: EmuOrder) -> None:
        """Binance cancels a ``closePosition`` stop once its position is closed by other means."""
        for other in [o for o in self.orders.values() if o.symbol == symbol and o.close_position and o.is_open]:
            if other is not but:
                other.status = "Deactivated"
                other.cancel_type = "CancelByPositionClosed"
                other.updated_ms = now_ms()
                self._order_changed(other)

    def _trigger(self, order: EmuOrder, price: float) -> None:
        order.status = "Triggered"
        order.updated_ms = order.triggered_ms = now_ms()
        position = self.positions.get(order.symbol)
        reduces = bool(position and position.side and position.side != order.side)
        if (order.reduce_only or order.close_position) and not reduces:
            self._order_changed(order)  # triggered, but no order reaches the book
            order.status = "Deactivated"
            order.reject_reason = "EC_ReduceOnlySetButNotReducing"
            order.cancel_type = "CancelByPositionClosed" if order.close_position else order.cancel_type
            self._order_changed(order)
            return
        order.fill_order_id = self.new_id()
        if order.close_position and position is not None:
            order.qty = position.size  # the whole position, whatever its size now
        self._order_changed(order)
        if order.reduce_only and position is not None:
            order.qty = min(order.qty, position.size)
        self._execute(order, price)

    def _close_by_system(self, position: EmuPosition, *, create_type: str, stop_order_type: str,
                         trigger: float, exec_type: str) -> None:
        """A position stop or a liquidation: the venue's own order, with no client id."""
        ts = now_ms()
        order = EmuOrder(
            order_id=self.new_id(), link_id="", symbol=position.symbol,
            side="Sell" if position.side == "Buy" else "Buy", qty=position.size, reduce_only=True,
            close_on_trigger=True, created_ms=ts, updated_ms=ts, trigger_price=trigger,
            stop_order_type=stop_order_type, create_type=create_type,
            last_price_on_created=self.prices[position.symbol],
        )
        self.orders[order.order_id] = order
        self._execute(order, self.prices[position.symbol], exec_type=exec_type)

    # -- publication and REST views --------------------------------------------------------

    def _order_changed(self, order: EmuOrder) -> None:
        snapshot = copy.copy(order)
        self._order_views.setdefault(order.order_id, _Versions()).add(time.monotonic() + self.faults.order_list_lag, snapshot)
        self._publish("order", snapshot)

    def _execution_added(self, execution: EmuExecution) -> None:
        self._execution_views.append((time.monotonic() + self.faults.execution_list_lag, execution))
        self._publish("execution", execution)

    def _position_snapshot(self, position: EmuPosition) -> EmuPosition:
        snapshot = copy.copy(position)
        snapshot.mark_price = self.prices[position.symbol]
        return snapshot

    def _position_changed(self, position: EmuPosition) -> None:
        snapshot = self._position_snapshot(position)
        self._position_views.setdefault(position.symbol, _Versions()).add(
            time.monotonic() + self.faults.position_list_lag, snapshot
        )
        self._publish("position", snapshot)

    def _position_touched(self, symbol: str) -> None:
        position = self.positions.get(symbol)
        if position is not None:
            self._publish("position_touched", self._position_snapshot(position))

    def _publish(self, topic: str, record: Any) -> None:
        for publish in self.publishers:
            publish(topic, record)

    def order_list(self) -> list[EmuOrder]:
        """Orders as REST sees them now (lagged copies), newest first."""
        now = time.monotonic()
        visible = (self._order_views[o].read(now) for o in reversed(self.orders) if o in self._order_views)
        return [o for o in visible if o is not None]

    def position_list(self, symbol: str | None = None) -> list[EmuPosition]:
        """Positions as REST sees them now (lagged copies; flat ones included): every symbol's,
        or ``symbol``'s alone (read from its own view: one symbol costs the same at any size)."""
        now = time.monotonic()
        views = self._position_views.values() if symbol is None else filter(None, [self._position_views.get(symbol)])
        visible = (view.read(now) for view in views)
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
                | ({"take_profit": p.take_profit} if p.take_profit else {})
                for s, p in self.positions.items() if p.size
            },
            "orders": [
                {
                    "order_id": o.order_id, "order_link_id": o.link_id, "symbol": o.symbol, "side": o.side,
                    "qty": o.qty, "cum_exec_qty": o.cum_qty, "avg_price": o.avg_price, "status": o.status,
                    "reduce_only": o.reduce_only, "trigger_price": o.trigger_price or None,
                    "trigger_direction": o.trigger_direction, "stop_order_type": o.stop_order_type,
                    "create_type": o.create_type, "stop_loss": o.stop_loss or None,
                    "close_position": o.close_position,
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

    def recent_closed_ids(self) -> set[str]:
        closed = [o.order_id for o in self.orders.values() if not o.is_open]
        return set(closed[-self.recent_closed_limit:]) if self.recent_closed_limit else set()


def parse_bool(value: object) -> bool:
    return value is True or str(value).lower() == "true"
