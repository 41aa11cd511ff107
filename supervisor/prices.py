"""The freshest price an entry can be checked against, and the leverage it will carry.

Every entry is checked against the market before anything is sent (issue 13, defect 6): the
stop on the right side of the price and inside the liquidation price, and the priced risk
limits. The price is the newest of what the venue pushed (a position's mark price) and the
last ticker read, if either is younger than ``risk.price_max_age``; otherwise one ticker read,
retried with backoff for up to ``risk.price_deadline`` seconds (a 5xx or a rate limit is
transient: it must not refuse an entry, defect 9). These reads run in the symbol's actor, so
a slow ticker delays only that symbol's entries.
"""

from __future__ import annotations

import logging
import random

import anyio

from posguard.actors.intents import IntentRefused
from posguard.streams.backoff import Backoff, Deadline, sleep_within
from posguard.streams.ingestion.evidence import EvidenceBoard
from posguard.streams.venue.errors import VenueError, VenueUnavailable
from posguard.streams.venue.protocol import Venue

__all__ = ["LEVERAGE_MAX_AGE", "PriceReader"]

log = logging.getLogger("posguard.engine")

LEVERAGE_MAX_AGE = 60.0
"""Seconds a symbol's leverage, once read, is used without asking again (it changes only when
someone sets it; the venue's own liquidation price is checked after the fill anyway)."""


class PriceReader:
    def __init__(
        self, venue: Venue, board: EvidenceBoard, *, max_age: float, deadline: float, default_leverage: float,
        backoff: Backoff, rng: random.Random,
    ) -> None:
        self.venue = venue
        self.board = board
        self.max_age = max_age
        self.deadline = deadline
        self.default_leverage = default_leverage
        self.backoff = backoff
        self.rng = rng
        self._tickers: dict[str, tuple[float, float]] = {}  # symbol -> (anyio time read, price)
        self._leverage: dict[str, tuple[float, float]] = {}  # symbol -> (anyio time read, leverage)

    def _fresh(self, symbol: str) -> float | None:
        """The newest pushed mark price or ticker read, if it is no older than ``max_age``."""
        pushed = self.board.position(symbol)
        if pushed is not None and pushed.mark_price and self.venue.now_ms() - pushed.ts_ms <= self.max_age * 1000:
            return pushed.mark_price
        cached = self._tickers.get(symbol)
        if cached is not None and anyio.current_time() - cached[0] <= self.max_age:
            return cached[1]
        return None

    async def price(self, symbol: str) -> float:
        """A price no older than ``max_age``: pushed, cached, or read now (`IntentRefused` when
        the venue gave none within ``deadline``)."""
        fresh = self._fresh(symbol)
        if fresh is not None:
            return fresh
        deadline = Deadline(self.deadline)
        delays = self.backoff.delays(self.rng)
        while True:
            try:
                price = await self.venue.fetch_price(symbol)
            except VenueUnavailable as exc:
                log.warning("%s: reading the last price failed (%s); retrying for %.1f s more", symbol, exc,
                            deadline.remaining)
                if not await sleep_within(next(delays), deadline):
                    raise IntentRefused(
                        f"price: could not read the last price of {symbol} within {self.deadline:g} s"
                        f" (risk.price_deadline; last error: {exc}); nothing was sent, send it again"
                    ) from None
                continue
            self._tickers[symbol] = (anyio.current_time(), price)
            return price

    async def latest(self, symbol: str) -> float | None:
        """As `price`, but with one read and no retries: for a watch that looks again soon
        anyway (the stop-fill watch). None when the venue gave none this time."""
        fresh = self._fresh(symbol)
        if fresh is not None:
            return fresh
        try:
            price = await self.venue.fetch_price(symbol)
        except VenueError as exc:  # unavailable, refused, a symbol gone: no price this time
            log.warning("%s: reading the last price failed (%s); looking again later", symbol, exc)
            return None
        self._tickers[symbol] = (anyio.current_time(), price)
        return price

    async def leverage(self, symbol: str) -> tuple[float, str]:
        """The symbol's leverage and where it came from (the venue, or ``risk.default_leverage``
        when the venue cannot tell or does not answer: never a reason to refuse by itself)."""
        now = anyio.current_time()
        cached = self._leverage.get(symbol)
        if cached is not None and now - cached[0] <= LEVERAGE_MAX_AGE:
            return cached[1], "venue"
        try:
            leverage = await self.venue.fetch_leverage(symbol)
        except VenueUnavailable as exc:
            log.warning("%s: could not read the leverage (%s); estimating with risk.default_leverage %gx", symbol,
                        exc, self.default_leverage)
            leverage = None
        if leverage is None or leverage <= 0:
            return self.default_leverage, "risk.default_leverage"
        self._leverage[symbol] = (now, leverage)
        return leverage, "venue"
