"""`CcxtVenue`: the `Venue` protocol on ccxt.pro, for Bybit and Binance USD-M linear perpetuals.

**asyncio only**: ccxt.pro is built on asyncio and aiohttp, so this adapter runs on anyio's
asyncio backend (production does); it cannot run under trio.

What it guarantees on top of ccxt:

* Bad input is refused before anything is sent (I7): an unknown symbol raises
  `UnknownSymbol`; a quantity that, rounded *down* to the venue's step, is below the venue's
  minimum raises `OrderRejected` with code ``posguard-min-qty``; so does asking Binance to
  attach a stop-loss to an entry (``posguard-no-attached-stop``). `OrderRejected` is the one
  refusal the actor already records as ``rejected`` with nothing placed, which is exactly
  what happened. (Minimum *notional* needs a price a market order does not have; the venue
  checks it and its refusal arrives as `OrderRejected` too.)
* Every ccxt exception is translated (`posguard.streams.ccxt_adapter.errors`); none escapes, and no message
  carries the API key, the secret or a signature.
* ``create_order`` and ``place_stop`` return the venue's acknowledgement. Bybit acknowledges
  with ids only, so the order comes back ``open`` with nothing filled: "accepted, fate not
  yet known". The fill is learned from the stream or from `fetch_order`, never assumed.
* Timestamps are the venue's: the clock offset is measured once at `load_markets` and
  `now_ms` applies it. The measurement errs early by up to half a round trip, which makes
  "executions since I sent" include, never miss, the fill.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import ccxt.async_support as ccxt
import msgspec
from anyio.abc import ObjectSendStream

from posguard.streams.ccxt_adapter.config import ApiCredentials, CcxtVenueConfig, check_loopback
from posguard.streams.ccxt_adapter.dialects import DIALECTS, all_urls
from posguard.streams.ccxt_adapter.errors import clock_rejected, redact, translate
from posguard.streams.ccxt_adapter.mapping import (
    CcxtDict,
    UnmappablePayload,
    is_usdt_linear_perpetual,
    market_rules,
    order_kind,
    to_execution,
    to_order,
    to_position,
)
from posguard.streams.ccxt_adapter.stream import PrivateStream
from posguard.streams.venue.errors import OrderRejected, UnknownSymbol, VenueError, VenueUnavailable
from posguard.streams.venue.events import Execution, Order, OrderSide, Position, Topic, VenueEvent
from posguard.streams.venue.markets import QTY_TOLERANCE, MarketRules
from posguard.streams.venue.protocol import AmendRequest, OrderRequest, StopRequest, UnknownOrderRule

__all__ = ["KNOWN_ORDER_IDS", "CcxtVenue"]

log = logging.getLogger("posguard.ccxt")

T = TypeVar("T")

KNOWN_ORDER_IDS = 50_000
"""Venue order id -> client order id pairs remembered, for venues whose trade listings
carry only the venue's order id (Binance ``userTrades``)."""


