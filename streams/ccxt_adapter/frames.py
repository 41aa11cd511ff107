"""Private WebSocket frames decoded straight into posguard's events, with msgspec.

Why: ccxt.pro's own handlers (JSON into dicts, its parsers, its caches, its futures) and then
posguard's second parse of the same items cost about 130 µs per pushed item; one msgspec pass
from the frame's text into typed Structs and then into `Order` / `Position` / `Execution`
costs a few µs. ccxt keeps everything else: REST, markets, signing, the connection, and every
frame this module does not take (acknowledgements, pongs, errors, other topics).

ccxt stays the reference: each function below is ccxt's parse (``parse_order`` /
``parse_trade`` / ``parse_position`` and their WebSocket twins, then ``safe_order``) followed by
posguard's `posguard.streams.ccxt_adapter.mapping`, written out for the fields posguard reads, and
``tests/test_ccxt_frames.py`` decodes the same frames both ways and compares them field by
field. Where the two could ever differ the frame is not taken: `decode_bybit` and
`decode_binance` return ``None`` ("not mine") for any frame they cannot decode whole (unknown
topic or event, a field of an unexpected type, an error envelope, markets not loaded, a
mapping that refuses), and the hook then hands that frame to ccxt exactly as before. All or
nothing per frame: no event of a frame is produced before every item of it has decoded.

Venue documentation for the fields: Bybit V5 private streams
(https://bybit-exchange.github.io/docs/v5/websocket/private/order, ``.../position``,
``.../execution``); Binance USD-M user data streams
(https://developers.binance.com/docs/derivatives/usds-margined-futures/user-data-streams,
``Event-Order-Update``, ``Event-Balance-and-Position-Update``, ``Event-Algo-Order-Update``).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from posguard.streams.ccxt_adapter.mapping import (
    UnmappablePayload,
    filled_by_take_profit,
    is_take_profit,
    order_kind,
    order_status,
)
from posguard.streams.venue.events import Execution, Order, Position, VenueEvent
from posguard.streams.venue.markets import QTY_TOLERANCE

__all__ = ["BYBIT_EXEC_TYPES", "FrameDecoder", "MarketOf", "decode_binance", "decode_bybit"]

BYBIT_EXEC_TYPES = ("Trade", "AdlTrade", "BustTrade")
"""Executions that change a position: fills, auto-deleveraging, liquidation. Not funding."""

MarketOf = Callable[[str, str], "tuple[str, Decimal] | None"]
"""(venue market id, ccxt market type: ``contract``/``spot``/``swap``) -> (the unified symbol
ccxt's ``safe_market`` resolves it to, the market's contract size), or None when markets are
not loaded (the frame then goes to ccxt)."""

FrameDecoder = Callable[[str | bytes, MarketOf, int], "list[VenueEvent] | None"]
"""(frame text, market resolver, now in ms) -> its events, or None: not mine, hand it to ccxt."""

Text = str | int | float | None
"""A venue field ccxt reads with ``safe_string``: text or a number; ``""`` and null are absent."""


# -- ccxt's safe_* readers, for values msgspec has already typed ------------------------------


def _s(value: Text | UnsetType | bool) -> str | None:
    """ccxt's ``safe_string``: "" and null are absent, numbers become text, a bool is absent."""
    if value is None or value is UNSET or value == "" or type(value) is bool:
        return None
    return value if type(value) is str else str(value)


def _first(*values: Text | UnsetType) -> str | None:
    """ccxt's ``safe_string_n``: the first value present."""
    for value in values:
        text = _s(value)
        if text is not None:
            return text
    return None


def _int(value: Text | UnsetType) -> int | None:
    """ccxt's ``safe_integer``: ``int(float(value))``, None if that fails."""
    try:
        return int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def _nonzero(text: str | None) -> str | None:
    """ccxt's ``omit_zero``."""
    if text is None or float(text) == 0:
        return None
    return text


def _num(text: str | None) -> float | None:
    return None if text is None else float(text)


