"""The engine's records written the way Binance USD-M futures writes them (REST and user-data
stream), field for field after the documentation:

* exchangeInfo: https://developers.binance.com/docs/derivatives/usds-margined-futures/market-data/rest-api/Exchange-Information
* order: .../trade/rest-api/Query-Order; algo order: .../trade/rest-api/Query-Algo-Order
* userTrades: .../trade/rest-api/Account-Trade-List (no client order id in it)
* positionRisk v3: .../trade/rest-api/Position-Information-V3
* ORDER_TRADE_UPDATE: .../user-data-streams/Event-Order-Update
* ALGO_UPDATE: .../user-data-streams/Event-Algo-Order-Update
* ACCOUNT_UPDATE: .../user-data-streams/Event-Balance-and-Position-Update
* TRADE_LITE: .../user-data-streams/Event-Trade-Lite

Numbers are strings, ids are integers, sides ``BUY``/``SELL``, one-way mode (``BOTH``).

Status mapping from the engine's vocabulary. A plain order: New -> NEW, PartiallyFilled ->
PARTIALLY_FILLED, Filled -> FILLED, Cancelled -> CANCELED. A conditional (algo) order, after
the ALGO_UPDATE page: Untriggered -> NEW, Triggered -> TRIGGERED ("placed into the matching
engine"), filled after its trigger -> FINISHED, cancelled by the user -> CANCELED, cancelled
by the system (its position closed, nothing to reduce at trigger) -> EXPIRED.

When a conditional order triggers, Binance places a MARKET order (``actualOrderId``, the
``ai`` of ALGO_UPDATE) whose ORDER_TRADE_UPDATE carries ``ot`` = the conditional type. The
emulator gives that order the client algo id as its ``c`` (an assumption: the docs do not
say which client id the triggered order carries).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from posguard.streams.emulators.engine.instruments import Instrument
from posguard.streams.emulators.engine.matching import LEVERAGE, TAKER_FEE, EmuExecution, EmuOrder, EmuPosition, fmt
from posguard.streams.venue.liquidation import MAINTENANCE_MARGIN_RATE, estimated_liquidation_price

__all__ = [
    "account_update", "algo_payload", "algo_status", "algo_update", "exchange_info", "order_payload",
    "order_status", "order_trade_update", "position_risk", "ticker_24hr", "trade_lite", "user_trade",
]

ORDER_STATUS = {"New": "NEW", "PartiallyFilled": "PARTIALLY_FILLED", "Filled": "FILLED", "Cancelled": "CANCELED"}


def _side(side: str) -> str:
    return "BUY" if side == "Buy" else "SELL"


def _precision(step: str) -> int:
    return max(0, -Decimal(step).normalize().as_tuple().exponent)  # type: ignore[operator]


def client_id(order: EmuOrder) -> str:
    """The order's client id; the venue's own closes carry Binance's ``autoclose-`` ids."""
    return order.link_id or f"autoclose-{order.order_id}"


def order_id(order: EmuOrder) -> int:
    """The matching engine's order id: a triggered conditional order's is its actual order."""
    return int(order.fill_order_id) if order.conditional and order.fill_order_id else int(order.order_id)


def order_status(order: EmuOrder) -> str:
    if order.conditional:  # the market order a triggered conditional became
        return ORDER_STATUS.get(order.status, "NEW") if order.cum_qty else "NEW"
    return ORDER_STATUS[order.status]


def algo_status(order: EmuOrder) -> str:
    if order.status == "Untriggered":
        return "NEW"
    if order.status == "Triggered":
        return "TRIGGERED"
    if order.status in ("Filled", "PartiallyFilled"):
        return "FINISHED"
    if order.cancel_type == "CancelByUser":
        return "CANCELED"
    return "EXPIRED"


def exchange_info(instruments: list[Instrument], now_ms: int) -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "serverTime": now_ms,
        "futuresType": "U_MARGINED",
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
        ],
        "exchangeFilters": [],
        "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
        "symbols": [_symbol(i) for i in instruments],
    }


