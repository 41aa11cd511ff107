"""A trio mock clock (autojump threshold 0) that does not jump while real I/O is in flight.

``MockClock(autojump_threshold=0)`` jumps to the next timer as soon as every task is blocked,
and a task waiting for a real redis-server's reply counts as blocked. Left alone, a 60 s
verification deadline would expire "during" a 100 µs Redis round trip. Code under test wraps
its real I/O in `IOAwareMockClock.hold` (see `tests.support.ClockHeldStore`); while a hold is
open the clock stays put and trio keeps polling for the I/O instead. Virtual time then passes
only while the system waits on timers, as if Redis answered instantly.

trio's run loop insists on a real `MockClock` and the class is final, so the hold is
installed on one instance by shadowing its ``_autojump`` hook (the method the run loop calls
when every task is blocked).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from trio.testing import MockClock


class IOAwareMockClock:
    def __init__(self) -> None:
        self.trio_clock = MockClock(autojump_threshold=0)
        self._holds = 0
        jump_to_next_deadline = self.trio_clock._autojump

        def autojump_unless_held() -> None:
            if self._holds == 0:
                jump_to_next_deadline()

        self.trio_clock._autojump = autojump_unless_held  # type: ignore[method-assign]

    @contextmanager
    def hold(self) -> Iterator[None]:
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1

    def jump(self, seconds: float) -> None:
        self.trio_clock.jump(seconds)

    def current_time(self) -> float:
        return self.trio_clock.current_time()
