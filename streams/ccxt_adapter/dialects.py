"""What differs between venues behind the one `CcxtVenue`: how to ask, in ccxt's terms.

Each dialect builds its ccxt.pro exchange (options chosen so ccxt makes no call posguard did
not ask for), turns posguard requests into ``create_order`` arguments, and knows the venue's
way of answering the few questions the `Venue` protocol asks: an order by client order id
(open or closed), open orders including armed stops, executions, positions.

Answers are ccxt's unified dicts; `posguard.streams.ccxt_adapter.mapping` turns them into posguard Structs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import ccxt.async_support as ccxt

from posguard.streams.ccxt_adapter.config import ApiCredentials, CcxtVenueConfig, replace_base
from posguard.streams.ccxt_adapter.errors import RedactingLogger, VenueCodes, is_not_found, venue_reply
from posguard.streams.ccxt_adapter.hooks import BYBIT_EXEC_TYPES, HookedBinanceUsdm, HookedBybit
from posguard.streams.ccxt_adapter.mapping import CcxtDict
from posguard.streams.venue.errors import (
    DuplicateClientOrderId,
    NothingToReduce,
    OrderRejected,
    RateLimited,
    NothingToClose,
    StopSlotTaken,
    StopWouldTrigger,
    VenueAuthFailed,
    VenueUnavailable,
)
from posguard.streams.venue.events import Topic
from posguard.streams.venue.markets import MarketRules
from posguard.streams.venue.protocol import (
    ID_REUSE_GRACE,
    IDS_KEPT_FOR_GOOD,
    AmendRequest,
    OrderRequest,
    StopRequest,
    UnknownOrderRule,
    ids_reusable_once_closed,
)

__all__ = [
    "LISTEN_KEY_GONE", "BINANCE_CODES", "ListenKey", "BYBIT_CODES", "DIALECTS", "BinanceUsdmDialect", "BybitDialect", "Dialect", "Exchange", "all_urls",
]

log = logging.getLogger("posguard.ccxt")

Exchange = Any  # a ccxt.pro exchange instance; ccxt ships no usable type for it

DAY_MS = 86_400_000
BYBIT_WINDOW_MS = 7 * DAY_MS
"""Bybit's execution list spans at most seven days per query."""
BYBIT_EXECUTION_HORIZON_MS = 30 * DAY_MS
"""How far back `BybitDialect.fetch_trades` walks; posguard asks about recent orders only."""

BINANCE_TRADES_PAGE = 1000
"""Binance's largest ``userTrades`` page."""

BINANCE_ORDERS_PAGE = 1000
"""Binance's largest ``allOrders`` / ``allAlgoOrders`` page."""

BINANCE_ORDER_WINDOW_MS = 7 * DAY_MS - 60_000
"""``allOrders`` / ``allAlgoOrders`` answer a window of less than seven days."""

BINANCE_CONNECTION_AGE = 23 * 3600.0
"""Binance closes a user-data stream connection after 24 hours; posguard replaces it at 23."""

MAX_PAGES = 100
"""Pages read per listing before giving up with `VenueUnavailable`: an answer that was cut
short must never be mistaken for the whole truth (a missing stop, a missing position)."""


def _base_options() -> dict[str, Any]:
    return {
        # Time is learned from the venue once at load_markets. `CcxtVenue.now_ms` and every
        # signature use it, so "executions since I sent" compares like with like.
        "adjustForTimeDifference": True,
        "defaultType": "swap",
        "defaultSubType": "linear",
        "defaultSettle": "USDT",
        # posguard takes its own REST snapshot after every (re)connect.
        "watchPositions": {"fetchPositionsSnapshot": False, "awaitPositionsSnapshot": False},
    }


def _make(cls: type, config: CcxtVenueConfig, credentials: ApiCredentials, options: dict[str, Any]) -> Exchange:
    exchange = cls(
        {
            "apiKey": credentials.api_key,
            "secret": credentials.api_secret,
            "enableRateLimit": config.throttle,
            "timeout": int(config.request_timeout * 1000),
            # Currencies (a private asset call on both venues) are never needed for linear swaps.
            "has": {"fetchCurrencies": False},
            "options": options,
            "streaming": {"keepAlive": int(config.keepalive * 1000)},
            "logger": RedactingLogger(
                logging.getLogger("posguard.ccxt.wire"), (credentials.api_key, credentials.api_secret)
            ),
        }
    )
    if config.environment == "testnet":
        exchange.set_sandbox_mode(True)
    elif config.environment == "demo":
        exchange.enable_demo_trading(True)
    if config.rest_url:
        _rewrite_urls(exchange.urls["api"], config.rest_url, config.ws_url)
    return exchange


