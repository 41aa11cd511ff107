"""Bybit's side of an order request: the V5 body parsed into the engine's `NewOrder`, and the
engine's rejects written as Bybit writes them (retCode, retMsg).

The form checks (category, side, orderType, positionIdx, orderLinkId) are Bybit's own; what
the engine refuses (a duplicate id, nothing to reduce, a stop that would trigger, ...) comes
back as a `Reject` and `REJECTS` turns it into Bybit's code and message.
"""

from __future__ import annotations

import re
from typing import Any

from posguard.streams.emulators.engine.matching import EmuOrder, Engine, NewOrder, Reject, parse_bool

__all__ = ["LINK_ID", "REJECTS", "VenueReject", "cancel_order", "create_order", "set_trading_stop"]

LINK_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}$")

REJECTS: dict[str, tuple[int, str]] = {
    "bad_symbol": (10001, "params error: symbol invalid"),
    "bad_qty": (10001, "params error: qty invalid"),
    "qty_step": (10001, "Qty invalid: must be a positive multiple of {step}"),
    "qty_min": (10001, "The number of contracts exceeds minimum limit allowed"),
    "qty_max": (10001, "The number of contracts exceeds maximum limit allowed"),
    "duplicate_id": (110072, "OrderLinkedID is duplicate"),
    "nothing_to_reduce": (110017, "current position is zero, cannot fix reduce-only order qty"),
    "would_trigger:rising": (110092, "expect Rising, but trigger_price[{trigger}] <= current[{price}]??LastPrice"),
    "would_trigger:falling": (110093, "expect Falling, but trigger_price[{trigger}] >= current[{price}]??LastPrice"),
    "min_notional": (110094, "Order does not meet minimum order value {min_notional}USDT"),
    "insufficient_margin": (110007, "ab not enough for new order"),
    "stop_loss_side:Buy": (10001, "StopLoss:{stop_loss} set for Buy position should lower than base_price:{price}??LastPrice"),
    "stop_loss_side:Sell": (10001, "StopLoss:{stop_loss} set for Sell position should higher than base_price:{price}??LastPrice"),
    # The same check on the other side (Bybit writes its TP refusals the way it writes its SL ones).
    "take_profit_side:Buy": (10001, "TakeProfit:{take_profit} set for Buy position should higher than base_price:{price}??LastPrice"),
    "take_profit_side:Sell": (10001, "TakeProfit:{take_profit} set for Sell position should lower than base_price:{price}??LastPrice"),
    "not_found": (110001, "order not exists or too late to cancel"),
    "close_position_exists": (10001, "params error: closePosition is not a Bybit parameter"),
    "too_many_conditionals": (10001, "params error: too many conditional orders"),
    "nothing_to_close": (10001, "params error: closePosition is not a Bybit parameter"),
    "zero_position": (10001, "can not set tp/sl/ts for zero position"),
    "not_modified": (34040, "not modified"),
}


class VenueReject(Exception):
    """A request Bybit would refuse, with Bybit's retCode and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, reject: Reject) -> VenueReject:
        return cls(*reject.render(REJECTS))


def create_order(engine: Engine, body: dict[str, Any]) -> EmuOrder:
    """``POST /v5/order/create``'s body, checked as Bybit checks it, then matched."""
    try:
        return engine.create_order(_new_order(engine, body))
    except Reject as reject:
        raise VenueReject.of(reject) from None


def cancel_order(engine: Engine, body: dict[str, Any]) -> EmuOrder:
    """``POST /v5/order/cancel``: by ``orderId`` else ``orderLinkId``."""
    try:
        return engine.cancel_order(engine.find(body.get("orderId"), body.get("orderLinkId")), body.get("symbol"))
    except Reject as reject:
        raise VenueReject.of(reject) from None


