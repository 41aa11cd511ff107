"""The few errors a venue can raise, as the actor needs to tell them apart.

The actor's retry logic must never parse an exchange's message text. Every venue adapter maps
what it gets into one of these, and the actor decides from the class alone:

* `VenueUnavailable`: the request may or may not have taken effect (timeout, lost response,
  5xx, network). A write is followed by a lookup of its client order id before anything else.
* `NotPlaced`: a `VenueUnavailable` the venue answered before it took effect (our timestamp
  outside its window: Binance -1021, Bybit 10002). Nothing was placed, so it is sent again,
  under the same id, as soon as the clock is measured again: no lookup, no resend grace.
* `RateLimited`: a `NotPlaced` because the venue asked us to slow down (Bybit 10006, Binance
  429 / -1003): the gateway refused the request, nothing was placed; sent again, paced.
* `OrderRejected`: the venue refused the request; nothing was placed. Final. Two refusals
  change what the actor does next and have their own subclasses: `StopWouldTrigger`,
  `NothingToReduce`, `StopSlotTaken` and `NothingToClose`.
* `VenueAuthFailed`: the venue refused the API credentials (wrong key or secret, revoked,
  expired, missing permission or IP binding). Nothing was done, and retrying will not help
  until an operator fixes the key; the supervisor refuses entries meanwhile.
* `DuplicateClientOrderId`: an order with that client order id already exists, so an
  earlier attempt did reach the venue. Look it up; never send it again under a new id.
"""

from __future__ import annotations

__all__ = [
    "DuplicateClientOrderId",
    "NotPlaced",
    "NothingToClose",
    "NothingToReduce",
    "OrderRejected",
    "RateLimited",
    "StopSlotTaken",
    "StopWouldTrigger",
    "UnknownSymbol",
    "VenueAuthFailed",
    "VenueError",
    "VenueUnavailable",
]


class VenueError(Exception):
    """Base for everything a venue adapter raises on purpose."""


class VenueUnavailable(VenueError):
    """The outcome is unknown: the request may have been executed. Retry only after a lookup."""


class NotPlaced(VenueUnavailable):
    """The venue refused the request before it took effect, for a reason of ours that a retry
    fixes (the clock): nothing was placed, so it may be sent again at once under the same id.
    Callers that treat it as `VenueUnavailable` (look up first) stay safe, only slower: on a
    venue whose resend rule waits a minute of silence (Binance) the entry would then sit
    `unverified` for an order that never existed."""


class RateLimited(NotPlaced):
    """The venue is throttling us: it refused the request at its gateway, so nothing was
    placed. Sent again after a backoff, never looked up first: a lookup under a rate limit
    costs another refused call, and on Binance an entry looked up would wait out a minute's
    resend grace for an order that does not exist (a stop's lookup spent the whole stop
    budget of a 60 % error burst, and the position was closed instead of protected)."""


class VenueAuthFailed(VenueUnavailable):
    """The venue refused the API credentials. Nothing was done; retrying will not help until
    an operator fixes the key, but callers that treat it as `VenueUnavailable` stay safe."""


class OrderRejected(VenueError):
    """The venue refused the order and placed nothing. ``code`` is the venue's own code."""

    def __init__(self, reason: str, code: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class StopWouldTrigger(OrderRejected):
    """A stop was refused because the market is already through its price.

    Retrying cannot help: the stop would have fired. The position must be closed now.
    """


class StopSlotTaken(OrderRejected):
    """A whole-position stop was refused because one is already armed on that side (Binance
    ``-4130``: one ``closePosition`` stop per symbol and direction).

    Nothing was placed, and the stop already armed still guards the position. A replacement
    (posguard places the new stop before it cancels the old, never the other way round) is
    sent as a stop sized to the position instead (`StopRequest.whole_position` False).
    """


class NothingToClose(OrderRejected):
    """A whole-position stop was refused because there is no position (nor open order) on the
    side it would close yet (Binance ``-4509``: "Time in Force (TIF) GTE can only be used with
    open positions or open orders").

    Nothing was placed. It is NOT evidence that an entry was refused or never reached the
    venue (I1): an entry whose answer was lost may fill a moment later. The stop armed while
    an entry's outcome is unknown (`posguard.actors.lifecycle.armed_stop`) only tries again.
    """


class NothingToReduce(OrderRejected):
    """A reduce-only order was refused because there is no position (on that side) to reduce.

    The venue itself checked its book: this is positive evidence of "flat", unlike an empty
    (possibly lagging) position list.
    """


class DuplicateClientOrderId(VenueError):
    """The client order id is already known to the venue: an earlier attempt got through."""

    def __init__(self, client_order_id: str) -> None:
        super().__init__(f"client order id {client_order_id!r} already exists on the venue")
        self.client_order_id = client_order_id


class UnknownSymbol(VenueError):
    """The venue does not list this symbol (or not as a linear perpetual)."""