def _rewrite_urls(urls: dict[str, Any], rest_base: str, ws_base: str) -> None:
    """Point every URL ccxt may use at the override hosts; paths stay the venue's."""
    for key, value in urls.items():
        if isinstance(value, dict):
            _rewrite_urls(value, rest_base, ws_base)
        elif isinstance(value, str) and value.startswith(("http://", "https://")):
            urls[key] = replace_base(value, rest_base)
        elif isinstance(value, str) and value.startswith(("ws://", "wss://")):
            urls[key] = replace_base(value, ws_base)


def all_urls(exchange: Exchange) -> dict[str, str]:
    """Every URL under the exchange's ``urls['api']``, hostnames filled in."""
    found: dict[str, str] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, str) and "://" in value:
                found[f"{prefix}{key}"] = exchange.implode_hostname(value)

    walk(exchange.urls["api"], "")
    return found


def _cursor(page: list[CcxtDict]) -> str | None:
    """ccxt tucks a cursor-paginated response's next cursor into one entry's ``info``."""
    for item in page:
        cursor = (item.get("info") or {}).get("nextPageCursor")
        if cursor:
            return str(cursor)
    return None


async def _paged(fetch: Callable[[dict[str, Any]], Awaitable[list[CcxtDict]]], what: str) -> list[CcxtDict]:
    items: list[CcxtDict] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await fetch({"cursor": cursor} if cursor else {})
        items.extend(page)
        cursor = _cursor(page)
        if not page or not cursor:
            return items
    raise VenueUnavailable(f"{what}: more than {MAX_PAGES} pages; refusing to act on a partial list")


class Dialect:
    """The venue-specific half of `CcxtVenue`. Subclasses fill in every method."""

    exchange_id: str
    supports_attached_stop: bool
    executions_need_symbol: bool
    """True when the venue lists executions one symbol at a time."""
    codes: VenueCodes
    """The venue's own error codes posguard acts on (`posguard.streams.ccxt_adapter.errors.translate`)."""

    def unknown_order_rule(self, config: CcxtVenueConfig) -> UnknownOrderRule:
        """See `Venue.unknown_order_rule`: how the venue keeps client order ids."""
        raise NotImplementedError

    def build(self, config: CcxtVenueConfig, credentials: ApiCredentials) -> Exchange:
        raise NotImplementedError

    def entry(self, request: OrderRequest) -> tuple[str, dict[str, Any]]:
        """ccxt ``create_order`` type and params for a market order."""
        raise NotImplementedError

    def stop(self, request: StopRequest) -> tuple[str, dict[str, Any]]:
        """ccxt ``create_order`` type and params for a reduce-only stop-market order."""
        raise NotImplementedError

    async def fetch_order(self, exchange: Exchange, symbol: str, client_order_id: str,
                          conditional: bool | None) -> CcxtDict | None:
        """The order under ``client_order_id``, None if unknown; ``conditional`` as
        `Venue.fetch_order` says."""
        raise NotImplementedError

    async def cancel(self, exchange: Exchange, symbol: str, client_order_id: str) -> bool:
        """True if an open order was cancelled, False if the venue has no such open order."""
        raise NotImplementedError

    async def amend_attached(self, exchange: Exchange, request: AmendRequest, rules: MarketRules) -> None:
        """Set the position's own stop / take-profit in place (`Venue.amend_attached`); only
        a venue that `supports_attached_stop` has it."""
        raise NotImplementedError(f"{self.exchange_id} holds no stop on the position: amend its stop orders")

    async def fetch_open_orders(self, exchange: Exchange, symbol: str | None) -> list[CcxtDict]:
        raise NotImplementedError

    async def fetch_trades(self, exchange: Exchange, symbol: str | None, since_ms: int) -> list[CcxtDict]:
        """Fills (including liquidations and ADL) from ``since_ms`` on, oldest first."""
        raise NotImplementedError

    def trade_client_order_id(self, trade: CcxtDict) -> str:
        """The client order id a trade carries, "" if the venue does not say."""
        raise NotImplementedError

    async def fetch_positions(self, exchange: Exchange, symbol: str | None) -> list[CcxtDict]:
        """The account's positions, or ``symbol``'s alone asked of the venue for that symbol
        (`Venue.fetch_positions`)."""
        raise NotImplementedError

    def listen_key(self, exchange: Exchange, config: CcxtVenueConfig) -> ListenKey | None:
        """The credential the private stream is opened with, if it lapses unless extended."""
        return None

    max_connection_age: float | None = None
    """Seconds after which posguard replaces a private connection itself, ahead of the
    venue's own limit (`CcxtVenueConfig.max_connection_age` overrides); None: no limit."""

    async def fetch_recent_orders(self, exchange: Exchange, symbol: str, since_ms: int) -> list[CcxtDict]:
        """Orders of ``symbol`` created or changed since ``since_ms``, closed ones included, for
        the sweep after a reconnect (an order opened and closed during the gap is in no
        open-orders list). [] where executions and the lookup by id already cover it."""
        return []

    def watchers(self, exchange: Exchange) -> dict[Topic, Callable[[], Awaitable[object]]]:
        """One ccxt watch call per topic; each returns at the next message or raises on loss."""
        return {
            "positions": exchange.watch_positions,
            "orders": exchange.watch_orders,
            "executions": exchange.watch_my_trades,
        }


