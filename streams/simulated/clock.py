"""Venue timestamps on anyio's clock.

Time is anyio's clock, so the venue runs under trio's MockClock in tests (virtual seconds)
and in real time in the demo. Venue timestamps are epoch milliseconds, as on a real venue,
pinned to anyio's clock when the venue starts.
"""

from __future__ import annotations

import time

import anyio

__all__ = ["VenueClock"]


class VenueClock:
    """Epoch milliseconds that advance with anyio's clock (virtual under a mock clock)."""

    def __init__(self) -> None:
        self._epoch_offset = 0.0

    def start(self) -> None:
        """Pin epoch time to anyio's clock; called once the venue runs inside an event loop."""
        self._epoch_offset = time.time() - anyio.current_time()

    def clock_time(self, ts_ms: int) -> float:
        """anyio clock time of a venue timestamp (to compare with times the caller took)."""
        return ts_ms / 1000 - self._epoch_offset

    def now_ms(self) -> int:
        """Epoch milliseconds, advancing with anyio's clock (virtual under a mock clock)."""
        return int((self._epoch_offset + anyio.current_time()) * 1000)