def _price(number: float | None) -> float | None:
    """posguard's reading: venues write "no price" as null, "" or 0 (`mapping._price`)."""
    return number if number is not None and number > 0 else None


def _dec(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise UnmappablePayload(f"not a number: {text!r}") from None


def _text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _order(
    *, symbol: str, contract_size: Decimal, order_id: str | None, client_order_id: str | None, side: str | None,
    amount: str | None, filled: str | None, remaining: str | None, cost: str | None, average: str | None,
    status: str | None, trigger: str | None, reduce_only: bool | None, ts_ms: int | None, created_ms: int | None,
    closes: bool, now_ms: int, take_profit: bool = False,
) -> Order:
    """ccxt's ``safe_order`` (the fields posguard reads) then `mapping.to_order`, in one."""
    amount = _nonzero(amount)
    if amount is None:
        if filled is not None and remaining is not None:
            amount = _text(_dec(filled) + _dec(remaining))
        elif status == "closed":
            amount = filled
    if filled is None:
        if amount is not None and remaining is not None:
            filled = _text(_dec(amount) - _dec(remaining))
        elif status == "closed" and amount is not None:
            filled = amount
    average = _nonzero(average)
    if average is None and filled is not None and cost is not None and float(filled) > 0:
        average = str(_dec(cost) / (_dec(filled) * contract_size))
    if side not in ("buy", "sell") or not symbol:
        raise UnmappablePayload(f"order without side or symbol: id={order_id!r}")
    stop_price = _price(_num(trigger))
    kind = order_kind(stop_price, take_profit=take_profit)
    filled_qty = float(filled) if filled is not None else 0.0
    qty = float(amount) if amount is not None else filled_qty
    return Order(
        symbol=symbol, order_id=order_id or "", client_order_id=client_order_id or "", side=side, kind=kind, qty=qty,
        filled=filled_qty, avg_price=_price(_num(average)),
        status=order_status(status, kind=kind, filled=filled_qty, qty=qty), reduce_only=bool(reduce_only),
        stop_price=stop_price, ts_ms=ts_ms or created_ms or now_ms, closes_position=kind != "market" and closes,
    )


# -- Bybit V5 -----------------------------------------------------------------------------------

_BYBIT_STATUS = {
    "Created": "open", "New": "open", "Rejected": "rejected", "PartiallyFilled": "open",
    "PartiallyFilledCanceled": "closed", "Filled": "closed", "PendingCancel": "open", "Cancelled": "canceled",
    "Untriggered": "open", "Deactivated": "canceled", "Triggered": "open", "Active": "open",
}
"""ccxt's ``bybit.parse_order_status`` for the contract statuses (others pass through as
themselves, as in ccxt, and `order_status` refuses them)."""


class _BybitOrder(msgspec.Struct):
    symbol: str = ""
    orderId: Text = None
    orderLinkId: Text = None
    side: Text = None
    qty: Text = None
    cumExecQty: Text = None
    leavesQty: Text = None
    cumExecValue: Text = None
    avgPrice: Text = None
    orderStatus: Text = None
    triggerPrice: Text = None
    stopOrderType: Text = None
    reduceOnly: bool | None = None
    createdTime: Text = None
    createdAt: Text = None
    updatedTime: Text = None
    updatedAt: Text = None
    tpslMode: Text | UnsetType = UNSET
    """ccxt reads a contract market only when this field is present (else spot)."""
    code: Text | UnsetType = UNSET
    """ccxt's rejected-order shape: left to ccxt."""


class _BybitExecution(msgspec.Struct):
    symbol: str = ""
    execId: Text = None
    id: Text = None
    tradeId: Text = None
    orderId: Text = None
    orderLinkId: Text = None
    side: Text = None
    isBuyer: Text = None
    execQty: Text = None
    orderQty: Text = None
    size: Text = None
    execPrice: Text = None
    orderPrice: Text = None
    price: Text = None
    time: Text = None
    execTime: Text = None
    tradeTime: Text = None
    execType: Text = "Trade"
    stopOrderType: Text = None
    category: Text = None
    createType: Text | UnsetType = UNSET


class _BybitPosition(msgspec.Struct):
    symbol: str = ""
    size: Text = None
    qty: Text = None
    side: Text = None
    positionIdx: Text = None
    closedSize: Text | UnsetType = UNSET
    markPrice: Text = None
    entryPrice: Text = None
    avgPrice: Text = None
    avgEntryPrice: Text = None
    liqPrice: Text = None
    stop_loss: Text = None
    stopLoss: Text = None
    take_profit: Text = None
    takeProfit: Text = None
    seq: Text = None
    createdTime: Text = None
    createdAt: Text = None
    updatedTime: Text = None
    updatedAt: Text = None
    updated_at: Text | UnsetType = UNSET


class _BybitEnvelope(msgspec.Struct, tag_field="topic"):
    """What makes ccxt treat a frame as something other than data: then it is ccxt's."""

    success: Any = UNSET
    retCode: Any = UNSET
    ret_code: Any = UNSET
    ret_msg: Any = UNSET
    op: Any = UNSET
    event: Any = UNSET
    pong: Any = UNSET
    type: Any = UNSET


class _BybitOrders(_BybitEnvelope, tag="order"):
    data: list[_BybitOrder] = []


class _BybitExecutions(_BybitEnvelope, tag="execution"):
    data: list[_BybitExecution] = []


class _BybitPositions(_BybitEnvelope, tag="position"):
    data: list[_BybitPosition] = []


_bybit_frame = msgspec.json.Decoder(_BybitOrders | _BybitExecutions | _BybitPositions)


def decode_bybit(data: str | bytes, market_of: MarketOf, now_ms: int) -> list[VenueEvent] | None:
    """A Bybit V5 private frame of the ``order``, ``execution`` or ``position`` topic as
    posguard's events (items of other markets included: the stream filters by symbol); None
    for any other frame or any frame not decodable whole."""
    return _whole(_bybit_frame, _BybitEnvelope, _bybit_events, data, market_of, now_ms)


def _bybit_events(frame: Any, market_of: MarketOf, now_ms: int) -> list[VenueEvent] | None:
    match frame:
        case _BybitOrders():
            return [e for item in frame.data if (e := _bybit_order(item, market_of, now_ms)) is not None]
        case _BybitExecutions():
            return [e for item in frame.data if (e := _bybit_execution(item, market_of, now_ms)) is not None]
        case _BybitPositions():
            return [_bybit_position(item, market_of, now_ms) for item in frame.data]
    return None


def _whole(
    decoder: msgspec.json.Decoder[Any], envelope: type[msgspec.Struct],
    events_of: Callable[[Any, MarketOf, int], list[VenueEvent] | None], data: str | bytes, market_of: MarketOf,
    now_ms: int,
) -> list[VenueEvent] | None:
    """All or nothing: the frame's events, or None (ccxt's) if any part of it does not read,
    or if it carries a field that makes ccxt read it as something else (``envelope``)."""
    try:
        frame = decoder.decode(data)
        for name in envelope.__struct_fields__:
            if getattr(frame, name) is not UNSET:
                return None
        return events_of(frame, market_of, now_ms)
    except (_NotMine, msgspec.DecodeError, msgspec.ValidationError, UnmappablePayload, ValueError, TypeError,
            ArithmeticError):
        return None


class _NotMine(Exception):
    """This frame is ccxt's to handle (markets not loaded, a shape ccxt reads differently)."""


def _market(market_of: MarketOf, market_id: str, kind: str) -> tuple[str, Decimal]:
    market = market_of(market_id, kind)
    if market is None:
        raise _NotMine
    return market


def _bybit_order(item: _BybitOrder, market_of: MarketOf, now_ms: int) -> Order | None:
    if item.code is not UNSET:
        raise _NotMine
    # ccxt's market type: a contract only when tpslMode is present, else spot (and with only
    # linear markets loaded, ccxt's safe_market then answers the one market of that id).
    symbol, contract_size = _market(market_of, item.symbol, "contract" if item.tpslMode is not UNSET else "spot")
    raw_status = _s(item.orderStatus)
    side = _s(item.side)
    return _order(
        symbol=symbol, contract_size=contract_size, order_id=_s(item.orderId), client_order_id=_s(item.orderLinkId),
        side=side.lower() if side is not None else None, amount=_s(item.qty), filled=_s(item.cumExecQty),
        remaining=_s(item.leavesQty), cost=_s(item.cumExecValue), average=_s(item.avgPrice),
        status=_BYBIT_STATUS.get(raw_status, raw_status) if raw_status is not None else None,
        trigger=_nonzero(_s(item.triggerPrice)), reduce_only=item.reduceOnly,
        ts_ms=_first_int(item.updatedTime, item.updatedAt), created_ms=_first_int(item.createdTime, item.createdAt),
        closes=False, now_ms=now_ms, take_profit=is_take_profit({"stopOrderType": _s(item.stopOrderType)}),
    )


def _first_int(*values: Text) -> int | None:
    """ccxt's ``safe_integer_2`` / ``safe_integer_n``: the first key that reads as an integer."""
    for value in values:
        number = _int(value)
        if number is not None:
            return number
    return None


def _bybit_execution(item: _BybitExecution, market_of: MarketOf, now_ms: int) -> Execution | None:
    if item.execType not in BYBIT_EXEC_TYPES:
        return None  # funding and the like: not a change of the position (`HookedBybit.handle_my_trades`)
    kind = "contract" if item.createType is not UNSET else "spot"
    category = _s(item.category)
    if category is not None:
        kind = "spot" if category == "spot" else "contract"
    symbol, _ = _market(market_of, item.symbol, kind)
    side = _s(item.side)
    if side is not None:
        side = side.lower()
    else:
        buyer = _int(item.isBuyer)
        if buyer is not None:
            side = "buy" if buyer != 0 else "sell"
    exec_id = _first(item.execId, item.id, item.tradeId)
    if side not in ("buy", "sell") or not symbol or not exec_id:
        raise UnmappablePayload(f"execution without id, side or symbol: {exec_id!r}")
    amount = _first(item.execQty, item.orderQty, item.size)
    price = _first(item.execPrice, item.orderPrice, item.price)
    return Execution(
        symbol=symbol, exec_id=exec_id, order_id=_s(item.orderId) or "",
        client_order_id=str(item.orderLinkId or ""), side=side,
        qty=float(amount) if amount is not None else 0.0, price=float(price) if price is not None else 0.0,
        ts_ms=_first_int(item.time, item.execTime, item.tradeTime) or now_ms,
        by_take_profit=filled_by_take_profit({"stopOrderType": _s(item.stopOrderType)}),
    )


def _bybit_position(item: _BybitPosition, market_of: MarketOf, now_ms: int) -> Position:
    if item.updated_at is not UNSET:
        raise _NotMine  # an older shape ccxt parses as ISO 8601: leave it to ccxt
    symbol, _ = _market(market_of, item.symbol, "contract")
    size_text = _first(item.size, item.qty)
    size = abs(float(size_text)) if size_text is not None else 0.0
    side = _s(item.side)
    index = _s(item.positionIdx)
    if index is not None and index != "0":
        side = "long" if index == "1" else "short"
    elif side is not None:
        history = item.closedSize is not UNSET and _s(item.closedSize) is not None
        side = {"Buy": "short" if history else "long", "Sell": "long" if history else "short"}.get(side)
    return _position(
        symbol=symbol, size=size, side=side, entry=_nonzero(_first(item.entryPrice, item.avgPrice, item.avgEntryPrice)),
        mark=_s(item.markPrice), liq=_nonzero(_s(item.liqPrice)), stop=_first(item.stop_loss, item.stopLoss),
        take_profit=_first(item.take_profit, item.takeProfit), seq=_seq(item.seq),
        ts_ms=_first_int(item.updatedTime, item.updatedAt) or _first_int(item.createdTime, item.createdAt) or now_ms,
    )


def _seq(raw: Text) -> int:
    """`mapping._seq`: Bybit's cross sequence, 0 when absent or -1 (never traded)."""
    try:
        return max(0, int(raw))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 0


def _position(*, symbol: str, size: float, side: str | None, entry: str | None, mark: str | None, liq: str | None,
              stop: str | None, seq: int, ts_ms: int, take_profit: str | None = None) -> Position:
    """`mapping.to_position`, from the fields ccxt's parse leaves."""
    if not symbol:
        raise UnmappablePayload("position without a symbol")
    mark_price = _price(_num(mark))
    if size <= QTY_TOLERANCE:
        return Position(symbol=symbol, side="flat", size=0.0, entry_price=0.0, stop_price=None,
                        mark_price=mark_price, seq=seq, ts_ms=ts_ms)
    if side not in ("long", "short"):
        raise UnmappablePayload(f"{symbol}: open position of size {size} without a side ({side!r})")
    return Position(symbol=symbol, side=side, size=size, entry_price=_num(entry) or 0.0, stop_price=_price(_num(stop)),
                    take_profit=_price(_num(take_profit)), mark_price=mark_price, liq_price=_price(_num(liq)), seq=seq,
                    ts_ms=ts_ms)


# -- Binance USD-M ------------------------------------------------------------------------------

_BINANCE_STATUS = {
    "NEW": "open", "PARTIALLY_FILLED": "open", "ACCEPTED": "open", "TRIGGERING": "open", "FILLED": "closed",
    "TRIGGERED": "closed", "FINISHED": "closed", "CANCELED": "canceled", "CANCELLED": "canceled",
    "PENDING_CANCEL": "canceling", "REJECTED": "rejected", "EXPIRED": "expired", "EXPIRED_IN_MATCH": "expired",
    "S": "ok", "F": "rejected",
}
"""ccxt's ``binance.parse_order_status``."""


class _BinanceOrder(msgspec.Struct):
    """The ``o`` of ORDER_TRADE_UPDATE and of ALGO_UPDATE."""

    s: str = ""
    i: Text = None
    aid: Text | UnsetType = UNSET
    c: Text = None
    C: Text = None
    caid: Text = None
    S: Text = None
    q: Text = None
    z: Text = None
    Z: Text = None
    ap: Text = None
    X: Text = None
    x: Text = None
    P: Text = None
    sp: Text = None
    tp: Text = None
    R: bool | None = None
    cp: Any = None
    closePosition: Any = UNSET
    T: Text | UnsetType = UNSET
    O: Text = None  # noqa: E741 - Binance's name
    t: Text = None
    a: Text = None
    L: Text = None
    p: Text = None
    l: Text = None  # noqa: E741 - Binance's name
    ps: Text | UnsetType = UNSET
    e: Any = UNSET
    ot: Text = None
    o: Text = None


class _BinanceEnvelope(msgspec.Struct, tag_field="e"):
    """What makes ccxt's ``handle_message`` treat a frame as an error, an answer or a wrapper."""

    stream: Any = UNSET
    status: Any = UNSET
    error: Any = UNSET
    id: Any = UNSET
    event: Any = UNSET
    data: Any = UNSET


class _BinanceOrderUpdate(_BinanceEnvelope, tag="ORDER_TRADE_UPDATE"):
    o: _BinanceOrder = msgspec.field(default_factory=_BinanceOrder)


class _BinanceAlgoUpdate(_BinanceEnvelope, tag="ALGO_UPDATE"):
    T: Text = None
    o: _BinanceOrder = msgspec.field(default_factory=_BinanceOrder)


class _BinancePosition(msgspec.Struct):
    s: str = ""
    pa: Text = None
    ep: Text = None
    ps: Text = None


class _BinanceAccount(msgspec.Struct):
    P: list[_BinancePosition] | None = None


class _BinanceAccountUpdate(_BinanceEnvelope, tag="ACCOUNT_UPDATE"):
    E: Any = None
    a: _BinanceAccount | None = None


_binance_frame = msgspec.json.Decoder(_BinanceOrderUpdate | _BinanceAlgoUpdate | _BinanceAccountUpdate)


def decode_binance(data: str | bytes, market_of: MarketOf, now_ms: int) -> list[VenueEvent] | None:
    """A Binance USD-M user-data frame (ORDER_TRADE_UPDATE, ALGO_UPDATE, ACCOUNT_UPDATE) as
    posguard's events, in the order ccxt's handlers hand them over (a fill's execution before
    its order); None for any other frame or any frame not decodable whole."""
    return _whole(_binance_frame, _BinanceEnvelope, _binance_events, data, market_of, now_ms)


def _binance_events(frame: Any, market_of: MarketOf, now_ms: int) -> list[VenueEvent] | None:
    match frame:
        case _BinanceOrderUpdate():
            return _binance_order_update(frame.o, None, market_of, now_ms)
        case _BinanceAlgoUpdate():
            return _binance_order_update(frame.o, frame.T, market_of, now_ms)
        case _BinanceAccountUpdate():
            return _binance_positions(frame, market_of, now_ms)
    return None


def _binance_order_update(o: _BinanceOrder, outer_t: Text, market_of: MarketOf, now_ms: int) -> list[VenueEvent]:
    if isinstance(o.e, str) and o.e == "orderReport":
        raise _NotMine  # tokenized equities: ccxt's other shape
    kind = "contract" if o.ps is not UNSET else "spot"
    symbol, _ = _market(market_of, o.s, kind)
    contract_size = Decimal(1)  # ccxt's parse_ws_order reads no market: safe_order's default
    updated = o.T if o.T is not UNSET else outer_t  # ccxt keeps the outer time on an algo update
    events: list[VenueEvent] = []
    side = _s(o.S)
    side = side.lower() if side is not None else None
    if _s(o.x) == "TRADE":
        exec_id = _first(o.t, o.a)
        if side not in ("buy", "sell") or not symbol or not exec_id:
            raise UnmappablePayload(f"execution without id, side or symbol: {exec_id!r}")
        amount, price = _first(o.l, o.q), _first(o.L, o.p)
        events.append(Execution(
            symbol=symbol, exec_id=exec_id, order_id=_s(o.i) or "", client_order_id=str(o.c or ""), side=side,
            qty=float(amount) if amount is not None else 0.0, price=float(price) if price is not None else 0.0,
            ts_ms=_int(updated) or now_ms,  # type: ignore[arg-type]
        ))
    client_order_id = _first(o.C, o.caid)
    if client_order_id is None:
        client_order_id = _s(o.c)
    raw_status = _s(o.X)
    closes = o.closePosition if o.closePosition is not UNSET else o.cp
    events.append(_order(
        symbol=symbol, contract_size=contract_size, order_id=_first(o.i, o.aid), client_order_id=client_order_id,
        side=side, amount=_s(o.q), filled=_s(o.z), remaining=None, cost=_s(o.Z), average=_s(o.ap),
        status=_BINANCE_STATUS.get(raw_status, raw_status) if raw_status is not None else None,
        trigger=_nonzero(_first(o.P, o.sp, o.tp)), reduce_only=o.R,
        ts_ms=_int(updated), created_ms=_int(o.O),  # type: ignore[arg-type]
        closes=closes is True or str(closes).lower() == "true", now_ms=now_ms,
        take_profit=is_take_profit({"ot": _s(o.ot), "o": _s(o.o)}),
    ))
    return events


def _binance_positions(frame: _BinanceAccountUpdate, market_of: MarketOf, now_ms: int) -> list[VenueEvent]:
    events: list[VenueEvent] = []
    for raw in (frame.a.P if frame.a is not None else None) or []:
        symbol, _ = _market(market_of, raw.s, "swap")
        amount = _s(raw.pa)
        size = abs(float(amount)) if amount is not None else 0.0
        side = _s(raw.ps)
        side = side.lower() if side is not None else None
        if side == "both" and amount is not None and float(amount) != 0:
            side = "short" if float(amount) < 0 else "long"
        ep = _s(raw.ep)
        events.append(_position(symbol=symbol, size=size, side=side, entry=ep, mark=None, liq=None, stop=None,
                                seq=0, ts_ms=_int(frame.E) or now_ms))
    return events