BYBIT_NOT_MODIFIED = "34040"
"""Set Trading Stop's "not modified": the position already holds the values sent."""

BYBIT_CODES = VenueCodes(
    exchange="bybit",
    # https://bybit-exchange.github.io/docs/v5/error
    errors={
        "110072": DuplicateClientOrderId,  # OrderLinkedID is duplicate
        "110017": NothingToReduce,  # reduce-only: current position is zero / would not reduce
        "110092": StopWouldTrigger,  # expect Rising, but trigger_price <= current
        "110093": StopWouldTrigger,  # expect Falling, but trigger_price >= current
        "10000": VenueUnavailable,  # server timeout
        "10016": VenueUnavailable,  # server error / service restarting
        "10006": RateLimited,  # too many visits
        "10018": RateLimited,  # IP rate limit
        "10429": RateLimited,  # system level frequency protection
        # Refused credentials: nothing was done.
        "10003": VenueAuthFailed,  # API key is invalid
        "10004": VenueAuthFailed,  # error sign: the secret does not match the key
        "10005": VenueAuthFailed,  # permission denied for this API key
        "10010": VenueAuthFailed,  # request IP not among the key's bound IPs
        "33004": VenueAuthFailed,  # API key has expired
    },
    # does not exist / already finished / already cancelled
    not_found=frozenset({"110001", "110008", "110010", "170213"}),
    clock=frozenset({"10002"}),  # timestamp outside recv_window: our clock, not the order
)