def _symbol(i: Instrument) -> dict[str, Any]:
    """One symbol; no MAX_NUM_ALGO_ORDERS filter since 2025-12-29 (the limit is account-wide)."""
    perpetual = i.contract_type == "LinearPerpetual"
    return {
        "symbol": i.symbol, "pair": i.symbol, "contractType": "PERPETUAL" if perpetual else "CURRENT_QUARTER",
        "deliveryDate": 4133404800000 if perpetual else i.delivery_ms, "onboardDate": 1569398400000,
        "status": "TRADING", "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
        "baseAsset": i.base, "quoteAsset": i.quote, "marginAsset": i.settle,
        "pricePrecision": _precision(i.tick), "quantityPrecision": _precision(i.step), "baseAssetPrecision": 8,
        "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": [], "settlePlan": 0,
        "triggerProtect": "0.0500", "liquidationFee": "0.012500", "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": i.tick, "maxPrice": "4529764", "tickSize": i.tick},
            {"filterType": "LOT_SIZE", "minQty": i.min_qty, "maxQty": i.max_qty, "stepSize": i.step},
            {"filterType": "MARKET_LOT_SIZE", "minQty": i.min_qty, "maxQty": i.max_qty, "stepSize": i.step},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": i.min_notional},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500", "multiplierDecimal": "4"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        "permissionSets": ["GRID", "COPY"],
    }


def ticker_24hr(i: Instrument, price: float, now_ms: int) -> dict[str, Any]:
    last = fmt(price, i.tick)
    return {
        "symbol": i.symbol, "priceChange": "0", "priceChangePercent": "0.000", "weightedAvgPrice": last,
        "lastPrice": last, "lastQty": "0", "openPrice": last, "highPrice": last, "lowPrice": last,
        "volume": "0", "quoteVolume": "0", "openTime": now_ms - 86_400_000, "closeTime": now_ms,
        "firstId": 0, "lastId": 0, "count": 0,
    }


def order_payload(order: EmuOrder, i: Instrument) -> dict[str, Any]:
    """``GET /fapi/v1/order`` (and the RESULT answer of ``POST``): a plain order, or the market
    order a triggered conditional order became."""
    kind = order.order_type if order.conditional else "MARKET"
    return {
        "orderId": order_id(order), "symbol": order.symbol, "status": order_status(order),
        "clientOrderId": client_id(order), "price": "0", "avgPrice": fmt(order.avg_price, i.tick) if order.cum_qty else "0",
        "origQty": fmt(order.qty, i.step), "executedQty": fmt(order.cum_qty, i.step),
        "cumQuote": fmt(order.cum_value), "timeInForce": "GTC", "type": "MARKET", "reduceOnly": order.reduce_only,
        "closePosition": order.close_position, "side": _side(order.side), "positionSide": "BOTH",
        "stopPrice": fmt(order.trigger_price, i.tick), "workingType": order.working_type or "CONTRACT_PRICE",
        "priceProtect": False, "origType": kind, "priceMatch": "NONE", "selfTradePreventionMode": "EXPIRE_MAKER",
        "goodTillDate": 0, "time": order.triggered_ms or order.created_ms, "updateTime": order.updated_ms,
    }