def set_trading_stop(engine: Engine, body: dict[str, Any]) -> None:
    """``POST /v5/position/trading-stop``'s body, checked as Bybit documents it
    (https://bybit-exchange.github.io/docs/v5/position/trading-stop): ``category``, ``symbol``,
    ``tpslMode`` and ``positionIdx`` required; ``takeProfit``/``stopLoss`` "Cannot be less
    than 0, 0 means cancel"; the emulator holds Full mode, one-way, LastPrice triggers only."""
    if body.get("category") != "linear":
        raise VenueReject(10001, "params error: the emulator lists category=linear only")
    instrument = engine.instrument(body.get("symbol"))
    if body.get("tpslMode") not in ("Full", "Partial"):
        raise VenueReject(10001, "params error: tpslMode is required (Full or Partial)")
    if body.get("tpslMode") != "Full":
        raise VenueReject(10001, "params error: the emulator supports tpslMode=Full only")
    if body.get("positionIdx") in (None, ""):
        raise VenueReject(10001, "params error: positionIdx is required")
    if int(body.get("positionIdx") or 0) != 0:
        raise VenueReject(10001, "position idx not match position mode")
    for trigger_by in ("tpTriggerBy", "slTriggerBy"):
        if str(body.get(trigger_by) or "LastPrice") != "LastPrice":
            raise VenueReject(10001, f"params error: the emulator triggers by LastPrice only ({trigger_by})")
    given = {name: _num(body[name]) for name in ("stopLoss", "takeProfit") if body.get(name) not in (None, "")}
    if any(value < 0 for value in given.values()):
        raise VenueReject(10001, "params error: takeProfit and stopLoss cannot be less than 0")
    try:
        engine.set_trading_stop(instrument.symbol, stop_loss=given.get("stopLoss"), take_profit=given.get("takeProfit"))
    except Reject as reject:
        raise VenueReject.of(reject) from None


def _new_order(engine: Engine, body: dict[str, Any]) -> NewOrder:
    if body.get("category") != "linear":
        raise VenueReject(10001, "params error: the emulator lists category=linear only")
    instrument = engine.instrument(body.get("symbol"))
    side = body.get("side")
    if side not in ("Buy", "Sell"):
        raise VenueReject(10001, "params error: side invalid")
    if body.get("orderType") != "Market":
        raise VenueReject(10001, "params error: the emulator supports orderType=Market only")
    if int(body.get("positionIdx") or 0) != 0:
        raise VenueReject(10001, "position idx not match position mode")
    qty = engine.qty(instrument, body.get("qty"))
    link_id = str(body.get("orderLinkId") or "")
    if link_id and not LINK_ID.match(link_id):
        raise VenueReject(10001, "params error: orderLinkId invalid")
    if link_id and engine.clashes(link_id, conditional=bool(body.get("triggerPrice"))):
        raise VenueReject.of(Reject("duplicate_id"))
    reduce_only = parse_bool(body.get("reduceOnly"))
    trigger = _num(body.get("triggerPrice"))
    stop_loss = _num(body.get("stopLoss"))
    take_profit = _num(body.get("takeProfit"))
    if reduce_only and (stop_loss or take_profit):
        raise VenueReject(10001, "params error: TP/SL cannot be set on a reduce-only order")
    # Create order, https://bybit-exchange.github.io/docs/v5/order/create-order: takeProfit and
    # stopLoss attached to the order, tpslMode "Full" (the whole position's TP/SL, closed at market)
    # or "Partial"; the emulator holds Full only, as the position's own TP/SL.
    tpsl_mode = str(body.get("tpslMode") or "Full")
    if (stop_loss or take_profit) and tpsl_mode != "Full":
        raise VenueReject(10001, "params error: the emulator supports tpslMode=Full only")
    if take_profit and str(body.get("tpTriggerBy") or "LastPrice") != "LastPrice":
        raise VenueReject(10001, "params error: the emulator triggers take-profits by LastPrice only")
    direction = int(body.get("triggerDirection") or 0)
    if trigger:
        price = engine.prices[instrument.symbol]
        # Bybit checks the crossing before the direction's form: keep its order.
        if direction == 1 and trigger <= price:
            raise VenueReject.of(Reject("would_trigger", variant="rising", trigger=trigger, price=price))
        if direction == 2 and trigger >= price:
            raise VenueReject.of(Reject("would_trigger", variant="falling", trigger=trigger, price=price))
        if direction not in (1, 2):
            raise VenueReject(10001, "params error: triggerDirection must be 1 or 2")
    return NewOrder(
        symbol=instrument.symbol, side=side, qty=qty, client_id=link_id, reduce_only=reduce_only,
        close_on_trigger=parse_bool(body.get("closeOnTrigger")), stop_loss=stop_loss, take_profit=take_profit,
        trigger_price=trigger,
        trigger_direction=direction if trigger else 0,
    )


def _num(value: object) -> float:
    try:
        return float(value) if value not in (None, "") else 0.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise VenueReject(10001, f"params error: {value!r} is not a number") from None
