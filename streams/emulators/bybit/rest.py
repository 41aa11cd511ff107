"""Bybit V5 REST, as much of it as ccxt calls for linear perpetuals.

Public: ``/v5/market/time``, ``/v5/market/instruments-info``, ``/v5/market/tickers``. Private (the ``X-BAPI-API-KEY``
header must carry the emulator's key, else retCode 10003, and ``X-BAPI-SIGN`` must be the
request's signature with the emulator's secret, else 10004, as on Bybit: see `signatures`): ``/v5/order/create``, ``/v5/order/cancel``, ``/v5/order/realtime``,
``/v5/order/history``, ``/v5/execution/list``, ``/v5/position/list``. Any other path answers
retCode 10017 "route not found", so an unexpected ccxt call shows up as an error in tests.

Answers are ``{"retCode", "retMsg", "result", "retExtInfo", "time"}`` with HTTP 200, errors
included, as Bybit sends them. Lists are newest first and cursor-paginated.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from posguard.streams.emulators.bybit.instruments import instrument_payload
from posguard.streams.emulators.bybit.orders import REJECTS, VenueReject, cancel_order, create_order, set_trading_stop
from posguard.streams.emulators.bybit.payloads import execution_payload, order_payload, position_payload
from posguard.streams.emulators.engine.faults import draw_failure
from posguard.streams.emulators.engine.matching import Engine, EmuOrder, EmuPosition, Reject, now_ms
from posguard.streams.emulators.engine.windows import history_window
from posguard.streams.emulators.bybit.signatures import rest_signature, signature_matches

__all__ = ["BybitRest", "Handler", "PRIVATE_PREFIXES", "WRITE_PATHS", "answer"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRIVATE_PREFIXES = ("/v5/order/", "/v5/position/", "/v5/execution/")
WRITE_PATHS = ("/v5/order/create", "/v5/order/cancel")


def answer(result: dict[str, Any], code: int = 0, message: str = "OK") -> web.Response:
    body = {"retCode": code, "retMsg": message, "result": result, "retExtInfo": {}, "time": now_ms()}
    return web.json_response(body)


class BybitRest:
    def __init__(self, engine: Engine, api_key: str, rng: random.Random, api_secret: str) -> None:
        self.engine = engine
        self.api_key = api_key
        self.api_secret = api_secret
        self.rng = rng
        self.requests: Counter[str] = Counter()
        self.position_lists: Counter[str] = Counter()
        """Position-list requests by the ``symbol`` they asked for ("" for the whole account)."""
        self.unknown: Counter[str] = Counter()
        """Requests to paths the emulator does not serve: a call ccxt made that nobody expected."""

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v5/market/time", self.server_time)
        app.router.add_get("/v5/market/instruments-info", self.instruments)
        app.router.add_get("/v5/market/tickers", self.tickers)
        app.router.add_post("/v5/order/create", self.create_order)
        app.router.add_post("/v5/order/cancel", self.cancel_order)
        app.router.add_get("/v5/order/realtime", self.realtime)
        app.router.add_get("/v5/order/history", self.history)
        app.router.add_get("/v5/execution/list", self.executions)
        app.router.add_get("/v5/position/list", self.positions)
        app.router.add_post("/v5/position/trading-stop", self.trading_stop)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_control") or path == "/v5/private":
            return await handler(request)
        self.requests[f"{request.method} {path}"] += 1
        faults = self.engine.faults
        scripted = draw_failure(faults, path, self.rng)
        if scripted == "http_503":
            return web.Response(status=503, text="<html><body>503 Service Temporarily Unavailable</body></html>")
        if scripted == "rate_limit":
            return answer({}, 10006, "Too many visits. Exceeded the API Rate Limit.")
        if scripted == "server_error":
            return answer({}, 10016, "Server error.")
        if scripted == "clock_skew":
            return answer({}, 10002, "invalid request, please check your server timestamp or recv_window param")
        if path.startswith(PRIVATE_PREFIXES):
            if request.headers.get("X-BAPI-API-KEY") != self.api_key:
                return answer({}, 10003, "API key is invalid.")
            if not await self._signed(request):
                return answer({}, 10004, "Error sign, please check your signature generation algorithm.")
        if request.match_info.http_exception is not None:
            self.unknown[f"{request.method} {path}"] += 1
            return answer({}, 10017, f"Route not found: {request.method} {path}")
        try:
            response = await handler(request)
        except VenueReject as reject:
            response = answer({}, reject.code, reject.message)
        except Reject as reject:
            response = answer({}, *reject.render(REJECTS))
        if faults.rest_latency:
            await asyncio.sleep(faults.rest_latency)
        if scripted in ("lost_504", "lost_drop") and path in WRITE_PATHS:
            if scripted == "lost_drop" and request.transport is not None:
                request.transport.close()  # the client sees the connection die mid-request
            return web.Response(status=504, text="<html><body>504 Gateway Time-out</body></html>")
        return response

    async def _signed(self, request: web.Request) -> bool:
        sent, timestamp = request.headers.get("X-BAPI-SIGN", ""), request.headers.get("X-BAPI-TIMESTAMP", "")
        if not sent or not timestamp:
            return False
        payload = await request.read() if request.method == "POST" else request.query_string.encode()
        expected = rest_signature(self.api_secret, timestamp=timestamp, api_key=self.api_key,
                                  recv_window=request.headers.get("X-BAPI-RECV-WINDOW", ""), payload=payload)
        return signature_matches(sent, expected)

    # -- public ----------------------------------------------------------------------------

    async def server_time(self, request: web.Request) -> web.Response:
        now = time.time()
        return answer({"timeSecond": str(int(now)), "timeNano": str(int(now * 1e9))})

    async def instruments(self, request: web.Request) -> web.Response:
        category = request.query.get("category", "")
        status = request.query.get("status", "Trading")
        listed = [
            instrument_payload(i) for i in self.engine.instruments.values() if category == "linear" and status == "Trading"
        ]
        return answer({"category": category, "list": listed, "nextPageCursor": ""})

    async def tickers(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        instrument = self.engine.instruments.get(symbol)
        if request.query.get("category") != "linear" or instrument is None:
            return answer({}, 10001, "params error: symbol invalid")
        price = str(self.engine.prices[symbol])
        ticker = {"symbol": symbol, "lastPrice": price, "markPrice": price, "indexPrice": price,
                  "bid1Price": price, "ask1Price": price, "volume24h": "0", "turnover24h": "0"}
        return answer({"category": "linear", "list": [ticker]})

    # -- orders ----------------------------------------------------------------------------

    async def create_order(self, request: web.Request) -> web.Response:
        order = create_order(self.engine, await _body(request))
        return answer({"orderId": order.order_id, "orderLinkId": order.link_id})

    async def cancel_order(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if body.get("category") != "linear":
            raise VenueReject(10001, "params error: category only support linear")
        order = cancel_order(self.engine, body)
        return answer({"orderId": order.order_id, "orderLinkId": order.link_id})

    async def realtime(self, request: web.Request) -> web.Response:
        query = self._linear(request, need_scope=True)
        orders = self._orders()
        by_id = query.get("orderId") or query.get("orderLinkId")
        if by_id:
            recent = self.engine.recent_closed_ids()
            orders = [o for o in orders if _is_open(o) or o["orderId"] in recent]
        elif query.get("openOnly", "0") == "1":
            recent = self.engine.recent_closed_ids()
            orders = [o for o in orders if not _is_open(o) and o["orderId"] in recent]
        else:
            orders = [o for o in orders if _is_open(o)]
        return self._page(request, _filter_orders(orders, query), default=20, maximum=50)

    async def history(self, request: web.Request) -> web.Response:
        query = self._linear(request, need_scope=False)
        return self._page(request, _filter_orders(self._orders(), query), default=20, maximum=50)

    async def trading_stop(self, request: web.Request) -> web.Response:
        """Set the position's TP/SL in place; Bybit answers ``result: {}``."""
        set_trading_stop(self.engine, await _body(request))
        return answer({})

    # -- executions and positions ----------------------------------------------------------

    async def executions(self, request: web.Request) -> web.Response:
        query = self._linear(request, need_scope=False)
        start, end = _window(query)
        fills = [
            e for e in self.engine.execution_list()
            if start <= e.time_ms <= end
            and (not query.get("symbol") or e.order.symbol == query["symbol"])
            and (not query.get("orderId") or e.order.order_id == query["orderId"])
            and (not query.get("orderLinkId") or e.order.link_id == query["orderLinkId"])
            and (not query.get("execType") or e.exec_type == query["execType"])
        ]
        payloads = [execution_payload(e, self.engine.instruments[e.order.symbol], self.engine.prices) for e in fills]
        return self._page(request, payloads, default=50, maximum=100)

    async def positions(self, request: web.Request) -> web.Response:
        """``symbol`` given: that symbol's position "regardless of having position or not";
        else ``settleCoin``'s positions of size > 0 (https://bybit-exchange.github.io/docs/v5/position)."""
        query = self._linear(request, need_scope=True)
        symbol = query.get("symbol")
        self.position_lists[symbol or ""] += 1
        if symbol:
            instrument = self.engine.instrument(symbol)  # unknown: 10001 "params error: symbol invalid"
            # One-way mode: one row, flat ones too (never traded: empty side, seq -1).
            own = self.engine.position_list(symbol) or [EmuPosition(symbol, seq=-1, mark_price=self.engine.prices[symbol])]
            return self._page(request, [position_payload(p, instrument, p.mark_price) for p in own], default=20, maximum=200)
        settle = query.get("settleCoin", "")
        listed = [
            position_payload(p, self.engine.instruments[p.symbol], p.mark_price) for p in self.engine.position_list()
            if p.size > 0 and self.engine.instruments[p.symbol].settle == settle
        ]
        return self._page(request, listed, default=20, maximum=200)

    # -- helpers ---------------------------------------------------------------------------

    def _orders(self) -> list[dict[str, Any]]:
        return [_order(o, self.engine) for o in self.engine.order_list()]

    def _linear(self, request: web.Request, *, need_scope: bool) -> dict[str, str]:
        query = dict(request.query)
        if query.get("category") != "linear":
            raise VenueReject(10001, "params error: category only support linear")
        if need_scope and not (query.get("symbol") or query.get("settleCoin") or query.get("baseCoin")):
            raise VenueReject(10001, "params error: symbol, baseCoin or settleCoin is required")
        return query

    def _page(self, request: web.Request, items: list[dict[str, Any]], *, default: int, maximum: int) -> web.Response:
        limit = int(request.query.get("limit") or default)
        if not 1 <= limit <= maximum:
            raise VenueReject(10001, f"params error: limit must be within [1, {maximum}]")
        offset = int(request.query.get("cursor") or 0)
        page = items[offset:offset + limit]
        more = offset + limit < len(items)
        return answer(
            {"category": "linear", "list": page, "nextPageCursor": str(offset + limit) if more else ""}
        )


