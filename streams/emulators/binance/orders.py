"""Binance's side of an order request: ``POST /fapi/v1/order`` and ``POST /fapi/v1/algoOrder``
parameters parsed into the engine's `NewOrder`, and the engine's rejects written as Binance
writes them (``{"code": -2021, "msg": "Order would immediately trigger."}`` with HTTP 400).

Codes and messages: https://developers.binance.com/docs/derivatives/usds-margined-futures/error-code
Parameters: https://developers.binance.com/docs/derivatives/usds-margined-futures/trade/rest-api
(New Order) and .../trade/rest-api/New-Algo-Order. The rules enforced here, from those pages:

* ``newClientOrderId`` / ``clientAlgoId``: "A unique id among open orders" (`IdRule`
  ``open_only``), matching ``^[\\.A-Z\\:/a-z0-9_-]{1,36}$``.
* Since 2025-12-09 conditional types (STOP_MARKET, TAKE_PROFIT_MARKET, STOP, TAKE_PROFIT,
  TRAILING_STOP_MARKET) on ``/fapi/v1/order`` answer -4120 "Order type not supported for this
  endpoint. Please use the Algo Order API endpoints instead." (change log, 2025-11-06 notice).
* Algo ``quantity``: "Cannot be sent with closePosition=true(Close-All)" (-4137 "Quantity must
  be zero with closePosition equals true"); ``reduceOnly``: "Cannot be sent in Hedge Mode;
  cannot be sent with closePosition=true" (the emulator answers -1106 "Parameter 'reduceOnly'
  sent when not required." for ``reduceOnly=true`` with ``closePosition=true``);
  ``closePosition`` is "used with STOP_MARKET or TAKE_PROFIT_MARKET".
* Trigger direction is implied by side and type: a SELL STOP_MARKET (or a BUY
  TAKE_PROFIT_MARKET) triggers when the price falls to ``triggerPrice``; the opposite pairs
  when it rises. A trigger already crossed answers -2021.
* One open ``closePosition`` order per symbol, direction and type (-4130: a TAKE_PROFIT_MARKET
  may sit beside the STOP_MARKET, as Binance's own whole-position TP/SL places them; both armed
  together: github.com/Binance-docs/Binance_Futures_python/issues/100), at most
  `MAX_OPEN_ALGO_ORDERS` open conditional orders in the account (-4045, "Reach max stop order
  limit."): change log 2025-12-29, https://developers.binance.com/docs/derivatives/change-log
  ("The condtional order limits is 200 across all symbols", and the MAX_NUM_ALGO_ORDERS filter
  left exchangeInfo).
* A ``closePosition`` stop with no position (and no open order) on the side it would close is
  refused -4509 "Time in Force (TIF) GTE can only be used with open positions or open orders.
  Please ensure that positions are available." (HTTP 400; not on the error-code page, but the
  message of many independent field reports of exactly this case). One accepted while a
  position existed expires once the position is closed (ALGO_UPDATE status EXPIRED).

The emulator trades MARKET and the MARKET-triggered conditional types only: LIMIT and the
limit conditional types answer -1116 "Invalid orderType." (an emulator limitation, on purpose).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

from posguard.streams.emulators.engine.matching import EmuOrder, Engine, NewOrder, Reject, parse_bool

__all__ = [
    "ALGO_ONLY_TYPES", "BinanceReject", "CLIENT_ID", "MAX_OPEN_ALGO_ORDERS", "REJECTS", "algo_order", "market_order",
]

CLIENT_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
ALGO_ONLY_TYPES = frozenset({"STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT", "TRAILING_STOP_MARKET"})
EMULATED_ALGO_TYPES = frozenset({"STOP_MARKET", "TAKE_PROFIT_MARKET"})
MAX_OPEN_ALGO_ORDERS = 200
"""Open conditional orders in the account, across all symbols (Binance change log 2025-12-29)."""

REJECTS: dict[str, tuple[int, str]] = {
    "bad_symbol": (-1121, "Invalid symbol."),
    "bad_qty": (-1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed."),
    "qty_step": (-1111, "Precision is over the maximum defined for this asset."),
    "qty_min": (-4004, "Quantity less than min quantity."),
    "qty_max": (-4005, "Quantity greater than max quantity."),
    "duplicate_id": (-4116, "ClientOrderId is duplicated."),
    "duplicate_id:algo": (-20132, "The client algo id is duplicated."),
    "nothing_to_reduce": (-2022, "ReduceOnly Order is rejected."),
    "would_trigger": (-2021, "Order would immediately trigger."),
    "min_notional": (-4164, "Order's notional must be no smaller than {min_notional} (unless you choose reduce only)."),
    "insufficient_margin": (-2019, "Margin is insufficient."),
    "not_found": (-2013, "Order does not exist."),
    "close_position_exists": (-4130, "An open stop or take profit order with GTE and closePosition in the direction is existing."),
    "too_many_conditionals": (-4045, "Reach max stop order limit."),
    "nothing_to_close": (-4509, "Time in Force (TIF) GTE can only be used with open positions or open orders."
                                " Please ensure that positions are available."),
    "stop_loss_side": (-1106, "Parameter 'stopLoss' sent when not required."),
}


class BinanceReject(Exception):
    """A request Binance would refuse: its code, message and HTTP status."""

    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    @classmethod
    def of(cls, reject: Reject) -> BinanceReject:
        return cls(*reject.render(REJECTS))


def mandatory(params: Mapping[str, str], name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise BinanceReject(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return value


def market_order(engine: Engine, params: Mapping[str, str]) -> EmuOrder:
    """``POST /fapi/v1/order``: MARKET only; conditional types belong to the algo service."""
    try:
        instrument = engine.instrument(mandatory(params, "symbol"))
        side = _side(params)
        kind = mandatory(params, "type")
        if kind in ALGO_ONLY_TYPES:
            raise BinanceReject(-4120, "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead.")
        if kind != "MARKET":
            raise BinanceReject(-1116, "Invalid orderType.")
        _one_way(params)
        if parse_bool(params.get("closePosition")):
            raise BinanceReject(-1106, "Parameter 'closePosition' sent when not required.")
        qty = engine.qty(instrument, mandatory(params, "quantity"))
        client_id = _client_id(params, "newClientOrderId")
        return engine.create_order(NewOrder(
            symbol=instrument.symbol, side=side, qty=qty, client_id=client_id,
            reduce_only=parse_bool(params.get("reduceOnly")),
        ))
    except Reject as reject:
        raise BinanceReject.of(reject) from None


def algo_order(engine: Engine, params: Mapping[str, str]) -> EmuOrder:
    """``POST /fapi/v1/algoOrder`` with ``algoType=CONDITIONAL``: STOP_MARKET or TAKE_PROFIT_MARKET,
    with a ``quantity`` (reduce-only or not) or ``closePosition=true``."""
    try:
        if mandatory(params, "algoType") != "CONDITIONAL":
            raise BinanceReject(-1130, "Invalid data sent for a parameter.")
        instrument = engine.instrument(mandatory(params, "symbol"))
        side = _side(params)
        kind = mandatory(params, "type")
        if kind not in ALGO_ONLY_TYPES:
            raise BinanceReject(-1116, "Invalid orderType.")
        if kind not in EMULATED_ALGO_TYPES:
            raise BinanceReject(-1116, "Invalid orderType.")  # STOP/TAKE_PROFIT/TRAILING: not emulated
        _one_way(params)
        trigger = _price(mandatory(params, "triggerPrice"), "triggerPrice")
        working_type = params.get("workingType") or "CONTRACT_PRICE"
        if working_type not in ("MARK_PRICE", "CONTRACT_PRICE"):
            raise BinanceReject(-1130, "Invalid data sent for a parameter.")
        close_position = parse_bool(params.get("closePosition"))
        reduce_only = parse_bool(params.get("reduceOnly"))
        if close_position:
            if params.get("quantity") not in (None, "", "0"):
                raise BinanceReject(-4137, "Quantity must be zero with closePosition equals true")
            if reduce_only:
                raise BinanceReject(-1106, "Parameter 'reduceOnly' sent when not required.")
            qty = 0.0
        else:
            qty = engine.qty(instrument, mandatory(params, "quantity"))
        client_id = _client_id(params, "clientAlgoId")
        # A SELL stop (or BUY take-profit) waits for the price to fall to its trigger.
        falling = (side == "Sell") == (kind == "STOP_MARKET")
        try:
            return engine.create_order(NewOrder(
                symbol=instrument.symbol, side=side, qty=qty, client_id=client_id, reduce_only=reduce_only,
                trigger_price=trigger, trigger_direction=2 if falling else 1, close_position=close_position,
                working_type=working_type, order_type=kind,
            ))
        except Reject as reject:
            if reject.reason == "duplicate_id":
                raise BinanceReject(*REJECTS["duplicate_id:algo"]) from None
            raise
    except Reject as reject:
        raise BinanceReject.of(reject) from None


def _side(params: Mapping[str, str]) -> str:
    side = mandatory(params, "side")
    if side not in ("BUY", "SELL"):
        raise BinanceReject(-1117, "Invalid side.")
    return "Buy" if side == "BUY" else "Sell"


def _one_way(params: Mapping[str, str]) -> None:
    if params.get("positionSide", "BOTH") not in ("BOTH", ""):
        raise BinanceReject(-4061, "Order's position side does not match user's setting.")


def _client_id(params: Mapping[str, str], name: str) -> str:
    """The client's id, else one made up as Binance does ("Automatically generated if not sent")."""
    value = params.get(name, "")
    if value and not CLIENT_ID.match(value):
        raise BinanceReject(-4015, "Client order id is not valid.")
    return value or f"emu{uuid.uuid4().hex[:22]}"


def _price(raw: str, name: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise BinanceReject(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.") from None
    if value <= 0:
        raise BinanceReject(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return value