def algo_payload(order: EmuOrder, i: Instrument) -> dict[str, Any]:
    """``POST/GET/DELETE /fapi/v1/algoOrder`` and ``openAlgoOrders``: one conditional order."""
    return {
        "algoId": int(order.order_id), "clientAlgoId": order.link_id, "algoType": "CONDITIONAL",
        "orderType": order.order_type, "symbol": order.symbol, "side": _side(order.side), "positionSide": "BOTH",
        "timeInForce": "GTC", "quantity": fmt(order.qty, i.step), "algoStatus": algo_status(order),
        "actualOrderId": order.fill_order_id, "actualPrice": fmt(order.avg_price, i.tick) if order.cum_qty else "0",
        "triggerPrice": fmt(order.trigger_price, i.tick), "price": "0", "icebergQuantity": None,
        "tpTriggerPrice": "0", "tpPrice": "0", "slTriggerPrice": "0", "slPrice": "0", "tpOrderType": "",
        "selfTradePreventionMode": "EXPIRE_MAKER", "workingType": order.working_type or "CONTRACT_PRICE",
        "priceMatch": "NONE", "closePosition": order.close_position, "priceProtect": False,
        "reduceOnly": order.reduce_only, "createTime": order.created_ms, "updateTime": order.updated_ms,
        "triggerTime": order.triggered_ms, "goodTillDate": 0,
    }


def user_trade(e: EmuExecution, i: Instrument) -> dict[str, Any]:
    order = e.order
    return {
        "buyer": e.side == "Buy", "commission": fmt(e.fee), "commissionAsset": "USDT", "id": int(e.exec_id),
        "maker": False, "orderId": order_id(order), "price": fmt(e.price, i.tick), "qty": fmt(e.qty, i.step),
        "quoteQty": fmt(e.qty * e.price), "realizedPnl": fmt(e.realised_pnl), "side": _side(e.side),
        "positionSide": "BOTH", "symbol": order.symbol, "time": e.time_ms,
    }


def _signed_size(p: EmuPosition) -> float:
    return p.size if p.side == "Buy" else -p.size


def position_risk(p: EmuPosition, i: Instrument) -> dict[str, Any]:
    """One row of ``GET /fapi/v3/positionRisk`` (``liquidationPrice`` "0" when there is none)."""
    amount = _signed_size(p)
    notional = amount * p.mark_price
    liq = estimated_liquidation_price("long" if p.side == "Buy" else "short", p.avg_price, LEVERAGE) if p.size else None
    margin = abs(notional) / LEVERAGE
    return {
        "symbol": p.symbol, "positionSide": "BOTH", "positionAmt": fmt(amount, i.step) if amount else "0.000",
        "entryPrice": fmt(p.avg_price), "breakEvenPrice": fmt(p.avg_price * (1 + TAKER_FEE) if p.side == "Buy" else p.avg_price * (1 - TAKER_FEE)),
        "markPrice": fmt(p.mark_price), "unRealizedProfit": fmt((p.mark_price - p.avg_price) * amount),
        "liquidationPrice": fmt(liq, i.tick) if liq else "0", "isolatedMargin": "0", "notional": fmt(notional),
        "marginAsset": i.settle, "isolatedWallet": "0", "initialMargin": fmt(margin),
        "maintMargin": fmt(abs(notional) * MAINTENANCE_MARGIN_RATE), "positionInitialMargin": fmt(margin),
        "openOrderInitialMargin": "0", "adl": 1 if p.size else 0, "bidNotional": "0", "askNotional": "0",
        "updateTime": p.updated_ms,
    }


# -- user-data stream --------------------------------------------------------------------


