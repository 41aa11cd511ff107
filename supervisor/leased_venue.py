"""The venue as the lease holder may use it: no order, stop, cancel or close is sent unless the
lease is surely still ours for ``lease.margin`` more seconds (README, "One owner per account").

Redis' fencing refuses a stale process's *writes*; the venue cannot check a token, so the
holder checks before each action, by its local clock (`Lease.holds`). The refusal is
`LeaseNotHeld`, a `NotPlaced`: raised before anything is sent, so the lifecycle treats it as
"not placed, send it again later" (`actors.orders.send_once`), never as an unknown outcome
that would need a lookup (on Binance an entry looked up waits `venue.resend_grace` and would go
`unverified` for an order that never existed). Reads pass within the margin (they change
nothing on the venue) but not once the lease has run out by the local clock or the fence is
lost: a process woken from a pause (SIGSTOP, a frozen VM) sends nothing at all.
"""

from __future__ import annotations

from typing import Any

from posguard.actors.store.lease import Lease
from posguard.streams.venue.errors import NotPlaced
from posguard.streams.venue.events import Order
from posguard.streams.venue.protocol import OrderRequest, StopRequest, Venue

__all__ = ["LeaseNotHeld", "LeasedVenue"]


class LeaseNotHeld(NotPlaced):
    """Not sent: this process may no longer hold the account's lease (or was fenced). The
    process exits shortly (code 5); the leader, or the next one, carries the step on."""


class LeasedVenue:
    """`Venue` that refuses actions without the lease; everything else is the inner venue's."""

    def __init__(self, inner: Venue, lease: Lease, *, margin: float) -> None:
        self.inner = inner
        self.lease = lease
        self.margin = margin
        self.refused = 0
        """Actions refused (none of them reached the venue)."""

    def _check(self, what: str, margin: float | None = None) -> None:
        if not self.lease.holds(self.margin if margin is None else margin):
            self.refused += 1
            why = self.lease.fence.why or f"less than lease.margin ({self.margin:g} s) of the lease is left"
            raise LeaseNotHeld(f"{what} not sent: {why}")

    async def create_order(self, request: OrderRequest) -> Order:
        self._check(f"order {request.client_order_id}")
        return await self.inner.create_order(request)

    async def place_stop(self, request: StopRequest) -> Order:
        self._check(f"stop {request.client_order_id}")
        return await self.inner.place_stop(request)

    async def cancel_order(self, symbol: str, client_order_id: str) -> Order | None:
        self._check(f"cancel of {client_order_id}")
        return await self.inner.cancel_order(symbol, client_order_id)

    async def _read(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self._check(f"read {name}", margin=0.0)
        return await getattr(self.inner, name)(*args, **kwargs)

    async def load_markets(self) -> Any:
        return await self._read("load_markets")

    async def fetch_price(self, symbol: str) -> float:
        return await self._read("fetch_price", symbol)

    async def fetch_leverage(self, symbol: str) -> float | None:
        return await self._read("fetch_leverage", symbol)

    async def fetch_order(self, symbol: str, client_order_id: str, *, conditional: bool | None = None) -> Order | None:
        return await self._read("fetch_order", symbol, client_order_id, conditional=conditional)

    async def fetch_executions(self, symbol: str, since_ms: int) -> Any:
        return await self._read("fetch_executions", symbol, since_ms)

    async def fetch_positions(self, symbol: str | None = None) -> Any:
        return await self._read("fetch_positions", symbol)

    async def fetch_open_orders(self, symbol: str | None = None) -> Any:
        return await self._read("fetch_open_orders", symbol)

    def __getattr__(self, name: str) -> Any:
        # Reads, properties and adapter extras (statistics, stream) are the inner venue's.
        return getattr(self.inner, name)