class CcxtVenue:
    def __init__(
        self, config: CcxtVenueConfig, credentials: ApiCredentials, *, rng: random.Random | None = None
    ) -> None:
        self._config = config
        self._dialect = DIALECTS[config.exchange]
        self._exchange: Any = self._dialect.build(config, credentials)
        self._secrets = (credentials.api_key, credentials.api_secret)
        self.urls: dict[str, str] = all_urls(self._exchange)
        """Every URL the adapter may contact (REST and WebSocket), for operators and tests."""
        if config.loopback_only:
            check_loopback(self.urls)
        if not any(url.startswith(("https://", "wss://")) for url in self.urls.values()):
            # ccxt waits 250 ms at close so TLS transports can shut down; plain ones need not.
            self._exchange.timeout_on_exit = 0
        self._rng = rng or random.Random()
        self._rules: dict[str, MarketRules] = {}
        self._client_ids: OrderedDict[str, str] = OrderedDict()
        self._symbols_seen: set[str] = set()

    # -- identity and time -----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._config.exchange

    @property
    def exchange(self) -> Any:
        """The underlying ccxt.pro exchange (posguard's hooked subclass), read-only, for tests
        and diagnostics: what ccxt has cached, which clients are open, feeding it a frame.
        Trading through it directly would bypass the adapter's refusals, error translation and
        order-id bookkeeping; use the `Venue` methods for that."""
        return self._exchange

    @property
    def supports_attached_stop(self) -> bool:
        return self._dialect.supports_attached_stop

    @property
    def unknown_order_rule(self) -> UnknownOrderRule:
        return self._dialect.unknown_order_rule(self._config)

    def now_ms(self) -> int:
        return int(self._exchange.milliseconds() - (self._exchange.options.get("timeDifference") or 0))

    # -- markets ---------------------------------------------------------------------------

    async def load_markets(self) -> dict[str, MarketRules]:
        """Linear USDT perpetuals only; loaded from the venue once, then served from memory."""
        if not self._rules:
            markets = await self._call("load_markets", self._exchange.load_markets)
            try:
                self._rules = {
                    m["symbol"]: market_rules(m) for m in markets.values() if is_usdt_linear_perpetual(m)
                }
            except UnmappablePayload as exc:
                raise VenueUnavailable(f"{self.name} load_markets: {exc}") from None
        return dict(self._rules)

    async def _rules_for(self, symbol: str) -> MarketRules:
        if not self._rules:
            await self.load_markets()
        rules = self._rules.get(symbol)
        if rules is None:
            raise UnknownSymbol(
                f"{symbol!r} is not a linear USDT perpetual on {self.name}"
                " (use the ccxt unified form, e.g. BTC/USDT:USDT)"
            )
        return rules

    def _checked_qty(self, qty: float, rules: MarketRules) -> float:
        if not qty > 0:
            raise OrderRejected(f"{rules.symbol}: qty must be positive, got {qty!r}; nothing was sent", code="posguard-qty")
        rounded = rules.round_qty(qty)
        if rounded < rules.min_qty - QTY_TOLERANCE:
            raise OrderRejected(
                f"{rules.symbol}: qty {qty} (rounded down to the step {rules.qty_step}: {rounded}) is below"
                f" {self.name}'s minimum {rules.min_qty}; nothing was sent",
                code="posguard-min-qty",
            )
        return rounded

    # -- writes ----------------------------------------------------------------------------

    def _attached_price(self, what: str, price: float | None, rules: MarketRules, instead: str) -> float | None:
        """A price attached to an entry (its stop-loss, its take-profit), on the venue's tick;
        refused, with nothing sent, where the venue attaches none or the price is not one."""
        if price is None:
            return None
        if not self.supports_attached_stop:
            raise OrderRejected(
                f"{self.name} cannot attach a {what} to an entry; place it with {instead} once the entry"
                " has filled (supports_attached_stop is False); nothing was sent",
                code="posguard-no-attached-stop",
            )
        if not price > 0:
            raise OrderRejected(f"{what} must be a positive price, got {price!r}", code="posguard-price")
        return rules.round_price(price)

    async def create_order(self, request: OrderRequest) -> Order:
        rules = await self._rules_for(request.symbol)
        qty = self._checked_qty(request.qty, rules)
        stop = self._attached_price("stop-loss", request.stop_loss, rules, "place_stop")
        take_profit = self._attached_price("take-profit", request.take_profit, rules, "place_stop(take_profit=True)")
        request = msgspec.structs.replace(request, qty=qty, stop_loss=stop, take_profit=take_profit)
        order_type, params = self._dialect.entry(request)
        self._symbols_seen.add(request.symbol)
        raw = await self._call(
            "create_order",
            lambda: self._exchange.create_order(request.symbol, order_type, request.side, qty, None, params),
            client_order_id=request.client_order_id,
        )
        return self._acknowledged(
            raw, symbol=request.symbol, client_order_id=request.client_order_id, side=request.side,
            qty=qty, reduce_only=request.reduce_only, stop_price=None,
        )

    async def place_stop(self, request: StopRequest) -> Order:
        rules = await self._rules_for(request.symbol)
        qty = self._checked_qty(request.qty, rules)
        if not request.stop_price > 0:
            raise OrderRejected(f"stop price must be positive, got {request.stop_price!r}", code="posguard-price")
        request = msgspec.structs.replace(request, qty=qty, stop_price=rules.round_price(request.stop_price))
        order_type, params = self._dialect.stop(request)
        self._symbols_seen.add(request.symbol)
        raw = await self._call(
            "place_stop",
            lambda: self._exchange.create_order(request.symbol, order_type, request.side, qty, None, params),
            client_order_id=request.client_order_id,
        )
        return self._acknowledged(
            raw, symbol=request.symbol, client_order_id=request.client_order_id, side=request.side,
            qty=qty, reduce_only=True, stop_price=request.stop_price, take_profit=request.take_profit,
        )

    def _acknowledged(
        self,
        raw: CcxtDict,
        *,
        symbol: str,
        client_order_id: str,
        side: OrderSide,
        qty: float,
        reduce_only: bool,
        stop_price: float | None,
        take_profit: bool = False,
    ) -> Order:
        """The venue's answer to a create. A full order (Binance) is taken as is; an
        acknowledgement with ids only (Bybit) is "open, nothing filled yet"."""
        if raw.get("status") and raw.get("side"):
            try:
                order = to_order(raw, now_ms=self.now_ms())
                if not order.client_order_id:
                    order = msgspec.structs.replace(order, client_order_id=client_order_id)
                self._remember(order)
                return order
            except UnmappablePayload:
                pass
        order = Order(
            symbol=symbol,
            order_id=str(raw.get("id") or ""),
            client_order_id=str(raw.get("clientOrderId") or client_order_id),
            side=side,
            kind=order_kind(stop_price, take_profit=take_profit),
            qty=qty,
            filled=0.0,
            avg_price=None,
            status="open",
            reduce_only=reduce_only,
            stop_price=stop_price,
            ts_ms=self.now_ms(),
        )
        self._remember(order)
        return order

    async def amend_attached(self, request: AmendRequest) -> None:
        if not self.supports_attached_stop:
            raise OrderRejected(f"{self.name} holds no stop on the position; replace its stop order instead;"
                                " nothing was sent", code="posguard-no-attached-stop")
        rules = await self._rules_for(request.symbol)
        self._symbols_seen.add(request.symbol)
        await self._call("amend_attached", lambda: self._dialect.amend_attached(self._exchange, request, rules))

    async def cancel_order(self, symbol: str, client_order_id: str) -> Order | None:
        await self._rules_for(symbol)
        cancelled = await self._call(
            "cancel_order",
            lambda: self._dialect.cancel(self._exchange, symbol, client_order_id),
            client_order_id=client_order_id,
        )
        return await self.fetch_order(symbol, client_order_id) if cancelled else None

    # -- reads -----------------------------------------------------------------------------

    async def fetch_order(self, symbol: str, client_order_id: str, *, conditional: bool | None = None) -> Order | None:
        await self._rules_for(symbol)
        raw = await self._call(
            "fetch_order",
            lambda: self._dialect.fetch_order(self._exchange, symbol, client_order_id, conditional),
            client_order_id=client_order_id,
        )
        if raw is None:
            return None
        order = self._mapped("fetch_order", lambda: to_order(raw, now_ms=self.now_ms()))
        self._remember(order)
        return order

    async def fetch_executions(self, symbol: str, since_ms: int) -> list[Execution]:
        await self._rules_for(symbol)
        return await self._executions(symbol, since_ms)

    async def _executions(self, symbol: str | None, since_ms: int) -> list[Execution]:
        raw = await self._call("fetch_executions", lambda: self._dialect.fetch_trades(self._exchange, symbol, since_ms))
        now = self.now_ms()

        def mapped() -> list[Execution]:
            executions = []
            for trade in raw:
                order_id = str(trade.get("order") or "")
                client_order_id = self._dialect.trade_client_order_id(trade) or self._client_ids.get(order_id, "")
                executions.append(to_execution(trade, client_order_id=client_order_id, now_ms=now))
            return executions

        executions = self._mapped("fetch_executions", mapped)
        # Stable: fills in the same millisecond keep the venue's own order.
        return sorted((e for e in executions if e.ts_ms >= since_ms), key=lambda e: e.ts_ms)

    async def fetch_price(self, symbol: str) -> float:
        await self._rules_for(symbol)
        ticker = await self._call("fetch_price", lambda: self._exchange.fetch_ticker(symbol))
        price = ticker.get("last") or ticker.get("close")
        if not price:
            raise VenueUnavailable(f"{self.name}: no last price for {symbol} in the ticker")
        return float(price)

    async def fetch_leverage(self, symbol: str) -> float | None:
        """ccxt's ``fetch_leverage`` (Bybit: ``leverage`` of ``GET /v5/position/list``); None
        where ccxt cannot ask this venue or the answer names none (the caller has a default)."""
        await self._rules_for(symbol)
        if not self._exchange.has.get("fetchLeverage"):
            return None
        answer = await self._call("fetch_leverage", lambda: self._exchange.fetch_leverage(symbol))
        side_leverage = answer.get("longLeverage") or answer.get("shortLeverage")
        try:
            return float(side_leverage) if side_leverage else None
        except (TypeError, ValueError):
            return None

    async def fetch_positions(self, symbol: str | None = None) -> list[Position]:
        if symbol is not None:
            await self._rules_for(symbol)
        raw = await self._call("fetch_positions", lambda: self._dialect.fetch_positions(self._exchange, symbol))
        now = self.now_ms()
        positions = self._mapped("fetch_positions", lambda: [to_position(p, now_ms=now) for p in raw])
        return [p for p in positions if p.is_open and (symbol is None or p.symbol == symbol)]

    async def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        if symbol is not None:
            await self._rules_for(symbol)
        raw = await self._call("fetch_open_orders", lambda: self._dialect.fetch_open_orders(self._exchange, symbol))
        now = self.now_ms()
        orders = self._mapped("fetch_open_orders", lambda: [to_order(o, now_ms=now) for o in raw])
        for order in orders:
            self._remember(order)
        return [o for o in orders if not o.is_final]

    # -- streams ---------------------------------------------------------------------------

    async def stream(self, sink: ObjectSendStream[VenueEvent]) -> None:
        private = PrivateStream(
            exchange=self._exchange,
            watchers=self._dialect.watchers(self._exchange),
            config=self._config,
            clock=self.now_ms,
            snapshot=self._snapshot,
            observe=self._observe,
            trades=lambda symbol: not self._rules or symbol in self._rules,
            secrets=self._secrets,
            rng=self._rng,
            listen_key=self._dialect.listen_key(self._exchange, self._config),
            max_connection_age=self._max_connection_age(),
        )
        self._exchange.posguard_listener = private
        try:
            await private.run(sink)
        finally:
            self._exchange.posguard_listener = None

    def _max_connection_age(self) -> float | None:
        """`CcxtVenueConfig.max_connection_age` (0: never), else the dialect's own."""
        age = self._config.max_connection_age
        if age is None:
            return self._dialect.max_connection_age
        return age or None

    async def _snapshot(self, topic: Topic, since_ms: int) -> list[VenueEvent]:
        """What REST says about ``topic`` now, to fill a gap in the stream.

        Orders: the open ones, and where the venue can list them by time (Binance), every
        order of the symbols seen changed since ``since_ms``: an entry or a stop that opened
        and closed while the stream was down is in no open-orders list, and its final state
        (a stop that fired or expired, an entry cancelled unfilled) is evidence too. Its
        fills come with the executions sweep on every venue."""
        if topic == "positions":
            return list(await self.fetch_positions())
        if topic == "orders":
            orders: list[VenueEvent] = list(await self.fetch_open_orders())
            for symbol in sorted(self._symbols_seen):
                orders.extend(await self._recent_orders(symbol, since_ms))
            return orders
        if not self._dialect.executions_need_symbol:
            return list(await self._executions(None, since_ms))
        # One listing per symbol this adapter has traded or seen a position or fill on.
        executions: list[VenueEvent] = []
        for symbol in sorted(self._symbols_seen):
            executions.extend(await self._executions(symbol, since_ms))
        return executions

    async def _recent_orders(self, symbol: str, since_ms: int) -> list[Order]:
        raw = await self._call("fetch_recent_orders", lambda: self._dialect.fetch_recent_orders(self._exchange, symbol, since_ms))
        now = self.now_ms()
        orders = self._mapped("fetch_recent_orders", lambda: [to_order(o, now_ms=now) for o in raw])
        for order in orders:
            self._remember(order)
        return orders

    def _observe(self, event: VenueEvent) -> None:
        if isinstance(event, (Order, Position, Execution)):
            self._symbols_seen.add(event.symbol)
        if isinstance(event, Order):
            self._remember(event)

    def _remember(self, order: Order) -> None:
        if order.order_id and order.client_order_id:
            self._client_ids[order.order_id] = order.client_order_id
            self._client_ids.move_to_end(order.order_id)
            while len(self._client_ids) > KNOWN_ORDER_IDS:
                self._client_ids.popitem(last=False)

    async def aclose(self) -> None:
        """Release the HTTP session and sockets. Cancel `stream` first: closing cancels the
        watch calls it is waiting on."""
        await self._exchange.close()

    # -- error translation -----------------------------------------------------------------

    async def _call(self, action: str, call: Callable[[], Awaitable[T]], *, client_order_id: str = "") -> T:
        try:
            return await call()
        except VenueError:
            raise
        except ccxt.BaseError as exc:
            codes = self._dialect.codes
            error = translate(exc, codes, action=action, client_order_id=client_order_id, secrets=self._secrets)
            if clock_rejected(exc, codes):
                await self._resync_clock()
            log.info("%s", error)
            raise error from None

    def _mapped(self, action: str, mapping: Callable[[], T]) -> T:
        try:
            return mapping()
        except UnmappablePayload as exc:
            raise VenueUnavailable(redact(f"{self.name} {action}: unreadable answer: {exc}", self._secrets)) from None

    async def _resync_clock(self) -> None:
        """The venue said our timestamp is outside its window: measure the offset again."""
        try:
            await self._exchange.load_time_difference()
        except ccxt.BaseError as exc:
            log.warning("%s: re-measuring the clock offset failed: %s", self.name, redact(str(exc), self._secrets))
