"""ccxt's unified structures (dicts) -> posguard's Structs.

ccxt has already parsed the venue's payload (``parse_order``, ``parse_position``,
``parse_trade`` and their WebSocket twins); this module only decides what those fields mean
for posguard, in one place for REST answers and pushed events alike, so the two can never
disagree about, say, whether a cancelled-after-partial-fill order counts as filled.
"""

from __future__ import annotations

from typing import Any

from posguard.streams.venue.events import Execution, Order, OrderKind, OrderStatus, Position
from posguard.streams.venue.markets import QTY_TOLERANCE, MarketRules

__all__ = [
    "CcxtDict",
    "UnmappablePayload",
    "TAKE_PROFIT_TYPES",
    "closes_position",
    "filled_by_take_profit",
    "is_take_profit",
    "is_usdt_linear_perpetual",
    "market_rules",
    "order_kind",
    "order_status",
    "to_execution",
    "to_order",
    "to_position",
]

CcxtDict = dict[str, Any]
"""One of ccxt's unified structures (an order, a trade, a position, a market) or a raw
message: ccxt ships no types for them, so the name at least says whose shape it is."""


class UnmappablePayload(ValueError):
    """ccxt returned something posguard cannot read as an order/position/execution."""


def is_usdt_linear_perpetual(market: CcxtDict) -> bool:
    return bool(
        market.get("swap")
        and market.get("linear")
        and market.get("settle") == "USDT"
        and market.get("active") is not False
        and not market.get("expiry")
    )


def market_rules(market: CcxtDict) -> MarketRules:
    """The rules checked before an order is sent (I7), from a ccxt market."""
    precision = market.get("precision") or {}
    limits = market.get("limits") or {}
    step = _positive(precision.get("amount"), "precision.amount", market)
    tick = _positive(precision.get("price"), "precision.price", market)
    minimums = [
        (limits.get(kind) or {}).get("min") for kind in ("amount", "market")
    ]
    min_qty = max([float(m) for m in minimums if m] or [step])
    min_notional = float((limits.get("cost") or {}).get("min") or 0.0)
    # posguard sends market orders: the smaller of the two maxima binds (Bybit: lotSizeFilter.maxOrderQty;
    # Binance: LOT_SIZE and MARKET_LOT_SIZE maxQty).
    maximums = [float(m) for m in ((limits.get(kind) or {}).get("max") for kind in ("amount", "market")) if m]
    max_qty = min(maximums) if maximums else 0.0
    return MarketRules(symbol=market["symbol"], qty_step=step, min_qty=min_qty, price_tick=tick,
                       min_notional=min_notional, max_qty=max_qty)


def _positive(value: object, name: str, market: CcxtDict) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = 0.0
    if number <= 0:
        raise UnmappablePayload(f"market {market.get('symbol')}: {name} is {value!r}, expected a positive number")
    return number


def _float(value: object, default: float = 0.0) -> float:
    if value is None or value == "":
        return default
    return float(value)  # type: ignore[arg-type]


def _price(value: object) -> float | None:
    """Venues write "no price" as null, "" or 0."""
    number = _float(value)
    return number if number > 0 else None


def to_order(order: CcxtDict, *, now_ms: int) -> Order:
    side = order.get("side")
    symbol = order.get("symbol")
    if side not in ("buy", "sell") or not symbol:
        raise UnmappablePayload(f"order without side or symbol: id={order.get('id')!r}")
    stop_price = _price(order.get("triggerPrice") or order.get("stopPrice"))
    kind = order_kind(stop_price, take_profit=is_take_profit(order.get("info") or {}))
    filled = _float(order.get("filled"))
    amount = order.get("amount")
    qty = _float(amount, filled)
    return Order(
        symbol=symbol,
        order_id=str(order.get("id") or ""),
        client_order_id=str(order.get("clientOrderId") or ""),
        side=side,
        kind=kind,
        qty=qty,
        filled=filled,
        avg_price=_price(order.get("average")),
        status=order_status(order.get("status"), kind=kind, filled=filled, qty=qty),
        reduce_only=bool(order.get("reduceOnly")),
        stop_price=stop_price,
        ts_ms=int(order.get("lastUpdateTimestamp") or order.get("timestamp") or now_ms),
        closes_position=kind != "market" and closes_position(order),
    )


TAKE_PROFIT_TYPES = frozenset({"TAKE_PROFIT_MARKET", "TAKE_PROFIT", "TakeProfit", "PartialTakeProfit"})
"""How the venues name a take-profit order: Binance's ``type``/``origType``/``orderType`` (REST),
``ot`` (ORDER_TRADE_UPDATE: the triggered order's original type), ``o`` (ALGO_UPDATE); Bybit's
``stopOrderType`` (the position's own take-profit, listed among its conditional orders)."""
_TYPE_FIELDS = ("stopOrderType", "orderType", "origType", "type", "ot", "o")