def order_trade_update(order: EmuOrder, i: Instrument, *, now_ms: int, execution: EmuExecution | None = None,
                       exec_type: str | None = None) -> dict[str, Any]:
    """``ORDER_TRADE_UPDATE``: ``x`` the execution type (NEW, TRADE, CANCELED, EXPIRED,
    CALCULATED for a liquidation), ``X`` the order status, ``c`` the client order id."""
    x = exec_type or ("TRADE" if execution is not None else "NEW")
    if execution is not None and execution.exec_type == "BustTrade":
        x = "CALCULATED"
    status = order_status(order)
    if execution is not None:
        status = "FILLED" if execution.leaves_qty <= 0 else "PARTIALLY_FILLED"
    return {
        "e": "ORDER_TRADE_UPDATE", "E": now_ms, "T": execution.time_ms if execution else order.updated_ms,
        "o": {
            "s": order.symbol, "c": client_id(order), "S": _side(order.side), "o": "MARKET", "f": "GTC",
            "q": fmt(order.qty, i.step), "p": "0", "ap": fmt(order.avg_price, i.tick) if order.cum_qty else "0",
            "sp": fmt(order.trigger_price, i.tick), "x": x, "X": status, "i": order_id(order),
            "l": fmt(execution.qty, i.step) if execution else "0", "z": fmt(order.cum_qty, i.step),
            "L": fmt(execution.price, i.tick) if execution else "0", "N": "USDT",
            "n": fmt(execution.fee) if execution else "0", "T": execution.time_ms if execution else order.updated_ms,
            "t": int(execution.exec_id) if execution else 0, "b": "0", "a": "0", "m": False,
            "R": order.reduce_only, "wt": order.working_type or "CONTRACT_PRICE",
            "ot": order.order_type if order.conditional else "MARKET", "ps": "BOTH", "cp": order.close_position,
            "rp": fmt(execution.realised_pnl) if execution else "0", "pP": False, "si": 0, "ss": 0,
            "V": "EXPIRE_MAKER", "pm": "NONE", "gtd": 0, "er": "0",
        },
    }


def algo_update(order: EmuOrder, i: Instrument, *, now_ms: int, status: str | None = None) -> dict[str, Any]:
    """``ALGO_UPDATE``: ``caid`` the client algo id, ``aid`` the algo id, ``X`` the algo status
    (``status`` overrides it: TRIGGERING, the step before TRIGGERED), ``ai`` the actual order id
    once triggered."""
    return {
        "e": "ALGO_UPDATE", "T": order.updated_ms, "E": now_ms,
        "o": {
            "caid": order.link_id, "aid": int(order.order_id), "at": "CONDITIONAL", "o": order.order_type,
            "s": order.symbol, "S": _side(order.side), "ps": "BOTH", "f": "GTC", "q": fmt(order.qty, i.step),
            "X": status or algo_status(order), "ai": order.fill_order_id if status != "TRIGGERING" else "", "ap": fmt(order.avg_price, i.tick) if order.cum_qty else "0",
            "aq": fmt(order.cum_qty, i.step), "act": "0", "tp": fmt(order.trigger_price, i.tick), "p": "0",
            "V": "EXPIRE_MAKER", "wt": order.working_type or "CONTRACT_PRICE", "pm": "NONE",
            "cp": order.close_position, "pP": False, "R": order.reduce_only, "tt": order.triggered_ms, "gtd": 0,
        },
    }


def account_update(p: EmuPosition, i: Instrument, *, balance: float, now_ms: int) -> dict[str, Any]:
    """``ACCOUNT_UPDATE`` for an order-driven change: the wallet and the changed position."""
    amount = _signed_size(p)
    return {
        "e": "ACCOUNT_UPDATE", "E": now_ms, "T": p.updated_ms,
        "a": {
            "m": "ORDER",
            "B": [{"a": "USDT", "wb": fmt(balance), "cw": fmt(balance), "bc": "0"}],
            "P": [{"s": p.symbol, "pa": fmt(amount, i.step) if amount else "0", "ep": fmt(p.avg_price),
                   "bep": fmt(p.avg_price), "cr": fmt(p.realised_pnl), "up": fmt((p.mark_price - p.avg_price) * amount),
                   "mt": "cross", "iw": "0", "ps": "BOTH", "ma": i.settle}],
        },
    }


def trade_lite(e: EmuExecution, i: Instrument, *, now_ms: int) -> dict[str, Any]:
    order = e.order
    return {
        "e": "TRADE_LITE", "E": now_ms, "T": e.time_ms, "s": order.symbol, "q": fmt(e.qty, i.step), "p": "0",
        "m": False, "c": client_id(order), "S": _side(e.side), "L": fmt(e.price, i.tick), "l": fmt(e.qty, i.step),
        "t": int(e.exec_id), "i": order_id(order),
    }