class BybitDialect(Dialect):
    """Bybit V5, linear USDT perpetuals, one-way mode, Unified Trading Account.

    The account is taken to be a UTA (every Bybit account opened since 2023 is, and classic
    accounts are being migrated), so ccxt is told so and does not probe
    ``/v5/user/query-api`` before the first order.
    """

    exchange_id = "bybit"
    codes = BYBIT_CODES
    supports_attached_stop = True
    executions_need_symbol = False

    def unknown_order_rule(self, config: CcxtVenueConfig) -> UnknownOrderRule:
        return IDS_KEPT_FOR_GOOD  # orderLinkId is unique for good: a repeat is refused (110072)

    def build(self, config: CcxtVenueConfig, credentials: ApiCredentials) -> Exchange:
        options = _base_options() | {
            "fetchMarkets": {"types": ["linear"]},
            "enableUnifiedAccount": True,
            "enableUnifiedMargin": False,
            "watchMyTrades": {"execType": list(BYBIT_EXEC_TYPES)},
        }
        return _make(HookedBybit, config, credentials, options)

    def entry(self, request: OrderRequest) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"clientOrderId": request.client_order_id, "positionIdx": 0}
        if request.reduce_only:
            params["reduceOnly"] = True
        if request.stop_loss is not None:
            # Bybit sets it as the position's stop (tpslMode Full) the moment the order fills.
            params["stopLoss"] = {"triggerPrice": request.stop_loss}
        if request.take_profit is not None:
            # And the take-profit beside it: Create Order's ``takeProfit`` with ``tpslMode=Full``
            # (the whole position's, closed at market when triggered) and ``tpTriggerBy``, the
            # price it watches (https://bybit-exchange.github.io/docs/v5/order/create-order).
            params["takeProfit"] = {"triggerPrice": request.take_profit}
            params["tpslMode"] = "Full"
            params["tpTriggerBy"] = "LastPrice"
        return "market", params

    def stop(self, request: StopRequest) -> tuple[str, dict[str, Any]]:
        # Always sized to ``qty`` (``whole_position`` has no Bybit counterpart among stop
        # orders): the audit tops up a position that grew (`posguard.actors.coverage`).
        # A sell stop protects a long: it fires when the price falls to it.
        direction = "descending" if request.side == "sell" else "ascending"
        return "market", {
            "clientOrderId": request.client_order_id,
            "triggerPrice": request.stop_price,
            "triggerDirection": direction,
            "reduceOnly": True,
            # Fires even if margin is short at that moment (Bybit cancels other orders first).
            "closeOnTrigger": True,
            "positionIdx": 0,
        }

    async def fetch_order(self, exchange: Exchange, symbol: str, client_order_id: str,
                          conditional: bool | None) -> CcxtDict | None:
        # /v5/order/realtime finds open orders and the recent 500 closed ones; after a Bybit
        # restart closed orders are only in /v5/order/history. Both, before saying "unknown".
        # Plain and conditional orders are in the same lists: ``conditional`` changes nothing.
        query = {"orderLinkId": client_order_id}
        found = await exchange.fetch_open_orders(symbol, None, None, query)
        if not found:
            found = await exchange.fetch_canceled_and_closed_orders(symbol, None, None, query)
        return found[0] if found else None

    async def amend_attached(self, exchange: Exchange, request: AmendRequest, rules: MarketRules) -> None:
        # Set Trading Stop, https://bybit-exchange.github.io/docs/v5/position/trading-stop:
        # category, symbol, tpslMode and positionIdx required; "Full position TP/SL orders: This
        # API can be used to modify the parameters of existing TP/SL orders"; takeProfit "0
        # means cancel TP". Through ccxt's implicit V5 endpoint (its own set-TP/SL path goes
        # through create_order). Sent again after a lost answer, the same values are refused
        # 34040 "not modified": they are what the position holds, which is success.
        body: dict[str, Any] = {"category": "linear", "symbol": exchange.market(request.symbol)["id"],
                                "tpslMode": "Full", "positionIdx": 0}
        if request.stop_loss is not None:
            body["stopLoss"] = exchange.price_to_precision(request.symbol, rules.round_price(request.stop_loss))
            body["slTriggerBy"] = "LastPrice"
        if request.take_profit is not None:
            body["takeProfit"] = ("0" if not request.take_profit
                                  else exchange.price_to_precision(request.symbol, rules.round_price(request.take_profit)))
            body["tpTriggerBy"] = "LastPrice"
        try:
            await exchange.privatePostV5PositionTradingStop(body)
        except ccxt.BaseError as exc:
            if venue_reply(exc)[0] == BYBIT_NOT_MODIFIED:
                return
            raise

    async def cancel(self, exchange: Exchange, symbol: str, client_order_id: str) -> bool:
        try:
            await exchange.cancel_order(None, symbol, {"orderLinkId": client_order_id})
        except ccxt.BaseError as exc:
            if is_not_found(exc, self.codes):
                return False
            raise
        return True

    async def fetch_open_orders(self, exchange: Exchange, symbol: str | None) -> list[CcxtDict]:
        # No orderFilter: Bybit then lists plain and conditional (stop) orders together.
        return await _paged(lambda page: exchange.fetch_open_orders(symbol, None, 50, page), "open orders")

    async def fetch_trades(self, exchange: Exchange, symbol: str | None, since_ms: int) -> list[CcxtDict]:
        # Not fetch_my_trades: it filters execType=Trade, which hides liquidations
        # (BustTrade) and ADL, the very exits that prove a position was closed externally.
        # Bybit answers at most seven days per query, so older requests walk the windows.
        now = exchange.milliseconds()
        horizon = now - BYBIT_EXECUTION_HORIZON_MS
        if since_ms < horizon:
            log.warning("bybit executions: asked from %d, listing only the last %d days", since_ms, BYBIT_EXECUTION_HORIZON_MS // DAY_MS)
            since_ms = horizon
        market = exchange.market(symbol) if symbol is not None else None
        trades: list[CcxtDict] = []
        start = since_ms
        while start <= now:
            request: dict[str, Any] = {"category": "linear", "startTime": start, "endTime": start + BYBIT_WINDOW_MS, "limit": 100}
            if market is not None:
                request["symbol"] = market["id"]

            async def page(cursor: dict[str, Any], request: dict[str, Any] = request) -> list[CcxtDict]:
                response = await exchange.privateGetV5ExecutionList(request | cursor)
                return exchange.parse_trades(exchange.add_pagination_cursor_to_result(response), market)

            trades.extend(await _paged(page, "executions"))
            start += BYBIT_WINDOW_MS + 1
        # ccxt sorts by (time, id); ids are random, so fills in one millisecond would come out
        # in any order. Bybit's cross sequence number orders them as they happened.
        trades.sort(key=lambda t: (t.get("timestamp") or 0, int((t.get("info") or {}).get("seq") or 0)))
        return [t for t in trades if (t.get("info") or {}).get("execType", "Trade") in BYBIT_EXEC_TYPES]

    def trade_client_order_id(self, trade: CcxtDict) -> str:
        return str((trade.get("info") or {}).get("orderLinkId") or "")

    async def fetch_positions(self, exchange: Exchange, symbol: str | None) -> list[CcxtDict]:
        # One call family, GET /v5/position/list with category=linear: every symbol with
        # settleCoin=USDT (ccxt's default), or ccxt's ``symbol=`` for one, which Bybit answers
        # "regardless of having position or not" (https://bybit-exchange.github.io/docs/v5/position).
        symbols = None if symbol is None else [symbol]
        return await _paged(lambda page: exchange.fetch_positions(symbols, {"limit": 200} | page), "positions")


BINANCE_CODES = VenueCodes(
    exchange="binanceusdm",
    # Meanings from https://developers.binance.com/docs/derivatives/usds-margined-futures/error-code
    # Listed even where ccxt has a fitting class: ccxt applies its futures table only at
    # Binance's own hosts, so behind a proxy or an emulator these are a plain ExchangeError.
    errors={
        "-4116": DuplicateClientOrderId,  # DUPLICATED_CLIENT_ORDER_ID
        "-20132": DuplicateClientOrderId,  # the client algo id is duplicated
        # REDUCE_ONLY_REJECT. Binance's docs also name a clash with other open reduce-only
        # orders as a cause, so it is the venue's claim, not proof: the close path checks
        # the executions before it believes "flat" (`posguard.actors.proof.prove_gone`).
        "-2022": NothingToReduce,
        "-2021": StopWouldTrigger,  # ORDER_WOULD_IMMEDIATELY_TRIGGER
        # Order type not supported for this endpoint (conditional orders live in the Algo
        # service since 2025-12-09): nothing was placed. A refusal, so a stop refused this
        # way is retried and then the position closed, never left to a lookup of a stop
        # that does not exist.
        "-4120": OrderRejected,
        # "An open stop or take profit order with GTE and closePosition in the direction is
        # existing": one closePosition stop per symbol and direction. Nothing placed; the armed
        # one still guards the position, and the replacement goes out sized instead.
        "-4130": StopSlotTaken,
        # "Time in Force (TIF) GTE can only be used with open positions or open orders. Please
        # ensure that positions are available.": a closePosition stop while there is nothing
        # to close on that side (not on the error-code page; many independent field reports;
        # ccxt 4.5.90 has no entry for it, a plain ExchangeError). Nothing placed, and no
        # evidence about an entry either way: the stop armed for an unknown entry retries.
        "-4509": NothingToClose,
        # "Reach max stop order limit" (at most 200 open conditional orders per symbol since
        # 2025-12-29): nothing placed, a refusal like any other (retried, then closed).
        "-4045": OrderRejected,
        "-2019": OrderRejected,  # MARGIN_NOT_SUFFICIEN
        "-2010": OrderRejected,  # NEW_ORDER_REJECTED
        "-4164": OrderRejected,  # MIN_NOTIONAL: notional below the minimum
        "-1013": OrderRejected,  # invalid quantity
        "-1111": OrderRejected,  # BAD_PRECISION
        "-4003": OrderRejected,  # QTY_LESS_THAN_ZERO
        "-4005": OrderRejected,  # QTY_GREATER_THAN_MAX_QTY
        "-4015": OrderRejected,  # INVALID_CL_ORD_ID_LEN: client order id is not valid
        "-2027": OrderRejected,  # MAX_LEVERAGE_RATIO
        "-1000": VenueUnavailable,  # UNKNOWN: an unknown error while processing
        "-1001": VenueUnavailable,  # DISCONNECTED: internal error
        "-1007": VenueUnavailable,  # TIMEOUT: execution status unknown
        # INVALID_LISTEN_KEY: the user-data stream needs a new listen key and a reconnect;
        # the API key is fine (ccxt says AuthenticationError at every address).
        "-1125": VenueUnavailable,
        "-1008": RateLimited,  # server busy
        "-1003": RateLimited,  # TOO_MANY_REQUESTS
        # Refused credentials.
        "-2014": VenueAuthFailed,  # BAD_API_KEY_FMT
        "-2015": VenueAuthFailed,  # REJECTED_MBX_KEY: invalid API-key, IP, or permissions
        "-1022": VenueAuthFailed,  # INVALID_SIGNATURE: the secret does not match
    },
    # NO_SUCH_ORDER; CANCEL_REJECTED ("Unknown order sent.": no open order by that id in the
    # book asked); an algo order completed or unknown.
    not_found=frozenset({"-2013", "-2011", "-20124"}),
    clock=frozenset({"-1021"}),  # INVALID_TIMESTAMP: outside recvWindow, our clock, not the order
)


LISTEN_KEY_GONE = "-1125"
"""INVALID_LISTEN_KEY: the key lapsed or was replaced; only a new one brings the stream back."""


LISTEN_KEY_MARGIN = 1 / 12
"""The part of a listen key's life not trusted: 5 of Binance's 60 minutes. A topic stops
heartbeating this long before the key would lapse unextended, so actors turn to REST while
the stream may still be silent for good (ccxt issue #6760)."""


class ListenKey:
    """Binance's user-data stream key, kept alive by posguard rather than ccxt.

    A key lapses 60 minutes after it was created or last extended, and the stream then goes
    silent with its socket open. ccxt 4.5.90 extends it once, 20 minutes in, and never again
    (its rescheduling looks for a subscription it never finds), so `PrivateStream` extends it
    every ``listen_key_keepalive`` seconds through this object, and asks `valid` before each
    heartbeat: an open socket on a key not known alive proves nothing.
    """

    def __init__(self, exchange: Exchange, life: float = 3600.0) -> None:
        self._exchange = exchange
        self._life_ms = life * 1000
        self._extended_ms = 0

    def confirmed_ms(self) -> int:
        """When the key was last known to be given a full life: created or extended by ccxt
        (``POST /fapi/v1/listenKey``, which also extends an existing key) or extended by us."""
        linear = self._exchange.options.get("linear") or {}
        return max(self._extended_ms, int(linear.get("lastAuthenticatedTime") or 0))

    def valid(self, now_ms: float) -> bool:
        """Whether the key is known alive now, less `LISTEN_KEY_MARGIN` of its life."""
        confirmed = self.confirmed_ms()
        return confirmed > 0 and now_ms < confirmed + self._life_ms * (1 - LISTEN_KEY_MARGIN)

    async def extend(self) -> bool:
        """False when Binance says the key is gone (a reconnect on a new key is needed); any
        other failure raises ccxt's exception, to be retried."""
        try:
            await self._exchange.fapiPrivatePutListenKey()
        except ccxt.BaseError as exc:
            if venue_reply(exc)[0] == LISTEN_KEY_GONE:
                return False
            raise
        self._extended_ms = self._exchange.milliseconds()
        return True

    def forget(self) -> None:
        """Make ccxt's next connect POST a new key: it reuses a cached one for 20 minutes."""
        linear = self._exchange.options.get("linear") or {}
        self._exchange.options["linear"] = linear | {"listenKey": None, "lastAuthenticatedTime": 0}
        self._extended_ms = 0


class BinanceUsdmDialect(Dialect):
    """Binance USD-M futures, one-way mode.

    Binance cannot attach a stop-loss to a market entry, so the actor places a reduce-only
    STOP_MARKET right after the fill. Since late 2025 conditional orders live in Binance's
    "algo order" API (their own ids, their own lookups); ccxt routes them there, and every
    lookup here asks both books before saying "unknown".
    """

    exchange_id = "binanceusdm"
    codes = BINANCE_CODES
    supports_attached_stop = False
    executions_need_symbol = True

    def unknown_order_rule(self, config: CcxtVenueConfig) -> UnknownOrderRule:
        # newClientOrderId is unique among open orders only, and a fresh order reads "does not
        # exist" for tens of seconds: a filled entry resent under its id is a second position.
        return ids_reusable_once_closed(config.resend_grace or ID_REUSE_GRACE)

    def build(self, config: CcxtVenueConfig, credentials: ApiCredentials) -> Exchange:
        options = _base_options() | {
            "fetchMarkets": {"types": ["linear"]},
            "fetchOpenOrders": {"warnWithoutSymbol": False},
            "warnOnFetchOpenOrdersWithoutSymbol": False,
            # ccxt would load leverage brackets before the first position list, only to
            # compute margins posguard never reads.
            "leverageBrackets": {},
        }
        return _make(HookedBinanceUsdm, config, credentials, options)

    def listen_key(self, exchange: Exchange, config: CcxtVenueConfig) -> ListenKey | None:
        return ListenKey(exchange, config.listen_key_life)

    max_connection_age = BINANCE_CONNECTION_AGE

    async def fetch_recent_orders(self, exchange: Exchange, symbol: str, since_ms: int) -> list[CcxtDict]:
        """``GET /fapi/v1/allOrders`` and ``GET /fapi/v1/allAlgoOrders`` (ccxt's fetch_orders,
        ``trigger: True`` for the algo book) from ``since_ms``: both answer at most 1000
        orders and a window under 7 days (Binance's Query All Algo Orders page:
        https://developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api/Query-All-Algo-Orders).
        A full page is never passed on as the whole list.

        Binance selects by creation time: an entry or stop made during the gap is found
        whatever became of it. A stop made before the gap that fired during it is not; its
        fill is in the executions sweep (``userTrades`` since the same moment), and its own
        state in the lookup by client algo id that the record's stop id gets."""
        since_ms = max(since_ms, exchange.milliseconds() - BINANCE_ORDER_WINDOW_MS)
        found: list[CcxtDict] = []
        for params in ({}, {"trigger": True}):
            # startTime as a parameter, not ccxt's ``since``: ccxt would also drop, on its side,
            # every answer whose creation time is older, whatever Binance chose to return.
            page = list(await exchange.fetch_orders(symbol, None, BINANCE_ORDERS_PAGE, params | {"startTime": since_ms}))
            if len(page) >= BINANCE_ORDERS_PAGE:
                raise VenueUnavailable(f"binanceusdm {symbol}: {len(page)}+ orders since {since_ms}; refusing a partial list")
            found.extend(page)
        return found

    def entry(self, request: OrderRequest) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"clientOrderId": request.client_order_id}
        if request.reduce_only:
            params["reduceOnly"] = True
        return "market", params

    def stop(self, request: StopRequest) -> tuple[str, dict[str, Any]]:
        """A STOP_MARKET through the algo order API (``POST /fapi/v1/algoOrder``,
        ``algoType=CONDITIONAL``: ccxt routes any order with a trigger price there and sends
        the client id as ``clientAlgoId``), triggered by the mark price.

        ``whole_position``: ``closePosition=true``, which closes the whole position at trigger
        whatever its size then, follows it through partial fills and closes, and is cancelled
        by Binance once the position is closed by other means. Binance's New Algo Order page
        (https://developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api/New-Algo-Order):
        closePosition is "Close-All, used with STOP_MARKET or TAKE_PROFIT_MARKET"; ``quantity``
        "cannot be sent with closePosition=true" (ccxt then leaves it out) and ``reduceOnly``
        "cannot be sent with closePosition=true". One such stop per symbol and direction: a
        second is refused ``-4130`` (`StopSlotTaken`), and the replacement is then sent sized
        (``whole_position`` False): a reduce-only STOP_MARKET for ``qty``.
        """
        # ccxt: ``stopLossPrice`` is a STOP_MARKET, ``takeProfitPrice`` a TAKE_PROFIT_MARKET
        # (`StopRequest.take_profit`), both through the algo order API; closePosition is "used
        # with STOP_MARKET or TAKE_PROFIT_MARKET" (New Algo Order).
        trigger = "takeProfitPrice" if request.take_profit else "stopLossPrice"
        params: dict[str, Any] = {
            "clientOrderId": request.client_order_id,
            trigger: request.stop_price,
            "workingType": "MARK_PRICE",
        }
        if request.whole_position:
            params["closePosition"] = True
        else:
            params["reduceOnly"] = True
        return "market", params

    async def fetch_order(self, exchange: Exchange, symbol: str, client_order_id: str,
                          conditional: bool | None) -> CcxtDict | None:
        # The order book, then the algo service (``trigger``), or only the one ``conditional`` names.
        for book in (False, True) if conditional is None else (conditional,):
            try:
                return await exchange.fetch_order(None, symbol, {"clientOrderId": client_order_id, "trigger": book})
            except ccxt.BaseError as exc:
                if not is_not_found(exc, self.codes):
                    raise
        return None

    async def cancel(self, exchange: Exchange, symbol: str, client_order_id: str) -> bool:
        for conditional in (False, True):
            try:
                await exchange.cancel_order(None, symbol, {"clientOrderId": client_order_id, "trigger": conditional})
                return True
            except ccxt.BaseError as exc:
                if not is_not_found(exc, self.codes):
                    raise
        return False

    async def fetch_open_orders(self, exchange: Exchange, symbol: str | None) -> list[CcxtDict]:
        plain = await exchange.fetch_open_orders(symbol)
        algo = await exchange.fetch_open_orders(symbol, None, None, {"trigger": True})
        return list(plain) + list(algo)

    async def fetch_trades(self, exchange: Exchange, symbol: str | None, since_ms: int) -> list[CcxtDict]:
        if symbol is None:
            raise ValueError("binanceusdm lists executions per symbol only")
        trades = list(await exchange.fetch_my_trades(symbol, since_ms, BINANCE_TRADES_PAGE))
        if len(trades) >= BINANCE_TRADES_PAGE:
            # Binance pages by trade id only without a start time; a cut list is never passed on.
            raise VenueUnavailable(f"binanceusdm {symbol}: {len(trades)}+ fills since {since_ms}; refusing a partial list")
        return trades

    def trade_client_order_id(self, trade: CcxtDict) -> str:
        # userTrades carries only the venue's order id; pushed trades carry "c".
        return str((trade.get("info") or {}).get("c") or "")

    async def fetch_positions(self, exchange: Exchange, symbol: str | None) -> list[CcxtDict]:
        if symbol is None:
            return list(await exchange.fetch_positions())
        # ccxt 4.5 asks GET /fapi/v3/positionRisk for every symbol and filters the answer
        # itself; the endpoint takes ``symbol`` (https://developers.binance.com/docs/derivatives/
        # usds-margined-futures/trade/rest-api/Position-Information-V3), so it is passed as a
        # param. (ccxt would send the same params to a leverage-bracket load; `build` presets
        # the brackets, so there is none.)
        return list(await exchange.fetch_positions([symbol], {"symbol": exchange.market_id(symbol)}))


DIALECTS: dict[str, Dialect] = {d.exchange_id: d for d in (BybitDialect(), BinanceUsdmDialect())}
