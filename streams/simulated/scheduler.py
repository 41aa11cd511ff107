"""The simulated venue's clockwork: actions due at a time, run in time order by one task.

Delayed pushes, stop-outs, heartbeats, disconnects, outages and the price walk are all
scheduled actions, so under a mock clock they happen at exact virtual times and in a
reproducible order (ties go to the action scheduled first).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["Scheduler"]


class Scheduler:
    """A heap of (due time, sequence, action), drained by `run` as anyio's clock reaches them."""

    def __init__(self) -> None:
        self._scheduled: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._wakeup = anyio.Event()

    def schedule(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._scheduled, (anyio.current_time() + delay, next(self._seq), action))
        self._wakeup.set()

    def wake(self) -> None:
        """Have `run` look again now (something was queued for it to deliver)."""
        self._wakeup.set()

    async def run(self, flush: Callable[[], Awaitable[None]]) -> None:
        """Run due actions, then ``flush`` what they queued, forever."""
        while True:
            now = anyio.current_time()
            while self._scheduled and self._scheduled[0][0] <= now:
                heapq.heappop(self._scheduled)[2]()
            self._wakeup = anyio.Event()
            # Backpressure: a slow consumer slows the venue's clockwork, it never loses events.
            await flush()
            if self._scheduled and self._scheduled[0][0] <= anyio.current_time():
                continue
            timeout = self._scheduled[0][0] - anyio.current_time() if self._scheduled else None
            with anyio.move_on_after(timeout):
                await self._wakeup.wait()
