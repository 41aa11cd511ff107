"""The event loop and Redis, measured apart (issue 12, item 11).

A busy loop (thousands of symbols opening at once) wakes every task late, the one waiting for
Redis's reply included. Timed with a plain deadline, a reply that sat in the socket while the
loop was busy looks like a Redis that did not answer: entries were paused, and each "recovery"
ran a full audit that made the loop busier still. So:

* `LoopLagProbe` measures the loop alone, by how late a short sleep wakes: the
  ``event_loop_lag_seconds`` metric and a log line, never a pause and never an audit;
* `call_within_loop_time` times a call by the time the loop was free to run it: a deadline
  that a busy loop does not use up, so only a Redis that is really slow trips it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import msgspec

from posguard.supervisor.metrics import Metrics

__all__ = ["LAG_WARNING", "PROBE_INTERVAL", "LoopLagProbe", "LoopLagStatistics", "call_within_loop_time"]

log = logging.getLogger("posguard.engine")

T = TypeVar("T")

PROBE_INTERVAL = 0.25
"""Seconds the probe sleeps between two measurements."""
LAG_WARNING = 0.5
"""A wake-up this many seconds late is logged (once per episode, with its worst at the end)."""


class LoopLagStatistics(msgspec.Struct, frozen=True):
    last: float
    """Seconds the last probe woke late."""
    worst: float
    """The latest wake-up since start."""
    episodes: int
    """Times the lag went above `LAG_WARNING`."""


class LoopLagProbe:
    """Sleeps `PROBE_INTERVAL` over and over and records how late each wake-up is."""

    def __init__(self, metrics: Metrics, *, interval: float = PROBE_INTERVAL, warn_above: float = LAG_WARNING) -> None:
        self.metrics = metrics
        self.interval = interval
        self.warn_above = warn_above
        self._last = 0.0
        self._worst = 0.0
        self._episodes = 0
        self._episode_worst: float | None = None

    def statistics(self) -> LoopLagStatistics:
        return LoopLagStatistics(last=self._last, worst=self._worst, episodes=self._episodes)

    async def run(self) -> None:
        while True:
            before = anyio.current_time()
            await anyio.sleep(self.interval)
            self.observe(max(0.0, anyio.current_time() - before - self.interval))

    def observe(self, lag: float) -> None:
        self._last = lag
        self._worst = max(self._worst, lag)
        self.metrics.event_loop_lag.set(lag)
        if lag >= self.warn_above:
            if self._episode_worst is None:
                self._episodes += 1
                log.warning("event loop lagging: a %.2f s sleep woke %.2f s late (the process is busy; "
                            "this is not a Redis outage and pauses nothing)", self.interval, lag)
            self._episode_worst = max(self._episode_worst or 0.0, lag)
        elif self._episode_worst is not None:
            log.warning("event loop on time again (worst lag %.2f s)", self._episode_worst)
            self._episode_worst = None


async def call_within_loop_time(seconds: float, call: Callable[[], Awaitable[T]]) -> T:
    """``await call()``, or `TimeoutError` once it has run for ``seconds`` of time in which
    the loop was free: each short step of the budget counts only as long as it was meant to
    take, however late the busy loop woke it."""
    step = min(0.05, seconds / 10)
    outcome: list[T] = []
    failure: list[BaseException] = []

    async def budget(scope: anyio.CancelScope) -> None:
        left = seconds
        while left > 0:
            before = anyio.current_time()
            await anyio.sleep(step)
            left -= min(anyio.current_time() - before, step)
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(budget, tg.cancel_scope)
        try:
            outcome.append(await call())
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
            failure.append(exc)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    if not outcome:
        raise TimeoutError(f"no answer within {seconds:.1f} s of loop time")
    return outcome[0]
