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


Delay = Annotated[float, msgspec.Meta(ge=0.01, le=600)]
"""A retry delay read from the config: at least 10 ms (no hot loop against the venue or
Redis), at most 10 minutes (a retry that waits longer is a retry that stopped)."""


class Backoff(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    initial: Delay = 0.25
    maximum: Delay = 5.0
    multiplier: Annotated[float, msgspec.Meta(ge=1, le=10)] = 2.0
    jitter: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.2
    """Each delay is scaled by a uniform factor in ``[1 - jitter, 1 + jitter]``."""

    def __post_init__(self) -> None:
        # "field: why" is how a config error names the key (supervisor.config._explain).
        if self.initial > self.maximum:
            raise ValueError(f"initial: {self.initial} is more than maximum {self.maximum};"
                             " the first delay may not exceed the cap")

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