def _order(order: EmuOrder, engine: Engine) -> dict[str, Any]:
    return order_payload(order, engine.instruments[order.symbol])


def _is_open(order: dict[str, Any]) -> bool:
    return order["orderStatus"] in ("New", "PartiallyFilled", "Untriggered")


def _filter_orders(orders: list[dict[str, Any]], query: dict[str, str]) -> list[dict[str, Any]]:
    def keep(order: dict[str, Any]) -> bool:
        if query.get("orderId") and order["orderId"] != query["orderId"]:
            return False
        if query.get("orderLinkId") and order["orderLinkId"] != query["orderLinkId"]:
            return False
        if query.get("symbol") and order["symbol"] != query["symbol"]:
            return False
        if query.get("orderStatus") and order["orderStatus"] != query["orderStatus"]:
            return False
        order_filter = query.get("orderFilter")
        conditional = bool(order["stopOrderType"])
        if order_filter == "StopOrder" and not conditional:
            return False
        if order_filter == "Order" and conditional:
            return False
        return True

    return [o for o in orders if keep(o)]


def _window(query: dict[str, str]) -> tuple[int, int]:
    """Bybit's execution window: at most seven days, anchored as its docs say."""
    return history_window(query, lambda: VenueReject(10001, "params error: endTime - startTime must be within 7 days"))


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.text() or "{}")
    except ValueError:
        raise VenueReject(10001, "params error: body is not JSON") from None
    if not isinstance(body, dict):
        raise VenueReject(10001, "params error: body is not a JSON object")
    return body
