"""Binance USD-M futures payloads, written after Binance's API documentation, and a tiny
HTTP replay server that answers ccxt with them on 127.0.0.1.

Hand-written but realistic (field for field where ccxt reads them); no live call made them.
The replay server is not an exchange: it answers each (method, path) with the payload a test
gave it and records what ccxt asked, so the tests can check both ccxt's requests (paths,
client order ids, reduce-only, trigger prices) and the adapter's reading of the answers.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

API_KEY = "binance-replay-key-1234"
API_SECRET = "binance-replay-secret-5678"


def _symbol(symbol: str, base: str, quote: str, contract_type: str, tick: str, step: str, min_qty: str,
            market_min_qty: str, notional: str) -> dict[str, Any]:
    return {
        "symbol": symbol, "pair": symbol.split("_")[0], "contractType": contract_type,
        "deliveryDate": 4133404800000 if contract_type == "PERPETUAL" else 1782460800000,
        "onboardDate": 1569398400000, "status": "TRADING", "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000", "baseAsset": base, "quoteAsset": quote, "marginAsset": quote,
        "pricePrecision": 2, "quantityPrecision": 3, "baseAssetPrecision": 8, "quotePrecision": 8,
        "underlyingType": "COIN", "underlyingSubType": ["PoW"], "settlePlan": 0, "triggerProtect": "0.0500",
        "liquidationFee": "0.012500", "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "556.80", "maxPrice": "4529764", "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": min_qty, "maxQty": "1000", "stepSize": step},
            {"filterType": "MARKET_LOT_SIZE", "minQty": market_min_qty, "maxQty": "120", "stepSize": step},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": notional},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500", "multiplierDecimal": "4"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        "permissionSets": ["GRID", "COPY"],
    }


EXCHANGE_INFO: dict[str, Any] = {
    "timezone": "UTC",
    "serverTime": 1764000000000,
    "futuresType": "U_MARGINED",
    "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400}],
    "exchangeFilters": [],
    "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
    "symbols": [
        _symbol("BTCUSDT", "BTC", "USDT", "PERPETUAL", "0.10", "0.001", "0.001", "0.001", "100"),
        _symbol("ETHUSDT", "ETH", "USDT", "PERPETUAL", "0.01", "0.001", "0.001", "0.002", "20"),
        _symbol("BTCUSDC", "BTC", "USDC", "PERPETUAL", "0.10", "0.001", "0.001", "0.001", "100"),
        _symbol("BTCUSDT_260626", "BTC", "USDT", "CURRENT_QUARTER", "0.10", "0.001", "0.001", "0.001", "5"),
    ],
}

ORDER_NEW: dict[str, Any] = {  # POST /fapi/v1/order, MARKET, default newOrderRespType=ACK
    "orderId": 4078112847, "symbol": "BTCUSDT", "status": "NEW", "clientOrderId": "pgbinance-e",
    "price": "0.00", "avgPrice": "0.00", "origQty": "0.010", "executedQty": "0.000", "cumQty": "0.000",
    "cumQuote": "0.00000", "timeInForce": "GTC", "type": "MARKET", "reduceOnly": False, "closePosition": False,
    "side": "BUY", "positionSide": "BOTH", "stopPrice": "0.00", "workingType": "CONTRACT_PRICE",
    "priceProtect": False, "origType": "MARKET", "priceMatch": "NONE", "selfTradePreventionMode": "EXPIRE_MAKER",
    "goodTillDate": 0, "updateTime": 1764000000123,
}

ORDER_FILLED: dict[str, Any] = ORDER_NEW | {  # GET /fapi/v1/order after the fill
    "status": "FILLED", "avgPrice": "60012.30", "executedQty": "0.010", "cumQuote": "600.12300", "time": 1764000000120,
    "updateTime": 1764000000125,
}

ORDER_PARTIAL_EXPIRED: dict[str, Any] = ORDER_NEW | {  # a market order cut short by the price band
    "status": "EXPIRED", "avgPrice": "60012.30", "executedQty": "0.004", "cumQuote": "240.04920",
}

ALGO_NEW: dict[str, Any] = {  # POST /fapi/v1/algoOrder (STOP_MARKET)
    "algoId": 2146760, "clientAlgoId": "pgbinance-s1", "algoType": "CONDITIONAL", "orderType": "STOP_MARKET",
    "symbol": "BTCUSDT", "side": "SELL", "positionSide": "BOTH", "timeInForce": "GTC", "quantity": "0.010",
    "algoStatus": "NEW", "triggerPrice": "57000.00", "price": "0.00", "icebergQuantity": None,
    "selfTradePreventionMode": "EXPIRE_MAKER", "workingType": "MARK_PRICE", "priceMatch": "NONE",
    "closePosition": False, "priceProtect": False, "reduceOnly": True, "createTime": 1764000000500,
    "updateTime": 1764000000500, "triggerTime": 0, "goodTillDate": 0,
}

ALGO_TRIGGERED: dict[str, Any] = ALGO_NEW | {"algoStatus": "FINISHED", "triggerTime": 1764000100000, "updateTime": 1764000100003}

# closePosition=true: no quantity, no reduceOnly (New Algo Order: "Cannot be sent with
# closePosition=true"); Binance answers quantity "0" for such an order.
ALGO_CLOSE_POSITION: dict[str, Any] = ALGO_NEW | {
    "clientAlgoId": "pgbinance-s1", "quantity": "0.000", "closePosition": True, "reduceOnly": False,
}

USER_TRADES: list[dict[str, Any]] = [  # GET /fapi/v1/userTrades (no client order id in it)
    {"buyer": True, "commission": "0.30006150", "commissionAsset": "USDT", "id": 698759, "maker": False,
     "orderId": 4078112847, "price": "60012.30", "qty": "0.010", "quoteQty": "600.12300", "realizedPnl": "0",
     "side": "BUY", "positionSide": "BOTH", "symbol": "BTCUSDT", "time": 1764000000120},
    {"buyer": False, "commission": "0.28500000", "commissionAsset": "USDT", "id": 698901, "maker": False,
     "orderId": 4078119999, "price": "57000.00", "qty": "0.010", "quoteQty": "570.00000", "realizedPnl": "-30.12300",
     "side": "SELL", "positionSide": "BOTH", "symbol": "BTCUSDT", "time": 1764000100010},
]

POSITION_RISK_V3: list[dict[str, Any]] = [  # GET /fapi/v3/positionRisk
    {"symbol": "BTCUSDT", "positionSide": "BOTH", "positionAmt": "0.010", "entryPrice": "60012.3",
     "breakEvenPrice": "60042.3", "markPrice": "60100.00000000", "unRealizedProfit": "0.87700000",
     "liquidationPrice": "0", "isolatedMargin": "0", "notional": "601.00000000", "marginAsset": "USDT",
     "isolatedWallet": "0", "initialMargin": "60.10000000", "maintMargin": "2.40400000",
     "positionInitialMargin": "60.10000000", "openOrderInitialMargin": "0", "adl": 1, "bidNotional": "0",
     "askNotional": "0", "updateTime": 1764000000125},
    {"symbol": "ETHUSDT", "positionSide": "BOTH", "positionAmt": "-0.500", "entryPrice": "3001.5",
     "breakEvenPrice": "3000.0", "markPrice": "2999.00000000", "unRealizedProfit": "1.25000000",
     "liquidationPrice": "0", "isolatedMargin": "0", "notional": "-1499.50000000", "marginAsset": "USDT",
     "isolatedWallet": "0", "initialMargin": "149.95", "maintMargin": "5.99", "positionInitialMargin": "149.95",
     "openOrderInitialMargin": "0", "adl": 2, "bidNotional": "0", "askNotional": "0", "updateTime": 1764000000200},
    {"symbol": "BTCUSDC", "positionSide": "BOTH", "positionAmt": "0.000", "entryPrice": "0.0",
     "breakEvenPrice": "0.0", "markPrice": "60100.0", "unRealizedProfit": "0", "liquidationPrice": "0",
     "isolatedMargin": "0", "notional": "0", "marginAsset": "USDC", "isolatedWallet": "0", "initialMargin": "0",
     "maintMargin": "0", "positionInitialMargin": "0", "openOrderInitialMargin": "0", "adl": 0,
     "bidNotional": "0", "askNotional": "0", "updateTime": 0},
]

# -- user data stream events ---------------------------------------------------------------

ORDER_TRADE_UPDATE_FILL: dict[str, Any] = {
    "e": "ORDER_TRADE_UPDATE", "E": 1764000000121, "T": 1764000000120,
    "o": {"s": "BTCUSDT", "c": "pgbinance-e", "S": "BUY", "o": "MARKET", "f": "GTC", "q": "0.010", "p": "0",
          "ap": "60012.30", "sp": "0", "x": "TRADE", "X": "FILLED", "i": 4078112847, "l": "0.010", "z": "0.010",
          "L": "60012.30", "N": "USDT", "n": "0.30006150", "T": 1764000000120, "t": 698759, "b": "0", "a": "0",
          "m": False, "R": False, "wt": "CONTRACT_PRICE", "ot": "MARKET", "ps": "BOTH", "cp": False, "rp": "0",
          "pP": False, "si": 0, "ss": 0, "V": "EXPIRE_MAKER", "pm": "NONE", "gtd": 0},
}

ALGO_UPDATE_NEW: dict[str, Any] = {
    "e": "ALGO_UPDATE", "T": 1764000000500, "E": 1764000000501,
    "o": {"caid": "pgbinance-s1", "aid": 2146760, "at": "CONDITIONAL", "o": "STOP_MARKET", "s": "BTCUSDT",
          "S": "SELL", "ps": "BOTH", "f": "GTC", "q": "0.010", "X": "NEW", "ai": "", "ap": "0.00000",
          "aq": "0.00000", "act": "0", "tp": "57000.00", "p": "0", "V": "EXPIRE_MAKER", "wt": "MARK_PRICE",
          "pm": "NONE", "cp": False, "pP": False, "R": True, "tt": 0, "gtd": 0},
}

ALGO_UPDATE_CLOSE_POSITION: dict[str, Any] = {
    "e": "ALGO_UPDATE", "T": 1764000000600, "E": 1764000000601,
    "o": ALGO_UPDATE_NEW["o"] | {"caid": "pgbinance-s2", "aid": 2146761, "q": "0.000", "cp": True, "R": False},
}

ACCOUNT_UPDATE: dict[str, Any] = {
    "e": "ACCOUNT_UPDATE", "E": 1764000000122, "T": 1764000000120,
    "a": {"m": "ORDER",
          "B": [{"a": "USDT", "wb": "9999.69993850", "cw": "9999.69993850", "bc": "0"}],
          "P": [{"s": "BTCUSDT", "pa": "0.010", "ep": "60012.30", "bep": "60042.3", "cr": "0", "up": "0",
                 "mt": "cross", "iw": "0", "ps": "BOTH", "ma": "USDT"},
                {"s": "ETHUSDT", "pa": "0", "ep": "0.00", "bep": "0", "cr": "-3.1", "up": "0",
                 "mt": "cross", "iw": "0", "ps": "BOTH", "ma": "USDT"}]},
}


def error(code: int, message: str, status: int = 400) -> tuple[int, dict[str, Any]]:
    return status, {"code": code, "msg": message}


Answer = dict[str, Any] | list[Any] | tuple[int, Any]
Responder = Callable[[dict[str, str]], Answer]


class BinanceReplay:
    """Answers ccxt's Binance USD-M requests from recorded payloads, on 127.0.0.1."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[Answer | Responder]] = {
            ("GET", "/fapi/v1/time"): [lambda _q: {"serverTime": int(time.time() * 1000)}],
            ("GET", "/fapi/v1/exchangeInfo"): [EXCHANGE_INFO],
        }
        self.seen: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
        self.sockets: list[web.WebSocketResponse] = []
        """Open user-data stream connections, newest last."""
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answer(self, method: str, path: str, *answers: Answer | Responder) -> None:
        """Queue answers for (method, path); the last one repeats."""
        self.answers[(method, path)] = list(answers)

    def requests(self, method: str, path: str) -> list[dict[str, str]]:
        return [params for m, p, params, _ in self.seen if (m, p) == (method, path)]

    async def push(self, event: dict[str, Any]) -> None:
        """Send a user-data stream event on every open connection."""
        for socket in list(self.sockets):
            await socket.send_json(event)

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        """A user-data stream connection: events come only from `push`."""
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.sockets.append(socket)
        try:
            async for _ in socket:
                pass
        finally:
            self.sockets.remove(socket)
        return socket

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            self.seen.append((request.method, request.path, dict(request.query), dict(request.headers)))
            return await self._stream(request)
        params = dict(request.query)
        if request.can_read_body:
            params |= dict(await request.post())
        self.seen.append((request.method, request.path, params, dict(request.headers)))
        queued = self.answers.get((request.method, request.path))
        if not queued:
            return web.json_response({"code": -5000, "msg": f"replay: no answer for {request.method} {request.path}"}, status=404)
        answer = queued.pop(0) if len(queued) > 1 else queued[0]
        if callable(answer):
            answer = answer(params)
        status, body = answer if isinstance(answer, tuple) else (200, answer)
        return web.json_response(copy.deepcopy(body), status=status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
