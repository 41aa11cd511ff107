"""Exponential backoff with jitter, bounded by a deadline.

Every retry loop in posguard (REST calls, stream reconnects, actor restarts) goes through
`Backoff.delays`, so no loop can spin, none
can outlive its deadline, and a crowd of actors retrying after an outage does not hit the
venue in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Annotated

import anyio
import msgspec

__all__ = ["Backoff", "Deadline", "sleep_within"]


class Backoff(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    initial: Annotated[float, msgspec.Meta(gt=0)] = 0.25
    maximum: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    multiplier: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    jitter: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.2
    """Each delay is scaled by a uniform factor in ``[1 - jitter, 1 + jitter]``."""

    def delays(self, rng: random.Random) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay * rng.uniform(1 - self.jitter, 1 + self.jitter)
            delay = min(self.maximum, delay * self.multiplier)


class Deadline:
    """A point on anyio's clock. ``remaining`` never goes negative."""

    def __init__(self, seconds: float) -> None:
        self.at = anyio.current_time() + seconds

    @property
    def remaining(self) -> float:
        return max(0.0, self.at - anyio.current_time())

    @property
    def passed(self) -> bool:
        return anyio.current_time() >= self.at


async def sleep_within(delay: float, deadline: Deadline) -> bool:
    """Sleep ``delay`` but not past the deadline. False when the deadline has passed."""
    if deadline.passed:
        return False
    await anyio.sleep(min(delay, deadline.remaining))
    return not deadline.passed
