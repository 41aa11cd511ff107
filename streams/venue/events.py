"""What a venue tells us, as msgspec Structs.

The same Structs serve the REST answers and the pushed stream events: an order update *is*
an `Order` snapshot, a position update *is* a `Position` snapshot. One shape per fact means
the verification code never has to reconcile two spellings of the same thing (the seed bot
asked for positions two different ways and got two different answers).

`VenueEvent` is a tagged union so that the event journal in Redis can be decoded back into
the exact kind that was pushed.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "FINAL_ORDER_STATUSES",
    "TOPICS",
    "Execution",
    "Heartbeat",
    "Order",
    "OrderKind",
    "OrderSide",
    "OrderStatus",
    "Position",
    "PositionSide",
    "StreamStatus",
    "Topic",
    "VenueEvent",
    "closing_side",
    "decode_event",
    "encode_event",
    "position_side_of",
]

OrderSide = Literal["buy", "sell"]
PositionSide = Literal["long", "short", "flat"]
OrderKind = Literal["market", "stop", "take_profit"]
"""``stop``: a stop-loss order (it protects); ``take_profit``: a conditional order that closes in
the position's favour (Binance TAKE_PROFIT_MARKET). Only a ``stop`` ever counts as protection."""
OrderStatus = Literal["open", "partially_filled", "filled", "cancelled", "rejected"]
Topic = Literal["positions", "orders", "executions"]

FINAL_ORDER_STATUSES: frozenset[str] = frozenset({"filled", "cancelled", "rejected"})
TOPICS: tuple[Topic, ...] = ("positions", "orders", "executions")


class Order(msgspec.Struct, frozen=True, tag="order", kw_only=True):
    """One order as the venue sees it. ``status == "open"`` for a stop means "armed"."""

    symbol: str
    order_id: str
    client_order_id: str
    side: OrderSide
    kind: OrderKind
    qty: float
    filled: float
    avg_price: float | None
    status: OrderStatus
    reduce_only: bool
    stop_price: float | None
    ts_ms: int
    closes_position: bool = False
    """A stop that closes the whole position at trigger, whatever its size (Binance
    ``closePosition=true``): it covers the position at any size, its ``qty`` says nothing.
    The venue cancels it when the position is closed by other means."""

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_ORDER_STATUSES


class Position(msgspec.Struct, frozen=True, tag="position", kw_only=True):
    """A one-way-mode position. ``size == 0`` (side ``flat``) is the venue saying "flat".

    ``stop_price`` is a stop held by the position itself (Bybit's trading stop, which is
    where a stop-loss attached to the entry order ends up); separate stop orders are listed
    by `Venue.fetch_open_orders`.
    """

    symbol: str
    side: PositionSide
    size: float
    entry_price: float
    stop_price: float | None
    take_profit: float | None = None
    """A take-profit held by the position itself (Bybit's trading stop ``takeProfit``, where a
    take-profit attached to the entry ends up); None: none, or not given."""
    mark_price: float | None = None
    """The venue's mark price when the snapshot was taken (None: not given)."""
    liq_price: float | None = None
    """The venue's liquidation price for this position (None: not given or none)."""
    seq: int = 0
    """The venue's cross sequence for this snapshot (Bybit ``seq``); 0: not given."""
    ts_ms: int

    @property
    def is_open(self) -> bool:
        return self.size > 0


class Execution(msgspec.Struct, frozen=True, tag="execution", kw_only=True):
    """One fill. ``client_order_id`` is empty for fills we did not originate (liquidation)."""

    symbol: str
    exec_id: str
    order_id: str
    client_order_id: str
    side: OrderSide
    qty: float
    price: float
    ts_ms: int
    by_take_profit: bool = False
    """The venue says a take-profit it triggered made this fill (Bybit's execution
    ``stopOrderType`` ``TakeProfit``): how a take-profit attached to the entry, which fills
    under no client order id of ours, is told from a stop-loss or a liquidation."""


class StreamStatus(msgspec.Struct, frozen=True, tag="stream", kw_only=True):
    """A private stream went down or came back. Sent on every disconnect and reconnect.

    While a topic is down, events may have been missed: nothing may be concluded from their
    absence, and waiting actors switch to REST at once. ``reason`` is ``"connected"`` for the
    first connection and ``"reconnected"`` after a drop (which makes the supervisor audit).
    """

    topic: Topic
    connected: bool
    reason: str
    ts_ms: int


class Heartbeat(msgspec.Struct, frozen=True, tag="heartbeat", kw_only=True):
    """Proof of life from a quiet stream, so that silence can be told from an idle account."""

    topic: Topic
    ts_ms: int


VenueEvent = Order | Position | Execution | StreamStatus | Heartbeat

_event_decoder = msgspec.json.Decoder(VenueEvent)
_encoder = msgspec.json.Encoder()


def encode_event(event: VenueEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> VenueEvent:
    return _event_decoder.decode(data)


def closing_side(position_side: PositionSide) -> OrderSide:
    """The order side that reduces a position of this side."""
    if position_side == "flat":
        raise ValueError("a flat position has no closing side")
    return "sell" if position_side == "long" else "buy"


def position_side_of(order_side: OrderSide) -> PositionSide:
    """The position an opening order of this side creates (one-way mode)."""
    return "long" if order_side == "buy" else "short"
