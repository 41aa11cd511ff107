"""The engine's records written the way Bybit V5 writes them (REST lists and WS pushes).

Numbers are strings, "no value" is ``"0"`` or ``""`` as Bybit has it, and the field names
are Bybit's: the adapter under test must parse the real shapes, so these follow the
documentation's examples field for field where ccxt reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from posguard.streams.emulators.engine.matching import fmt
from posguard.streams.venue.events import PositionSide
from posguard.streams.venue.liquidation import DEFAULT_LEVERAGE, MAINTENANCE_MARGIN_RATE, estimated_liquidation_price

__all__ = ["execution_payload", "fmt", "order_payload", "position_payload"]

if TYPE_CHECKING:
    from posguard.streams.emulators.engine.instruments import Instrument
    from posguard.streams.emulators.engine.matching import EmuExecution, EmuOrder, EmuPosition


def order_payload(order: EmuOrder, instrument: Instrument) -> dict[str, Any]:
    tick, step = instrument.tick, instrument.step
    return {
        "category": "linear",
        "symbol": order.symbol,
        "orderId": order.order_id,
        "orderLinkId": order.link_id,
        "blockTradeId": "",
        "price": "0",
        "qty": fmt(order.qty, step),
        "side": order.side,
        "isLeverage": "",
        "positionIdx": 0,
        "orderStatus": order.status,
        "createType": order.create_type,
        "cancelType": order.cancel_type,
        "rejectReason": order.reject_reason,
        "avgPrice": fmt(order.avg_price, tick) if order.cum_qty else "",
        "leavesQty": fmt(order.qty - order.cum_qty if order.is_open else 0.0, step),
        "leavesValue": "0",
        "cumExecQty": fmt(order.cum_qty, step),
        "cumExecValue": fmt(order.cum_value),
        "cumExecFee": fmt(order.cum_value * 0.00055),
        "cumFeeDetail": {"USDT": fmt(order.cum_value * 0.00055)} if order.cum_qty else {},
        "timeInForce": "IOC",
        "orderType": "Market",
        "stopOrderType": order.stop_order_type,
        "orderIv": "",
        "triggerPrice": fmt(order.trigger_price, tick),
        "takeProfit": fmt(order.take_profit, tick),
        "stopLoss": fmt(order.stop_loss, tick),
        "tpslMode": "Full" if order.stop_loss or order.take_profit else "",
        "tpLimitPrice": "0",
        "slLimitPrice": "0",
        "tpTriggerBy": "LastPrice" if order.take_profit else "",
        "slTriggerBy": "LastPrice" if order.stop_loss else "",
        "triggerDirection": order.trigger_direction,
        "triggerBy": "LastPrice" if order.trigger_price else "",
        "lastPriceOnCreated": fmt(order.last_price_on_created, tick),
        "reduceOnly": order.reduce_only,
        "closeOnTrigger": order.close_on_trigger,
        "placeType": "",
        "smpType": "None",
        "smpGroup": 0,
        "smpOrderId": "",
        "createdTime": str(order.created_ms),
        "updatedTime": str(order.updated_ms),
    }


def position_payload(position: EmuPosition, instrument: Instrument, mark_price: float) -> dict[str, Any]:
    """One position, the same in ``GET /v5/position/list`` and the ``position`` push
    (https://bybit-exchange.github.io/docs/v5/position and
    https://bybit-exchange.github.io/docs/v5/websocket/private/position): ``markPrice``,
    ``liqPrice`` ("" when there is none) and ``seq``, the cross sequence of the fill that last
    changed the position (Bybit: -1 for a symbol never traded; compare it per symbol only).
    """
    tick, step = instrument.tick, instrument.step
    value = position.size * position.avg_price
    side: PositionSide = "long" if position.side == "Buy" else "short"
    liq_price = estimated_liquidation_price(side, position.avg_price, DEFAULT_LEVERAGE) if position.size else None
    return {
        "category": "linear",
        "symbol": position.symbol,
        "positionIdx": 0,
        "riskId": 1,
        "riskLimitValue": "2000000",
        "side": position.side,
        "size": fmt(position.size, step),
        "avgPrice": fmt(position.avg_price, "0.00000001"),
        "entryPrice": fmt(position.avg_price, "0.00000001"),
        "positionValue": fmt(value),
        "tradeMode": 0,
        "autoAddMargin": 0,
        "positionStatus": "Normal",
        "leverage": fmt(DEFAULT_LEVERAGE),
        "markPrice": fmt(mark_price, tick),
        "liqPrice": fmt(liq_price, tick) if liq_price is not None else "",
        "bustPrice": "",
        "positionIM": fmt(value / DEFAULT_LEVERAGE),
        "positionMM": fmt(value * MAINTENANCE_MARGIN_RATE),
        "positionBalance": fmt(value / DEFAULT_LEVERAGE),
        "takeProfit": fmt(position.take_profit, tick),
        "stopLoss": fmt(position.stop_loss, tick),
        "trailingStop": "0",
        "unrealisedPnl": fmt((mark_price - position.avg_price) * position.size * (1 if position.side == "Buy" else -1)),
        "curRealisedPnl": fmt(position.realised_pnl),
        "cumRealisedPnl": fmt(position.realised_pnl),
        "adlRankIndicator": 2 if position.size else 0,
        "isReduceOnly": False,
        "tpslMode": "Full",
        "createdTime": str(position.created_ms),
        "updatedTime": str(position.updated_ms),
        "seq": position.seq or -1,
    }


def execution_payload(execution: EmuExecution, instrument: Instrument, prices: dict[str, float]) -> dict[str, Any]:
    order = execution.order
    tick, step = instrument.tick, instrument.step
    value = execution.qty * execution.price
    return {
        "category": "linear",
        "symbol": order.symbol,
        "execId": execution.exec_id,
        "execPrice": fmt(execution.price, tick),
        "execQty": fmt(execution.qty, step),
        "execType": execution.exec_type,
        "execValue": fmt(value),
        "execFee": fmt(value * 0.00055),
        "feeRate": "0.00055",
        "feeCurrency": "USDT",
        "isMaker": False,
        "tradeIv": "",
        "markIv": "",
        "blockTradeId": "",
        "markPrice": fmt(prices[order.symbol], tick),
        "indexPrice": "",
        "underlyingPrice": "",
        "leavesQty": fmt(execution.leaves_qty, step),
        "orderId": order.order_id,
        "orderLinkId": order.link_id,
        "orderPrice": fmt(execution.price, tick),
        "orderQty": fmt(order.qty, step),
        "orderType": "Market",
        "stopOrderType": order.stop_order_type or "UNKNOWN",
        "side": execution.side,
        "execTime": str(execution.time_ms),
        "isLeverage": "0",
        "closedSize": fmt(execution.closed_size, step),
        "createType": order.create_type,
        "seq": execution.seq,
    }
