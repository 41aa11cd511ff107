"""The simulated venue's private WebSocket stream: pushes, late or lost, and the connection.

Pushed events are delayed and dropped per topic as the knobs say; while the stream is down
nothing is pushed, and pushes already in flight when it drops are lost, as on a real socket.
"""

from __future__ import annotations

import random
from collections import deque

import anyio
from anyio.abc import ObjectSendStream

from posguard.streams.simulated.clock import VenueClock
from posguard.streams.simulated.knobs import FaultKnobs
from posguard.streams.simulated.lag import Lag
from posguard.streams.simulated.scheduler import Scheduler
from posguard.streams.venue.events import TOPICS, Heartbeat, StreamStatus, Topic, VenueEvent

__all__ = ["PrivateStream"]


class PrivateStream:
    """Subscribers, the queue of events for them, and whether the stream is connected."""

    def __init__(self, *, knobs: FaultKnobs, clock: VenueClock, scheduler: Scheduler) -> None:
        self._knobs = knobs
        self._clock = clock
        self._scheduler = scheduler
        self._sinks: list[ObjectSendStream[VenueEvent]] = []
        self._outbox: deque[VenueEvent] = deque()
        self.connected = True
        self._connection_epoch = 0  # pushes in flight when the stream drops are lost

    async def serve(self, sink: ObjectSendStream[VenueEvent]) -> None:
        """Push to ``sink`` until cancelled (`Venue.stream`)."""
        self._sinks.append(sink)
        if self.connected:
            for topic in TOPICS:
                self._emit(StreamStatus(topic=topic, connected=True, reason="connected", ts_ms=self._clock.now_ms()))
        try:
            await anyio.sleep_forever()
        finally:
            if sink in self._sinks:  # a push that found it closed has removed it already
                self._sinks.remove(sink)

    def disconnect(self, reason: str) -> None:
        """Drop the private stream: a StreamStatus(connected=False) per topic, then silence."""
        if not self.connected:
            return
        self.connected = False
        self._connection_epoch += 1
        for topic in TOPICS:
            self._emit(StreamStatus(topic=topic, connected=False, reason=reason, ts_ms=self._clock.now_ms()))

    def reconnect(self) -> None:
        if self.connected:
            return
        self.connected = True
        for topic in TOPICS:
            self._emit(StreamStatus(topic=topic, connected=True, reason="reconnected", ts_ms=self._clock.now_ms()))

    def push(self, topic: Topic, event: VenueEvent, rng: random.Random) -> None:
        if not self.connected:
            return
        if rng.random() < self._knobs.push_drop.get(topic, 0.0):
            return
        delay = self._knobs.push_delay.get(topic, Lag()).sample(rng)
        epoch = self._connection_epoch

        def deliver() -> None:
            if epoch == self._connection_epoch:
                self._emit(event)

        self._scheduler.schedule(delay, deliver)

    def start_heartbeats(self) -> None:
        self._scheduler.schedule(self._knobs.heartbeat_interval, self._heartbeat)

    def _heartbeat(self) -> None:
        if self.connected:
            for topic in TOPICS:
                self._emit(Heartbeat(topic=topic, ts_ms=self._clock.now_ms()))
        self._scheduler.schedule(self._knobs.heartbeat_interval, self._heartbeat)

    def _emit(self, event: VenueEvent) -> None:
        """Queue an event for every connected subscriber; the scheduler sends it in order."""
        if self._sinks:
            self._outbox.append(event)
            self._scheduler.wake()

    async def flush(self) -> None:
        while self._outbox:
            event = self._outbox.popleft()
            for sink in list(self._sinks):
                try:
                    await sink.send(event)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    if sink in self._sinks:  # its subscriber may have left (and removed it) meanwhile
                        self._sinks.remove(sink)
