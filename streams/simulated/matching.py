"""The simulated venue's matching engine: what an order does to positions, orders and fills.

Market orders fill at the current price (or are rejected, or fill partly), reduce-only orders
close, an opposite order in one-way mode reduces and then flips, stops trigger when the price
crosses them and stop-outs jump through them. Every change lands in the ground truth at once,
then in the lagged REST views and the private stream as the knobs say.
"""

from __future__ import annotations

import itertools
import random

import anyio
import msgspec

from posguard.streams.simulated.clock import VenueClock
from posguard.streams.simulated.knobs import FaultKnobs
from posguard.streams.simulated.private_stream import PrivateStream
from posguard.streams.simulated.rng import KeyedRandom
from posguard.streams.simulated.scheduler import Scheduler
from posguard.streams.simulated.truth import GroundTruth
from posguard.streams.simulated.views import RestViews
from posguard.streams.venue.errors import (
    DuplicateClientOrderId,
    NothingToClose,
    NothingToReduce,
    OrderRejected,
    StopSlotTaken,
    StopWouldTrigger,
    UnknownSymbol,
)
from posguard.streams.venue.events import Execution, Order, OrderSide, Position, PositionSide, closing_side
from posguard.streams.venue.liquidation import DEFAULT_LEVERAGE, estimated_liquidation_price
from posguard.streams.venue.markets import MarketRules
from posguard.streams.venue.protocol import AmendRequest, OrderRequest, StopRequest

__all__ = ["MatchingEngine"]


