"""The simulated venue's stream dropping on a schedule (`disconnect_every`, `disconnect_for`).

Real private streams drop: a server restart, a load balancer's idle timeout, a network blip.
Each drop and each reconnect is drawn from its own seeded generator, numbered by the drop, so
a schedule is the same every run.
"""

from __future__ import annotations

from collections import Counter

from posguard.streams.simulated.knobs import FaultKnobs
from posguard.streams.simulated.private_stream import PrivateStream
from posguard.streams.simulated.rng import KeyedRandom
from posguard.streams.simulated.scheduler import Scheduler

__all__ = ["ScheduledDisconnects"]


class ScheduledDisconnects:
    """Connected for `disconnect_every`, down for `disconnect_for`, and again."""

    def __init__(
        self,
        *,
        knobs: FaultKnobs,
        calls: Counter[str],
        rng: KeyedRandom,
        scheduler: Scheduler,
        stream: PrivateStream,
    ) -> None:
        self._knobs = knobs
        self._calls = calls
        self._rng = rng
        self._scheduler = scheduler
        self._stream = stream

    def start(self) -> None:
        assert self._knobs.disconnect_every is not None
        self._scheduler.schedule(self._knobs.disconnect_every.sample(self._rng("disconnect", 0)), self._disconnect)

    def _disconnect(self) -> None:
        assert self._knobs.disconnect_every is not None
        count = self._calls["auto_disconnect"]
        self._calls["auto_disconnect"] += 1
        self._stream.disconnect("scheduled disconnect")
        self._scheduler.schedule(self._knobs.disconnect_for.sample(self._rng("reconnect", count)), self._reconnect)

    def _reconnect(self) -> None:
        assert self._knobs.disconnect_every is not None
        self._stream.reconnect()
        count = self._calls["auto_disconnect"]
        self._scheduler.schedule(self._knobs.disconnect_every.sample(self._rng("disconnect", count)), self._disconnect)
