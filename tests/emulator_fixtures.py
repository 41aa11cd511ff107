"""Test helpers for the ccxt adapter: a venue on the emulator, a stream recorder, a network guard.

The emulator and the venue live in the test's own asyncio loop, so they are async context
managers rather than pytest fixtures. `loopback_network_only` is a pytest fixture: any
attempt by the code under test to resolve or connect to anything but 127.0.0.1 fails the
test at once (a guard behind the adapter's own ``loopback_only`` refusal).
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import pytest

from posguard.streams.ccxt_adapter.venue import CcxtVenue
from posguard.streams.emulators.bybit.client import FAST_STREAMS, bybit_venue, emulator_config
from posguard.streams.emulators.binance.server import running_binance_emulator
from posguard.streams.emulators.bybit.server import running_emulator
from posguard.streams.emulators.engine.serving import EmulatorBase
from posguard.streams.venue.events import TOPICS, StreamStatus, VenueEvent

__all__ = [
    "EMULATORS", "EmulatorKind", "FAST_STREAMS", "StreamRecorder", "bybit_venue", "emulator_config",
    "loopback_network_only", "recording", "truth_order",
]

E = TypeVar("E")


@dataclass(frozen=True)
class EmulatorKind:
    """What a venue-parametrised test needs to know of one emulator."""

    name: str
    running: Callable[..., Any]  # an async context manager yielding the EmulatorServer
    create_path: str  # where a market entry is POSTed
    position_list: str  # "METHOD /path" of the REST position list
    attached_stop: bool  # the stop rides on the entry (Bybit) or is its own order after the fill (Binance)


EMULATORS: dict[str, EmulatorKind] = {
    "bybit": EmulatorKind("bybit", running_emulator, "/v5/order/create", "GET /v5/position/list", True),
    "binance": EmulatorKind("binance", running_binance_emulator, "/fapi/v1/order", "GET /fapi/v3/positionRisk", False),
}

class StreamRecorder:
    """Everything a venue's stream pushed, and a way to wait for what a test expects."""

    def __init__(self) -> None:
        self.events: list[VenueEvent] = []
        self._changed = anyio.Event()

    async def consume(self, receive: anyio.abc.ObjectReceiveStream[VenueEvent]) -> None:
        async for event in receive:
            self.events.append(event)
            self._changed.set()
            self._changed = anyio.Event()

    def of(self, kind: type[E], since: int = 0) -> list[E]:
        return [e for e in self.events[since:] if isinstance(e, kind)]

    async def wait_for(
        self, kind: type[E], predicate: Callable[[E], bool] = lambda _: True, *, since: int = 0, timeout: float = 5.0
    ) -> E:
        """The first event of ``kind`` (from index ``since``) matching ``predicate``."""
        with anyio.fail_after(timeout):
            while True:
                for event in self.of(kind, since):
                    if predicate(event):
                        return event
                await self._changed.wait()

    async def wait_connected(self, *, since: int = 0, timeout: float = 5.0) -> None:
        for topic in TOPICS:
            await self.wait_for(StreamStatus, lambda s, t=topic: s.topic == t and s.connected, since=since, timeout=timeout)


@asynccontextmanager
async def recording(venue: CcxtVenue) -> AsyncIterator[StreamRecorder]:
    """Run ``venue.stream`` for the block; returns once every topic is connected."""
    recorder = StreamRecorder()
    send, receive = anyio.create_memory_object_stream[VenueEvent](math.inf)
    async with anyio.create_task_group() as tg:
        tg.start_soon(venue.stream, send)
        tg.start_soon(recorder.consume, receive)
        await recorder.wait_connected()
        yield recorder
        tg.cancel_scope.cancel()


def truth_order(emu: EmulatorBase, link_id: str) -> dict[str, Any]:
    [order] = [o for o in emu.truth()["orders"] if o["order_link_id"] == link_id]
    return order


# -- the network guard --------------------------------------------------------------------

def _is_loopback(host: object) -> bool:
    if host in ("localhost", None, ""):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def loopback_network_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail loudly if anything resolves or connects beyond the loopback interface."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback(host.decode() if isinstance(host, bytes) else host):
            raise OSError(f"test network guard: refused to resolve {host!r} (only 127.0.0.1 is allowed)")
        return real_getaddrinfo(host, *args, **kwargs)

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise OSError(f"test network guard: refused to connect to {address!r} (only 127.0.0.1 is allowed)")

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        check(sock, address)
        return real_connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> Any:
        check(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield
