"""Binance USD-M futures REST, as much of it as ccxt's ``binanceusdm`` calls for posguard.

Security (https://developers.binance.com/docs/derivatives/usds-margined-futures/general-info,
"SIGNED (TRADE and USER_DATA) Endpoint Security"): ``X-MBX-APIKEY`` carries the key (missing:
-2014 "API-key format invalid.", wrong: -2015 "Invalid API-key, IP, or permissions for
action.", HTTP 401); ``signature`` is the hex HMAC-SHA256, keyed with the secret, of
``totalParams`` = the query string concatenated with the request body (-1022 "Signature for
this request is not valid."); ``timestamp`` must lie within ``recvWindow`` (default 5000 ms)
before the server's time and at most 1000 ms ahead of it, else -1021. The listenKey endpoints
(USER_STREAM) need the key only.

Errors are ``{"code": <negative>, "msg": ...}`` with HTTP 400 (429 with -1003 on rate limits,
5xx on outages). Unknown paths answer HTTP 404 with -1099 "Not found, unauthenticated, or
unauthorized.", so an unexpected ccxt call shows up in tests (`BinanceRest.requests` counts
every call, unknown ones included).

Lagged views (`Faults.order_list_lag`, `position_list_lag`, `execution_list_lag`): an order
not yet visible answers -2013 "Order does not exist." on ``GET /fapi/v1/order`` and
``GET /fapi/v1/algoOrder``, which is what Binance does for tens of seconds after creation.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from aiohttp import web

from posguard.streams.emulators.binance import payloads
from posguard.streams.emulators.binance.orders import BinanceReject, algo_order, mandatory, market_order
from posguard.streams.emulators.engine.faults import draw_failure
from posguard.streams.emulators.engine.windows import history_window
from posguard.streams.emulators.engine.matching import LEVERAGE, EmuOrder, EmuPosition, Engine, Reject, fmt, now_ms

if TYPE_CHECKING:
    from posguard.streams.emulators.binance.ws import UserDataHub

__all__ = ["BinanceRest", "PUBLIC_PATHS", "WRITE_PATHS", "error"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = frozenset({
    "/fapi/v1/ping", "/fapi/v1/time", "/fapi/v1/exchangeInfo", "/fapi/v1/ticker/24hr", "/fapi/v1/ticker/price",
    "/fapi/v1/premiumIndex",
})
KEY_ONLY_PATHS = frozenset({"/fapi/v1/listenKey"})
WRITE_PATHS = frozenset({"/fapi/v1/order", "/fapi/v1/algoOrder"})
"""Paths whose POST/DELETE a ``lost_504``/``lost_drop`` fault applies and then loses."""
PARAMS = web.RequestKey("params", dict)
"""A request's parameters: the query string and the form body together, as Binance reads them."""
DEFAULT_RECV_WINDOW = 5000


def error(code: int, message: str, status: int = 400) -> web.Response:
    return web.json_response({"code": code, "msg": message}, status=status)


class BinanceRest:
    def __init__(self, engine: Engine, api_key: str, rng: random.Random, api_secret: str, hub: UserDataHub) -> None:
        self.engine = engine
        self.api_key = api_key
        self.api_secret = api_secret
        self.rng = rng
        self.hub = hub
        self.requests: Counter[str] = Counter()
        self.position_lists: Counter[str] = Counter()
        """Position-list requests by the ``symbol`` they asked for ("" for the whole account)."""
        self.unknown: Counter[str] = Counter()
        """Requests to paths the emulator does not serve: a call ccxt made that nobody expected."""
        self.dual_side = False

    def routes(self, app: web.Application) -> None:
        get, post, delete = app.router.add_get, app.router.add_post, app.router.add_delete
        get("/fapi/v1/ping", self.ping)
        get("/fapi/v1/time", self.server_time)
        get("/fapi/v1/exchangeInfo", self.exchange_info)
        get("/fapi/v1/ticker/24hr", self.ticker_24hr)
        get("/fapi/v1/ticker/price", self.ticker_price)
        get("/fapi/v1/premiumIndex", self.premium_index)
        post("/fapi/v1/order", self.new_order)
        get("/fapi/v1/order", self.query_order)
        delete("/fapi/v1/order", self.cancel_order)
        get("/fapi/v1/openOrders", self.open_orders)
        get("/fapi/v1/allOrders", self.all_orders)
        post("/fapi/v1/algoOrder", self.new_algo_order)
        get("/fapi/v1/algoOrder", self.query_algo_order)
        delete("/fapi/v1/algoOrder", self.cancel_algo_order)
        get("/fapi/v1/openAlgoOrders", self.open_algo_orders)
        get("/fapi/v1/allAlgoOrders", self.all_algo_orders)
        get("/fapi/v1/userTrades", self.user_trades)
        get("/fapi/v3/positionRisk", self.position_risk)
        get("/fapi/v1/symbolConfig", self.symbol_config)
        post("/fapi/v1/leverage", self.leverage)
        get("/fapi/v1/positionSide/dual", self.get_dual_side)
        post("/fapi/v1/positionSide/dual", self.set_dual_side)
        post("/fapi/v1/listenKey", self.new_listen_key)
        app.router.add_put("/fapi/v1/listenKey", self.keepalive_listen_key)
        delete("/fapi/v1/listenKey", self.close_listen_key)

    # -- the gate every request passes -----------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_control") or path.startswith("/ws/") or path == "/private/ws":
            return await handler(request)
        self.requests[f"{request.method} {path}"] += 1
        faults = self.engine.faults
        scripted = draw_failure(faults, path, self.rng)
        if scripted == "http_503":
            return web.Response(status=503, text="<html><body>503 Service Temporarily Unavailable</body></html>")
        if scripted == "rate_limit":
            return error(-1003, "Too many requests; current limit is 2400 requests per minute. Please use the "
                                "websocket for live updates to avoid polling the API.", status=429)
        if scripted == "server_error":
            return error(-1001, "Internal error; unable to process your request. Please try again.", status=500)
        if scripted == "clock_skew":
            return error(-1021, "Timestamp for this request is outside of the recvWindow.")
        if request.match_info.http_exception is not None:
            self.unknown[f"{request.method} {path}"] += 1
            return error(-1099, "Not found, unauthenticated, or unauthorized.", status=404)
        body = await request.text() if request.can_read_body else ""
        query = request.rel_url.raw_query_string  # as sent (and signed), not decoded
        params = dict(parse_qsl(query, keep_blank_values=True)) | dict(parse_qsl(body, keep_blank_values=True))
        request[PARAMS] = params
        if path not in PUBLIC_PATHS:
            refused = self._authorised(request, params, query, body, signed=path not in KEY_ONLY_PATHS)
            if refused is not None:
                return refused
        try:
            response = await handler(request)
        except BinanceReject as reject:
            response = error(reject.code, reject.message, reject.status)
        except Reject as reject:
            refused = BinanceReject.of(reject)
            response = error(refused.code, refused.message, refused.status)
        if faults.rest_latency:
            await asyncio.sleep(faults.rest_latency)
        if scripted in ("lost_504", "lost_drop") and path in WRITE_PATHS and request.method in ("POST", "DELETE"):
            if scripted == "lost_drop" and request.transport is not None:
                request.transport.close()  # the client sees the connection die mid-request
            return web.Response(status=504, text="<html><body>504 Gateway Time-out</body></html>")
        return response

    def _authorised(self, request: web.Request, params: Mapping[str, str], query: str, body: str, *,
                    signed: bool) -> web.Response | None:
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            return error(-2014, "API-key format invalid.", status=401)
        if key != self.api_key:
            return error(-2015, "Invalid API-key, IP, or permissions for action.", status=401)
        if not signed:
            return None
        sent = params.get("signature", "")
        total = _without_signature(query) + _without_signature(body)
        expected = hmac.new(self.api_secret.encode(), total.encode("utf-8", "replace"), hashlib.sha256).hexdigest()
        if not sent or not hmac.compare_digest(sent.lower().encode("utf-8", "replace"), expected.encode()):
            return error(-1022, "Signature for this request is not valid.")
        try:
            timestamp = int(params.get("timestamp", ""))
            recv_window = int(params.get("recvWindow") or DEFAULT_RECV_WINDOW)
        except ValueError:
            return error(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
        server = now_ms()
        if timestamp >= server + 1000 or server - timestamp > recv_window:
            return error(-1021, "Timestamp for this request is outside of the recvWindow.")
        return None

    # -- public ----------------------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def server_time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": now_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response(payloads.exchange_info(list(self.engine.instruments.values()), now_ms()))

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        symbol = request[PARAMS].get("symbol")
        rows = [payloads.ticker_24hr(i, self.engine.prices[i.symbol], now_ms())
                for i in self.engine.instruments.values() if not symbol or i.symbol == symbol]
        if symbol and not rows:
            raise BinanceReject(-1121, "Invalid symbol.")
        return web.json_response(rows[0] if symbol else rows)

    async def ticker_price(self, request: web.Request) -> web.Response:
        symbol = request[PARAMS].get("symbol")
        rows = [{"symbol": i.symbol, "price": fmt(self.engine.prices[i.symbol], i.tick), "time": now_ms()}
                for i in self.engine.instruments.values() if not symbol or i.symbol == symbol]
        if symbol and not rows:
            raise BinanceReject(-1121, "Invalid symbol.")
        return web.json_response(rows[0] if symbol else rows)

    async def premium_index(self, request: web.Request) -> web.Response:
        symbol = mandatory(request[PARAMS], "symbol")
        instrument = self.engine.instrument(symbol)
        price = fmt(self.engine.prices[symbol], instrument.tick)
        return web.json_response({
            "symbol": symbol, "markPrice": price, "indexPrice": price, "estimatedSettlePrice": price,
            "lastFundingRate": "0.00010000", "interestRate": "0.00010000", "nextFundingTime": now_ms() + 3_600_000,
            "time": now_ms(),
        })

    # -- orders ----------------------------------------------------------------------------

    async def new_order(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        order = market_order(self.engine, params)
        answer = payloads.order_payload(order, self.engine.instruments[order.symbol])
        if params.get("newOrderRespType", "ACK") == "ACK":
            # ACK: the order as accepted, before the matching engine's result.
            answer |= {"status": "NEW", "executedQty": fmt(0.0), "cumQuote": "0", "avgPrice": "0.00"}
        return web.json_response(answer)

    async def query_order(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        symbol = self._symbol(params)
        found = self._visible_order(params, symbol)
        if found is None:
            raise BinanceReject(-2013, "Order does not exist.")
        return web.json_response(payloads.order_payload(found, self.engine.instruments[symbol]))

    async def cancel_order(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        symbol = self._symbol(params)
        order_id, client_id = _ids(params, "orderId", "origClientOrderId")
        order = self.engine.find(order_id, client_id, conditional=False)
        if order is None or not order.is_open:
            raise BinanceReject(-2011, "Unknown order sent.")
        self.engine.cancel_order(order, symbol)
        return web.json_response(payloads.order_payload(order, self.engine.instruments[symbol]))

    async def all_orders(self, request: web.Request) -> web.Response:
        """Orders of a symbol created in the window, oldest first, closed ones included (and the
        market orders triggered conditional orders became): "The query time period must be less
        then 7 days (default as the recent 7 days)."
        (https://developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api/All-Orders)."""
        params = request[PARAMS]
        symbol = self._symbol(params)
        listed = self._created_in_window(params, symbol, lambda o: not o.conditional or bool(o.fill_order_id))
        return web.json_response([payloads.order_payload(o, self.engine.instruments[symbol]) for o in listed])

    async def open_orders(self, request: web.Request) -> web.Response:
        symbol = request[PARAMS].get("symbol")
        if symbol:
            self.engine.instrument(symbol)
        listed = [o for o in self.engine.order_list() if not o.conditional and o.is_open and (not symbol or o.symbol == symbol)]
        return web.json_response([payloads.order_payload(o, self.engine.instruments[o.symbol]) for o in listed])

    # -- algo (conditional) orders ---------------------------------------------------------

    async def new_algo_order(self, request: web.Request) -> web.Response:
        order = algo_order(self.engine, request[PARAMS])
        return web.json_response(payloads.algo_payload(order, self.engine.instruments[order.symbol]))

    async def query_algo_order(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        algo_id, client_id = _ids(params, "algoId", "clientAlgoId")
        visible = [o for o in self.engine.order_list() if o.conditional]
        found = next((o for o in visible if (o.order_id == algo_id if algo_id else o.link_id == client_id)), None)
        if found is None:
            raise BinanceReject(-2013, "Order does not exist.")
        return web.json_response(payloads.algo_payload(found, self.engine.instruments[found.symbol]))

    async def cancel_algo_order(self, request: web.Request) -> web.Response:
        params = request[PARAMS]
        algo_id, client_id = _ids(params, "algoId", "clientAlgoId")
        order = self.engine.find(algo_id, client_id, conditional=True)
        if order is None or not order.is_open:
            raise BinanceReject(-2011, "Unknown order sent.")
        self.engine.cancel_order(order, order.symbol)
        return web.json_response({"algoId": int(order.order_id), "clientAlgoId": order.link_id, "code": "200", "msg": "success"})

    async def open_algo_orders(self, request: web.Request) -> web.Response:
        symbol = request[PARAMS].get("symbol")
        listed = [o for o in self.engine.order_list() if o.conditional and o.is_open and (not symbol or o.symbol == symbol)]
        return web.json_response([payloads.algo_payload(o, self.engine.instruments[o.symbol]) for o in listed])

    async def all_algo_orders(self, request: web.Request) -> web.Response:
        """Conditional orders of a symbol created in the window, oldest first
        (https://developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api/Query-All-Algo-Orders)."""
        params = request[PARAMS]
        symbol = self._symbol(params)
        listed = self._created_in_window(params, symbol, lambda o: o.conditional)
        return web.json_response([payloads.algo_payload(o, self.engine.instruments[symbol]) for o in listed])

    # -- trades, positions, account --------------------------------------------------------

    async def user_trades(self, request: web.Request) -> web.Response:
        """Ascending by trade id; at most seven days between ``startTime`` and ``endTime``
        (https://developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api/Account-Trade-List)."""
        params = request[PARAMS]
        symbol = self._symbol(params)
        limit = int(params.get("limit") or 500)
        if not 1 <= limit <= 1000:
            raise BinanceReject(-1130, "Invalid data sent for a parameter.")
        from_id = int(params["fromId"]) if params.get("fromId") else None
        start, end = (0, 2**62) if from_id is not None and not params.get("startTime") else _window(params)
        fills = [
            e for e in reversed(self.engine.execution_list())
            if e.order.symbol == symbol
            and start <= e.time_ms <= end
            and (from_id is None or int(e.exec_id) >= from_id)
            and (not params.get("orderId") or payloads.order_id(e.order) == int(params["orderId"]))
        ]
        instrument = self.engine.instruments[symbol]
        return web.json_response([payloads.user_trade(e, instrument) for e in fills[:limit]])

    async def position_risk(self, request: web.Request) -> web.Response:
        """V3: "Only symbol that has position or open orders will be returned" (one-way mode:
        one row each; a flat one with open orders has ``positionAmt`` 0)
        (https://developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api/Position-Information-V3)."""
        symbol = request[PARAMS].get("symbol")
        self.position_lists[symbol or ""] += 1
        if symbol:
            self.engine.instrument(symbol)
        with_orders = {o.symbol for o in self.engine.order_list() if o.is_open}
        listed = {p.symbol: p for p in self.engine.position_list() if p.size or p.symbol in with_orders}
        for flat in with_orders - set(listed):
            listed[flat] = EmuPosition(symbol=flat, mark_price=self.engine.prices[flat])
        rows = [
            payloads.position_risk(p, self.engine.instruments[p.symbol]) for p in listed.values()
            if not symbol or p.symbol == symbol
        ]
        return web.json_response(rows)

    async def symbol_config(self, request: web.Request) -> web.Response:
        """``GET /fapi/v1/symbolConfig`` (what ccxt's ``fetch_leverages`` reads)."""
        symbol = request[PARAMS].get("symbol")
        return web.json_response([
            {"symbol": i.symbol, "marginType": "CROSSED", "isAutoAddMargin": "false", "leverage": int(LEVERAGE),
             "maxNotionalValue": "1000000"}
            for i in self.engine.instruments.values() if not symbol or i.symbol == symbol
        ])

    async def leverage(self, request: web.Request) -> web.Response:
        """Accepted and echoed; the engine's margin model keeps its one leverage."""
        params = request[PARAMS]
        symbol = self._symbol(params)
        try:
            leverage = int(mandatory(params, "leverage"))
        except ValueError:
            raise BinanceReject(-1102, "Mandatory parameter 'leverage' was not sent, was empty/null, or malformed.") from None
        if not 1 <= leverage <= 125:
            raise BinanceReject(-4028, f"Leverage {leverage} is not valid")
        return web.json_response({"leverage": leverage, "maxNotionalValue": "1000000", "symbol": symbol})

    async def get_dual_side(self, request: web.Request) -> web.Response:
        return web.json_response({"dualSidePosition": self.dual_side})

    async def set_dual_side(self, request: web.Request) -> web.Response:
        wanted = mandatory(request[PARAMS], "dualSidePosition").lower() == "true"
        if wanted == self.dual_side:
            raise BinanceReject(-4059, "No need to change position side.")
        raise BinanceReject(-4068, "The emulator trades in one-way mode only.")

    # -- user-data stream keys -------------------------------------------------------------

    async def new_listen_key(self, request: web.Request) -> web.Response:
        return web.json_response({"listenKey": self.hub.keys.create()})

    async def keepalive_listen_key(self, request: web.Request) -> web.Response:
        key = self.hub.keys.extend(request[PARAMS].get("listenKey"))
        if key is None:
            raise BinanceReject(-1125, "This listenKey does not exist.")
        return web.json_response({"listenKey": key})

    async def close_listen_key(self, request: web.Request) -> web.Response:
        await self.hub.close_key(request[PARAMS].get("listenKey"))
        return web.json_response({})

    # -- helpers ---------------------------------------------------------------------------

    def _created_in_window(self, params: Mapping[str, str], symbol: str, keep: Callable[[EmuOrder], bool]) -> list[EmuOrder]:
        start, end = _window(params)
        limit = int(params.get("limit") or 500)
        if not 1 <= limit <= 1000:
            raise BinanceReject(-1130, "Invalid data sent for a parameter.")
        listed = [
            o for o in reversed(self.engine.order_list())
            if o.symbol == symbol and keep(o) and start <= o.created_ms <= end
        ]
        return listed[:limit]

    def _symbol(self, params: Mapping[str, str]) -> str:
        return self.engine.instrument(mandatory(params, "symbol")).symbol

    def _visible_order(self, params: Mapping[str, str], symbol: str) -> EmuOrder | None:
        """An order as REST sees it now: by ``orderId`` (a triggered conditional's actual order
        too) or the newest plain order with ``origClientOrderId``."""
        order_id, client_id = _ids(params, "orderId", "origClientOrderId")
        for order in self.engine.order_list():
            if order.symbol != symbol:
                continue
            if order_id and (order.order_id == order_id and not order.conditional or order.fill_order_id == order_id):
                return order
            if not order_id and not order.conditional and order.link_id == client_id:
                return order
        return None


def _ids(params: Mapping[str, str], id_name: str, client_name: str) -> tuple[str, str]:
    order_id, client_id = params.get(id_name, ""), params.get(client_name, "")
    if not order_id and not client_id:
        raise BinanceReject(-1102, f"Param {id_name} or {client_name} must be sent, but both were empty/null!")
    return order_id, client_id


def _window(params: Mapping[str, str]) -> tuple[int, int]:
    return history_window(params, lambda: BinanceReject(-1127, "Lookup interval is too big."))


def _without_signature(encoded: str) -> str:
    """``encoded`` as signed: everything before the ``signature`` parameter ccxt appends last."""
    parts = [p for p in encoded.split("&") if p and not p.startswith("signature=")]
    return "&".join(parts)

