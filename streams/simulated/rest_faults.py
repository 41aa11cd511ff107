"""What goes wrong with the simulated venue's REST calls: latency, errors, limits, outages.

Every call is counted, spends its round trip, and may fail before it takes effect: a failure
a test scripted, a 503 while REST is down, or a rate-limit or 5xx roll. A create-order may also
take effect and lose its response, which is the case I3 exists for.
"""

from __future__ import annotations

import random
from collections import Counter

import anyio

from posguard.streams.simulated.knobs import FaultKnobs
from posguard.streams.simulated.rng import KeyedRandom
from posguard.streams.simulated.scheduler import Scheduler
from posguard.streams.venue.errors import RateLimited, VenueUnavailable

__all__ = ["RestFaults"]


class RestFaults:
    """The REST side's call counts, scripted failures and outage state."""

    def __init__(self, *, knobs: FaultKnobs, calls: Counter[str], rng: KeyedRandom, scheduler: Scheduler) -> None:
        self._knobs = knobs
        self._calls = calls
        self._rng = rng
        self._scheduler = scheduler
        self._down_since: float | None = None
        self._outages: list[tuple[float, float]] = []
        self._scripted_failures: dict[str, list[Exception]] = {}

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def _set_down(self, down: bool) -> None:
        now = anyio.current_time()
        if down and self._down_since is None:
            self._down_since = now
        elif not down and self._down_since is not None:
            self._outages.append((self._down_since, now))
            self._down_since = None

    def outages(self) -> list[tuple[float, float]]:
        """Every outage so far as (start, end) in anyio time, one still under way ending now:
        what a test subtracts from a bare position's time (no stop can be placed meanwhile)."""
        running = [(self._down_since, anyio.current_time())] if self._down_since is not None else []
        return [*self._outages, *running]

    def fail_next(self, method: str, *errors: Exception) -> None:
        """Make the next calls of ``method`` raise these errors, in order, before any effect."""
        self._scripted_failures.setdefault(method, []).extend(errors)

    async def call(self, method: str, *, effect_follows: bool = False) -> None:
        """Count the call, spend the latency, and fail it before any effect when told to.

        Writes spend half the round trip here and half after taking effect, so a pushed
        event can overtake the response, as it does on real venues.
        """
        number = self._calls[method]
        self._calls[method] += 1
        await (self.half_trip(method) if effect_follows else anyio.sleep(self._latency(method)))
        scripted = self._scripted_failures.get(method)
        if scripted:
            raise scripted.pop(0)
        if self.down:
            raise VenueUnavailable(f"{method}: HTTP 503 (venue REST outage)")
        rng = self._rng(f"rest:{method}", number)
        roll = rng.random()
        if roll < self._knobs.rate_limit_rate:
            raise RateLimited(f"{method}: rate limit exceeded (HTTP 429)")
        if roll < self._knobs.rate_limit_rate + self._knobs.rest_error_rate:
            raise VenueUnavailable(f"{method}: HTTP 503 service unavailable")

    async def half_trip(self, method: str) -> None:
        await anyio.sleep(self._latency(method) / 2)

    def _latency(self, method: str) -> float:
        return self._knobs.rest_latency_by_method.get(method, self._knobs.rest_latency)

    def create_response_lost(self, rng: random.Random) -> bool:
        """Whether a create-order that took effect loses its response; some losses are the
        start of a REST outage (`outage_after_lost_response`)."""
        if self._knobs.lost_create_response_rate and rng.random() < self._knobs.lost_create_response_rate:
            if not self.down and rng.random() < self._knobs.outage_after_lost_response:
                self._set_down(True)
                self._scheduler.schedule(self._knobs.rest_outage_for.sample(rng), self._end_outage)
            return True
        return False

    def start_outages(self) -> None:
        """REST up for `rest_outage_every`, down for `rest_outage_for`, and again."""
        assert self._knobs.rest_outage_every is not None
        self._scheduler.schedule(self._knobs.rest_outage_every.sample(self._rng("outage", 0)), self._toggle_outage)

    def _toggle_outage(self) -> None:
        assert self._knobs.rest_outage_every is not None
        count = self._calls["rest_outage"]
        self._calls["rest_outage"] += 1
        self._set_down(not self.down)
        rng = self._rng("outage", count)
        lag = self._knobs.rest_outage_for if self.down else self._knobs.rest_outage_every
        self._scheduler.schedule(lag.sample(rng), self._toggle_outage)

    def _end_outage(self) -> None:
        self._set_down(False)