def is_take_profit(info: CcxtDict) -> bool:
    """Whether the venue's own payload (ccxt's ``info``) names the order a take-profit: the one
    rule, for REST answers and pushed frames alike (`frames` asks it too). A take-profit is
    never counted as a stop (`posguard.actors.coverage`)."""
    return any(isinstance(value := info.get(name), str) and value in TAKE_PROFIT_TYPES for name in _TYPE_FIELDS)


def order_kind(stop_price: float | None, *, take_profit: bool) -> OrderKind:
    """A conditional order is a take-profit where the venue says so, else a stop."""
    if stop_price is None:
        return "market"
    return "take_profit" if take_profit else "stop"


def closes_position(order: CcxtDict) -> bool:
    """Whether the venue says this stop closes the whole position at trigger: Binance's
    ``closePosition`` (REST, algo and plain books) or ``cp`` (user-data stream pushes, the
    ``o`` of ORDER_TRADE_UPDATE and ALGO_UPDATE). ccxt keeps both in ``info`` only. Bybit has
    no such order (its stops are sized): always False there."""
    info = order.get("info") or {}
    raw = info.get("closePosition", info.get("cp"))
    return raw is True or str(raw).lower() == "true"


def order_status(status: object, *, kind: str, filled: float, qty: float) -> OrderStatus:
    """ccxt's order status in posguard's terms.

    ccxt calls a market order that was cancelled after a partial fill ``closed``; posguard
    calls it ``cancelled`` (final, ``filled`` tells how much). A stop that ccxt calls
    ``closed`` has triggered: its fill belongs to the order it spawned, so it counts as
    ``filled`` whatever its own filled amount says.
    """
    if status in ("open", "canceling"):
        return "partially_filled" if filled > QTY_TOLERANCE else "open"
    if status == "closed":
        if kind != "market" or filled >= qty - QTY_TOLERANCE:
            return "filled"
        return "cancelled"
    if status in ("canceled", "cancelled", "expired"):
        return "cancelled"
    if status == "rejected":
        return "rejected"
    raise UnmappablePayload(f"unknown order status {status!r}")


def to_position(position: CcxtDict, *, now_ms: int) -> Position:
    symbol = position.get("symbol")
    if not symbol:
        raise UnmappablePayload("position without a symbol")
    size = abs(_float(position.get("contracts")))
    side = position.get("side")
    mark_price, seq, ts_ms = _price(position.get("markPrice")), _seq(position), _ts(position, now_ms)
    if size <= QTY_TOLERANCE:
        return Position(symbol=symbol, side="flat", size=0.0, entry_price=0.0, stop_price=None,
                        mark_price=mark_price, seq=seq, ts_ms=ts_ms)
    if side not in ("long", "short"):
        raise UnmappablePayload(f"{symbol}: open position of size {size} without a side ({side!r})")
    return Position(
        symbol=symbol,
        side=side,
        size=size,
        entry_price=_float(position.get("entryPrice")),
        stop_price=_price(position.get("stopLossPrice")),
        take_profit=_price(position.get("takeProfitPrice")),
        mark_price=mark_price,
        liq_price=_price(position.get("liquidationPrice")),
        seq=seq,
        ts_ms=ts_ms,
    )


def _seq(position: CcxtDict) -> int:
    """Bybit's cross sequence of the position (REST list and push alike), which ccxt leaves
    in ``info`` only. Bybit writes -1 for a symbol never traded; Binance has none: both 0."""
    raw = (position.get("info") or {}).get("seq")
    try:
        return max(0, int(raw))
    except (TypeError, ValueError):
        return 0


def _ts(item: CcxtDict, now_ms: int) -> int:
    return int(item.get("lastUpdateTimestamp") or item.get("timestamp") or now_ms)


def to_execution(trade: CcxtDict, *, client_order_id: str, now_ms: int) -> Execution:
    side = trade.get("side")
    symbol = trade.get("symbol")
    if side not in ("buy", "sell") or not symbol or not trade.get("id"):
        raise UnmappablePayload(f"execution without id, side or symbol: {trade.get('id')!r}")
    return Execution(
        symbol=symbol,
        exec_id=str(trade["id"]),
        order_id=str(trade.get("order") or ""),
        client_order_id=client_order_id,
        side=side,
        qty=_float(trade.get("amount")),
        price=_float(trade.get("price")),
        ts_ms=int(trade.get("timestamp") or now_ms),
        by_take_profit=filled_by_take_profit(trade.get("info") or {}),
    )


def filled_by_take_profit(info: CcxtDict) -> bool:
    """Whether the venue marks a fill as its take-profit's: Bybit's execution ``stopOrderType``
    ``TakeProfit`` (https://bybit-exchange.github.io/docs/v5/websocket/private/execution and
    https://bybit-exchange.github.io/docs/v5/order/execution), the fill of a take-profit the
    position holds, which carries no client order id of ours."""
    return info.get("stopOrderType") in ("TakeProfit", "PartialTakeProfit")