class MatchingEngine:
    """The venue's books: prices, rules, and every order, fill and position they produce."""

    def __init__(
        self,
        *,
        knobs: FaultKnobs,
        markets: dict[str, tuple[float, MarketRules]],
        supports_attached_stop: bool,
        rng: KeyedRandom,
        clock: VenueClock,
        scheduler: Scheduler,
        stream: PrivateStream,
        views: RestViews,
    ) -> None:
        self._knobs = knobs
        self.rules: dict[str, MarketRules] = {symbol: rules for symbol, (_, rules) in markets.items()}
        self.prices: dict[str, float] = {symbol: price for symbol, (price, _) in markets.items()}
        self.leverage: dict[str, float] = dict.fromkeys(self.rules, DEFAULT_LEVERAGE)
        """The account's leverage per symbol (Bybit's ``leverage`` of ``GET /v5/position/list``)."""
        self._supports_attached_stop = supports_attached_stop
        self.truth = GroundTruth()
        self._rng = rng
        self._clock = clock
        self._scheduler = scheduler
        self._stream = stream
        self._views = views
        self._ids = itertools.count(1)
        self._position_seqs = itertools.count(1)

    # -- what the seam asks for ------------------------------------------------------------

    def rules_for(self, symbol: str) -> MarketRules:
        try:
            return self.rules[symbol]
        except KeyError:
            raise UnknownSymbol(f"{symbol} is not listed on this venue") from None

    def set_price(self, symbol: str, price: float) -> None:
        """Move the market; stops the move crosses are triggered at that price."""
        self.prices[symbol] = price
        self._trigger_stops(symbol)

    def liquidate(self, symbol: str) -> None:
        """Close the whole position by liquidation: an execution with no client order id."""
        position = self.truth.position(symbol)
        if position is not None:
            self._fill_close(symbol, position.size, order_id=f"liq-{next(self._ids)}", client_order_id="")

    def place_stop(self, request: StopRequest) -> Order:
        """A reduce-only stop (or take-profit, `StopRequest.take_profit`), resting until the
        price crosses it: a stop when the price moves against the position, a take-profit when
        it moves in its favour (Binance: a SELL TAKE_PROFIT_MARKET triggers when the price
        rises to it)."""
        rules = self.rules_for(request.symbol)
        self._check_duplicate(request.client_order_id)
        rng = self._rng("stop", request.client_order_id)
        if self._knobs.stop_reject_rate and rng.random() < self._knobs.stop_reject_rate:
            raise OrderRejected("stop order rejected by the venue", code="fake-stop-reject")
        price = self.prices[request.symbol]
        would_trigger = price <= request.stop_price if request.side == "sell" else price >= request.stop_price
        if request.take_profit:
            would_trigger = price >= request.stop_price if request.side == "sell" else price <= request.stop_price
        if would_trigger:
            raise StopWouldTrigger(
                f"stop price {request.stop_price} is on the wrong side of the market {price}",
                code="fake-stop-side",
            )
        whole = request.whole_position and self._knobs.whole_position_stops
        if whole:
            self._check_whole_position_stop(request)
        elif request.qty < rules.min_qty:
            raise OrderRejected(f"qty {request.qty} below minimum {rules.min_qty}", code="fake-min-qty")
        order = Order(
            symbol=request.symbol,
            order_id=f"o{next(self._ids)}",
            client_order_id=request.client_order_id,
            side=request.side,
            kind="take_profit" if request.take_profit else "stop",
            qty=request.qty,
            filled=0.0,
            avg_price=None,
            status="open",
            reduce_only=True,
            stop_price=request.stop_price,
            ts_ms=self._clock.now_ms(),
            closes_position=whole,
        )
        self._record_order(order, self._rng("stop-visibility", request.client_order_id))
        self._update_protection(request.symbol)
        return order

    def amend_attached(self, request: AmendRequest) -> None:
        """The position's own stop-loss / take-profit changed in place, as Bybit's
        ``trading-stop`` does in Full mode (https://bybit-exchange.github.io/docs/v5/position/trading-stop):
        refused when there is no position, or when a price is on the wrong side of the market
        (the position keeps what it had); ``take_profit`` 0 removes it."""
        if not self._supports_attached_stop:
            raise OrderRejected("this venue attaches no stop to a position", code="fake-no-attached")
        position = self.truth.position(request.symbol)
        if position is None or not position.is_open:
            raise OrderRejected("can not set tp/sl/ts for zero position", code="10001")
        price = self.prices[request.symbol]
        long = position.side == "long"
        if request.stop_loss is not None and (price <= request.stop_loss if long else price >= request.stop_loss):
            raise StopWouldTrigger(f"StopLoss {request.stop_loss} set for a {position.side} position must be"
                                   f" {'below' if long else 'above'} the last price {price}", code="10001")
        if request.take_profit and (price >= request.take_profit if long else price <= request.take_profit):
            raise StopWouldTrigger(f"TakeProfit {request.take_profit} set for a {position.side} position must be"
                                   f" {'above' if long else 'below'} the last price {price}", code="10001")
        changed = position
        if request.stop_loss is not None:
            changed = msgspec.structs.replace(changed, stop_price=request.stop_loss)
        if request.take_profit is not None:
            changed = msgspec.structs.replace(changed, take_profit=request.take_profit or None)
        self._set_position(msgspec.structs.replace(changed, ts_ms=self._clock.now_ms()),
                           self._rng("amend", f"{request.symbol}:{self._clock.now_ms()}"))

    def _check_whole_position_stop(self, request: StopRequest) -> None:
        """Binance's rules for a closePosition stop (`FaultKnobs.whole_position_stops`): one per
        direction and type, so a closePosition take-profit may sit beside the stop (Binance's
        own UI places that pair for a whole position's TP/SL; a user's report of the two armed
        together: github.com/Binance-docs/Binance_Futures_python/issues/100)."""
        same_kind = (self.truth.open_take_profits(request.symbol) if request.take_profit
                     else self.truth.open_stops(request.symbol))
        if any(o.closes_position and o.side == request.side for o in same_kind):
            raise StopSlotTaken("An open stop or take profit order with GTE and closePosition in the direction"
                                " is existing.", code="-4130")
        position = self.truth.position(request.symbol)
        if position is None or closing_side(position.side) != request.side:
            # Real Binance: -4509 "Time in Force (TIF) GTE can only be used with open positions or
            # open orders. Please ensure that positions are available." (many field reports);
            # market entries fill at once here, so no open order counts.
            raise NothingToClose("Time in Force (TIF) GTE can only be used with open positions or open orders.",
                                 code="-4509")

    def cancel(self, symbol: str, client_order_id: str) -> Order | None:
        """Cancel an open order; None when there is no open order by that id for the symbol."""
        order = self.truth.orders.get(client_order_id)
        if order is None or order.symbol != symbol or order.status != "open":
            return None
        cancelled = msgspec.structs.replace(order, status="cancelled", ts_ms=self._clock.now_ms())
        self._record_order(cancelled, self._rng("cancel", client_order_id))
        self._update_protection(symbol)
        return cancelled

    # -- matching --------------------------------------------------------------------------

    def market_order(self, request: OrderRequest, rng: random.Random) -> Order:
        """Fill a market order now, at the current price; ``rng`` is the order's own."""
        rules = self.rules_for(request.symbol)
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
                ts_ms=self._clock.now_ms(),
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

        if self._knobs.reject_rate and rng.random() < self._knobs.reject_rate:
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
        if request.take_profit is not None and self._supports_attached_stop:
            wrong_side = request.take_profit <= price if request.side == "buy" else request.take_profit >= price
            if wrong_side:
                self._record_order(final("rejected", 0.0, None), rng)
                raise OrderRejected(
                    f"take-profit {request.take_profit} is on the wrong side of the market {price}",
                    code="fake-tp-side",
                )
        if self._knobs.split_fill_rate and rng.random() < self._knobs.split_fill_rate:
            parts = self._split(rules, request.qty)
            if len(parts) > 1:
                return self._fill_in_parts(request, parts, final(status="partially_filled", filled=0.0, avg=None), rng)
        qty = request.qty
        status = "filled"
        if self._knobs.partial_fill_rate and rng.random() < self._knobs.partial_fill_rate:
            qty = max(rules.min_qty, rules.round_qty(request.qty * rng.uniform(0.2, 0.8)))
            status = "cancelled" if qty < request.qty else "filled"
        order = final(status, qty, price)
        self._record_order(order, rng)
        self._fill_open(request, qty, price, order_id, rng)
        return order

    def _split(self, rules: MarketRules, qty: float) -> list[float]:
        """``qty`` in `FaultKnobs.split_fill_parts` parts on the venue's step (one part if
        a share would be below the minimum)."""
        count = max(1, self._knobs.split_fill_parts)
        share = rules.round_qty(qty / count)
        if share < rules.min_qty:
            return [qty]
        return [share] * (count - 1) + [rules.round_qty(qty - share * (count - 1))]

    def _fill_in_parts(self, request: OrderRequest, parts: list[float], order: Order, rng: random.Random) -> Order:
        """Fill the first part now and the others spread over `FaultKnobs.split_fill_over`;
        returns the order as it stands after the first part."""
        spread = self._knobs.split_fill_over.sample(rng)

        def fill(index: int) -> Order:
            nonlocal order
            price = self.prices[request.symbol]
            filled = order.filled + parts[index]
            avg = ((order.avg_price or 0.0) * order.filled + price * parts[index]) / filled
            last = index == len(parts) - 1
            order = msgspec.structs.replace(
                order, filled=round(filled, 12), avg_price=avg, status="filled" if last else "partially_filled",
                ts_ms=self._clock.now_ms(),
            )
            self._record_order(order, rng)
            self._fill_open(request, parts[index], price, order.order_id, rng)
            return order

        for index in range(1, len(parts)):
            self._scheduler.schedule(spread * index / (len(parts) - 1), lambda index=index: fill(index))
        return fill(0)

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
        take_profit = position.take_profit if position else None
        if request.stop_loss is not None and self._supports_attached_stop:
            missing = self._knobs.attached_stop_missing_rate and rng.random() < self._knobs.attached_stop_missing_rate
            if not missing:
                stop = request.stop_loss
        if request.take_profit is not None and self._supports_attached_stop:
            take_profit = request.take_profit  # Bybit tpslMode=Full: the position holds it, for all its size
        self._set_position(
            Position(symbol=symbol, side=side, size=size, entry_price=entry, stop_price=stop, take_profit=take_profit,
                     ts_ms=self._clock.now_ms()),
            rng,
        )
        self.truth.entries_filled[symbol] += 1
        if self._knobs.stop_out_rate and rng.random() < self._knobs.stop_out_rate:
            self._scheduler.schedule(self._knobs.stop_out_delay.sample(rng), lambda: self._stop_out(symbol))

    def _fill_close(self, symbol: str, qty: float, *, order_id: str, client_order_id: str,
                    by_take_profit: bool = False) -> None:
        position = self.truth.position(symbol)
        if position is None:
            return
        price = self.prices[symbol]
        rng = self._rng("close", f"{order_id}:{client_order_id}")
        self._record_execution(closing_side(position.side), symbol, qty, price, order_id, client_order_id, rng,
                               by_take_profit=by_take_profit)
        remaining = round(position.size - qty, 12)
        if remaining > 0:
            new = msgspec.structs.replace(position, size=remaining, ts_ms=self._clock.now_ms())
        else:
            new = Position(symbol=symbol, side="flat", size=0.0, entry_price=0.0, stop_price=None, ts_ms=self._clock.now_ms())
            for stop in self.truth.open_stops(symbol) + self.truth.open_take_profits(symbol):
                if stop.closes_position:  # Binance cancels a closePosition stop once the position is closed
                    self._record_order(msgspec.structs.replace(stop, status="cancelled", ts_ms=self._clock.now_ms()), rng)
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
            if crossed and self._stop_fills(f"{symbol}@{position.stop_price}"):
                self._fill_close(symbol, position.size, order_id=f"tpsl-{next(self._ids)}", client_order_id="")
        position = self.truth.position(symbol)
        if position is not None and position.take_profit is not None:
            # The position's own take-profit (Bybit Full mode): closes all of it, and its fill
            # says so (the execution's stopOrderType TakeProfit).
            reached = price >= position.take_profit if position.side == "long" else price <= position.take_profit
            if reached:
                self._fill_close(symbol, position.size, order_id=f"tpsl-{next(self._ids)}", client_order_id="",
                                 by_take_profit=True)
        for stop in self.truth.open_stops(symbol) + self.truth.open_take_profits(symbol):
            assert stop.stop_price is not None
            crossed = price <= stop.stop_price if stop.side == "sell" else price >= stop.stop_price
            if stop.kind == "take_profit":
                crossed = price >= stop.stop_price if stop.side == "sell" else price <= stop.stop_price
            if not crossed or not self._stop_fills(stop.client_order_id):
                continue
            position = self.truth.position(symbol)
            rng = self._rng("trigger", stop.client_order_id)
            if position is None or stop.side != closing_side(position.side):
                # Reduce-only with nothing to reduce: the venue cancels it at trigger time.
                self._record_order(msgspec.structs.replace(stop, status="cancelled", ts_ms=self._clock.now_ms()), rng)
                continue
            qty = position.size if stop.closes_position else min(stop.qty, position.size)
            filled = msgspec.structs.replace(stop, status="filled", filled=qty, avg_price=price, ts_ms=self._clock.now_ms())
            self._record_order(filled, rng)
            self._fill_close(symbol, qty, order_id=stop.order_id, client_order_id=stop.client_order_id)
        self._update_protection(symbol)

    def _stop_fills(self, stop_key: str) -> bool:
        """Whether a crossed stop fills, or (`FaultKnobs.stop_fill_fail_rate`) stays armed
        with the position open; the same stop always draws the same answer."""
        rate = self._knobs.stop_fill_fail_rate
        return not rate or self._rng("stop-fill", stop_key).random() >= rate

    # -- bookkeeping: truth, REST views, pushes --------------------------------------------

    def _set_position(self, position: Position, rng: random.Random) -> None:
        """Every position change is stamped here, as a venue stamps it: the mark price it
        happened at, the liquidation price, and a cross sequence (Bybit's ``seq``) that orders
        two changes made in one millisecond, which their timestamps cannot."""
        liq_price = None
        if position.is_open:
            liq_price = estimated_liquidation_price(position.side, position.entry_price, self.leverage[position.symbol])
        position = msgspec.structs.replace(
            position, mark_price=self.prices[position.symbol], liq_price=liq_price, seq=next(self._position_seqs),
        )
        self.truth.positions[position.symbol] = position
        now = anyio.current_time()
        self._views.add_position(now + self._knobs.position_lag.sample(rng), position)
        self._stream.push("positions", position, rng)
        self._update_protection(position.symbol)

    def _record_order(self, order: Order, rng: random.Random) -> None:
        self.truth.orders[order.client_order_id or order.order_id] = order
        if order.client_order_id:
            self._views.add_order(anyio.current_time() + self._knobs.order_lag.sample(rng), order)
        self._stream.push("orders", order, rng)

    def _record_execution(
        self,
        side: OrderSide,
        symbol: str,
        qty: float,
        price: float,
        order_id: str,
        client_order_id: str,
        rng: random.Random,
        *,
        by_take_profit: bool = False,
    ) -> None:
        execution = Execution(
            symbol=symbol,
            exec_id=f"x{next(self._ids)}",
            order_id=order_id,
            client_order_id=client_order_id,
            side=side,
            qty=qty,
            price=price,
            ts_ms=self._clock.now_ms(),
            by_take_profit=by_take_profit,
        )
        self.truth.executions.append(execution)
        self._views.add_execution(anyio.current_time() + self._knobs.execution_lag.sample(rng), execution)
        self._stream.push("executions", execution, rng)

    def _update_protection(self, symbol: str) -> None:
        now = anyio.current_time()
        protected = self.truth.is_protected(symbol)
        since = self.truth.unprotected_since.get(symbol)
        if protected and since is not None:
            del self.truth.unprotected_since[symbol]
            self.truth.unprotected_windows.append((symbol, since, now))
        elif not protected and since is None:
            self.truth.unprotected_since[symbol] = now

    def _check_duplicate(self, client_order_id: str) -> None:
        existing = self.truth.orders.get(client_order_id)
        if existing is None:
            return
        if self._knobs.reject_duplicate_client_ids or existing.status == "open":
            raise DuplicateClientOrderId(client_order_id)
        # Binance-like: the id is free again. Keep the first order's truth under a new key.
        self.truth.orders[f"{client_order_id}#{existing.order_id}"] = existing
