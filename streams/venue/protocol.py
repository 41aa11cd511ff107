"""The `Venue` protocol: the only way posguard talks to an exchange.

There is exactly one way to ask each question (one `fetch_positions`, one order lookup by
client order id), so two code paths can never disagree about what the exchange holds.
Implementations: `posguard.streams.simulated.FakeVenue` (in memory, with fault knobs) and
`posguard.streams.ccxt_adapter.venue.CcxtVenue` (ccxt.pro).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec
from anyio.abc import ObjectSendStream

from posguard.streams.venue.events import Execution, Order, OrderSide, Position, VenueEvent
from posguard.streams.venue.markets import MarketRules

__all__ = [
    "AmendRequest",
    "IDS_KEPT_FOR_GOOD",
    "ID_REUSE_GRACE",
    "OrderRequest",
    "StopRequest",
    "UnknownOrderRule",
    "Venue",
    "ids_reusable_once_closed",
]

ID_REUSE_GRACE = 60.0
"""The least grace, in seconds, before an entry is resent on a venue that reuses closed orders'
ids: Binance's REST has been measured calling fresh orders "does not exist" for 22 s and 62 s."""


class OrderRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A market order. ``stop_loss`` attaches a stop to the entry where the venue can;
    ``take_profit`` a take-profit beside it (`Venue.supports_attached_stop` says for both:
    Bybit V5 create order ``takeProfit`` with ``tpslMode=Full``, held by the position and
    closing all of it when it triggers)."""

    symbol: str
    side: OrderSide
    qty: float
    client_order_id: str
    reduce_only: bool = False
    stop_loss: float | None = None
    take_profit: float | None = None


class StopRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A reduce-only stop-market order. ``side`` is the side of the order that closes."""

    symbol: str
    side: OrderSide
    qty: float
    stop_price: float
    client_order_id: str
    whole_position: bool = True
    """Ask for a stop that closes the whole position at trigger, whatever its size then, where
    the venue has one (Binance ``closePosition=true``; the order then says
    `Order.closes_position`). Elsewhere, or False, the stop is sized to ``qty``. A venue that
    allows one such stop per side refuses a second with `StopSlotTaken`."""
    take_profit: bool = False
    """A take-profit instead of a stop-loss: it triggers when the price reaches ``stop_price``
    in the position's favour (above it for a long) and closes reduce-only (Binance
    ``TAKE_PROFIT_MARKET``); the order's kind is ``take_profit``. Never protection."""


class AmendRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Change the stop-loss and/or take-profit the position itself holds, in place (Bybit V5
    ``POST /v5/position/trading-stop`` with ``tpslMode=Full``: "Full position TP/SL orders:
    This API can be used to modify parameters of existing TP/SL orders",
    https://bybit-exchange.github.io/docs/v5/position/trading-stop). The position keeps its
    old stop until the venue takes the new one: it is never bare. Only where
    `Venue.supports_attached_stop`."""

    symbol: str
    stop_loss: float | None = None
    """The new stop-loss trigger price; None: unchanged."""
    take_profit: float | None = None
    """The new take-profit trigger price; 0: removed (Bybit: "0 means cancel TP"); None: unchanged."""


class UnknownOrderRule(msgspec.Struct, frozen=True, kw_only=True):
    """What the venue's "no such order" is worth: the venue's rule, not the actor's (I3).

    A resend goes under the same client order id, so it is harmless only where the venue
    refuses a repeat for good (Bybit's orderLinkId: 110072). Where an id is unique only among
    open orders (Binance), a filled entry's id is free again and a resend opens a second
    position, so "unknown" alone never earns an entry's resend there.
    """

    unknown_is_final: bool
    """True when an order the venue has kept calling unknown (both its open and history
    books) for `VerificationSettings.lookup_grace`, with no fill and no position, can be taken
    as never placed (the audit then settles it rejected)."""
    entry_grace: float | None = None
    """Seconds an entry must stay unknown before it may be resent; None: the actor's
    `VerificationSettings.lookup_grace`. Stops and closes (reduce-only, they cannot open a
    position) always use lookup_grace."""
    entry_needs_silence: bool = False
    """An entry is resent only if, over ``entry_grace``, nothing says it reached the venue: no
    push of it, no execution on the symbol since it was sent, no position of the symbol
    dated since then (or open). Any of these: it is verified from that, never resent."""

    def grace_for_entry(self, lookup_grace: float) -> float:
        """Seconds an entry must stay unknown before "unknown" says anything about it: the
        venue's own grace, or the actor's ``lookup_grace`` where the venue has none."""
        return self.entry_grace if self.entry_grace is not None else lookup_grace


IDS_KEPT_FOR_GOOD = UnknownOrderRule(unknown_is_final=True)
"""Bybit's rule (and the simulated venue's by default): a reused id is refused for good."""


def ids_reusable_once_closed(grace: float = ID_REUSE_GRACE) -> UnknownOrderRule:
    """Binance's rule: ids unique among open orders only, "does not exist" for a while."""
    return UnknownOrderRule(unknown_is_final=False, entry_grace=grace, entry_needs_silence=True)


@runtime_checkable
class Venue(Protocol):
    """An exchange account trading linear perpetuals in one-way mode.

    Errors are the classes of `posguard.streams.venue.errors`; an implementation never lets a library's own
    exception escape, so callers decide by class, not by message.
    """

    @property
    def name(self) -> str:
        """Short venue name for metrics and logs (``fake``, ``bybit``, ``binanceusdm``)."""
        ...

    @property
    def supports_attached_stop(self) -> bool:
        """True when `OrderRequest.stop_loss` (and `OrderRequest.take_profit`) are honoured at
        the fill (the position's own stop and take-profit)."""
        ...

    @property
    def unknown_order_rule(self) -> UnknownOrderRule:
        """When an order this venue calls unknown may be taken as never placed, or resent."""
        ...

    def now_ms(self) -> int:
        """The venue's clock in ms, as well as it is known here: the timebase of ``ts_ms``
        fields and of `fetch_executions`'s ``since_ms``."""
        ...

    async def load_markets(self) -> dict[str, MarketRules]:
        """The tradeable symbols and their rules. Called once at start-up."""
        ...

    async def fetch_price(self, symbol: str) -> float:
        """The last traded price: for risk checks and for stops given as a distance."""
        ...

    async def fetch_leverage(self, symbol: str) -> float | None:
        """The account's leverage on ``symbol`` (the liquidation estimate of an entry); None
        when the venue does not say."""
        ...

    async def create_order(self, request: OrderRequest) -> Order:
        """Send a market order. Raises `VenueUnavailable` when the outcome is unknown."""
        ...

    async def place_stop(self, request: StopRequest) -> Order:
        """Arm a reduce-only stop-market order (or, with `StopRequest.take_profit`, a
        take-profit-market one). The returned order has status ``open``."""
        ...

    async def cancel_order(self, symbol: str, client_order_id: str) -> Order | None:
        """Cancel by client order id. None when the venue has no such open order."""
        ...

    async def amend_attached(self, request: AmendRequest) -> None:
        """Set the position's own stop-loss / take-profit in place (`AmendRequest`). Returns
        once the venue accepted it; `StopWouldTrigger` when a price is on the wrong side of
        the market (nothing changed), `VenueUnavailable` when the outcome is unknown (setting
        the same values again is harmless). Only where `supports_attached_stop`."""
        ...

    async def fetch_order(self, symbol: str, client_order_id: str, *, conditional: bool | None = None) -> Order | None:
        """Look an order up by client order id, open or closed. None: the venue says unknown.

        ``conditional``: the caller knows the id is a stop's (True) or a plain order's (False);
        a venue that keeps conditional orders in a service of their own (Binance's algo
        orders) then asks that one only, so that one service being down does not hide an
        order the other holds. None: every one."""
        ...

    async def fetch_executions(self, symbol: str, since_ms: int) -> list[Execution]:
        """Fills on ``symbol`` at or after ``since_ms``, oldest first."""
        ...

    async def fetch_positions(self, symbol: str | None = None) -> list[Position]:
        """Open positions: every one of the account when ``symbol`` is None (the audit's
        snapshot), else ``symbol``'s alone (at most one in one-way mode), asked of the venue for
        that symbol only, so that an actor's fallback costs the same on an account of 10 or of
        10,000 positions. The one and only way to list positions."""
        ...

    async def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        """Open orders, armed stops included; all symbols when ``symbol`` is None."""
        ...

    async def stream(self, sink: ObjectSendStream[VenueEvent]) -> None:
        """Push private events (positions, orders, executions, stream status) until cancelled.

        Sends a `StreamStatus` on every disconnect and reconnect; after a reconnect it is the
        consumer's business to fill the gap by REST, never to assume nothing happened.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
