"""The venue contract: the `Venue` protocol, the events it pushes, its errors and market rules.

Everything else in posguard is written against these names only, so a venue (ccxt.pro, the
simulated one) can be swapped without the actors noticing.
"""

from posguard.streams.venue.errors import (
    DuplicateClientOrderId,
    NothingToReduce,
    OrderRejected,
    RateLimited,
    NothingToClose,
    StopSlotTaken,
    StopWouldTrigger,
    UnknownSymbol,
    VenueAuthFailed,
    VenueError,
    VenueUnavailable,
)
from posguard.streams.venue.events import (
    FINAL_ORDER_STATUSES,
    TOPICS,
    Execution,
    Heartbeat,
    Order,
    OrderKind,
    OrderSide,
    OrderStatus,
    Position,
    PositionSide,
    StreamStatus,
    Topic,
    VenueEvent,
    closing_side,
    decode_event,
    encode_event,
    position_side_of,
)
from posguard.streams.venue.markets import QTY_TOLERANCE, MarketRules
from posguard.streams.venue.protocol import OrderRequest, StopRequest, Venue

__all__ = [
    "FINAL_ORDER_STATUSES",
    "QTY_TOLERANCE",
    "TOPICS",
    "DuplicateClientOrderId",
    "Execution",
    "Heartbeat",
    "MarketRules",
    "NothingToReduce",
    "Order",
    "OrderKind",
    "OrderRejected",
    "OrderRequest",
    "OrderSide",
    "OrderStatus",
    "Position",
    "PositionSide",
    "RateLimited",
    "StopRequest",
    "NothingToClose",
    "StopSlotTaken",
    "StopWouldTrigger",
    "StreamStatus",
    "Topic",
    "UnknownSymbol",
    "Venue",
    "VenueAuthFailed",
    "VenueError",
    "VenueEvent",
    "VenueUnavailable",
    "closing_side",
    "decode_event",
    "encode_event",
    "position_side_of",
]
