"""The emulator's fault knobs: everything a real venue does to a client on a bad day.

All default to a well-behaved exchange. Probabilistic faults draw from the emulator's seeded
RNG; `ScriptedFailure` makes the next N calls of one path fail in a chosen way, for tests
that need a fault exactly once.
"""

from __future__ import annotations

import random
from typing import Literal

import msgspec

__all__ = ["FailureKind", "draw_failure", "Faults", "ScriptedFailure", "WsTopic", "take_scripted"]

FailureKind = Literal["http_503", "rate_limit", "server_error", "clock_skew", "lost_504", "lost_drop"]
"""``http_503``, ``rate_limit`` (Bybit retCode 10006; Binance HTTP 429 -1003),
``server_error`` (Bybit retCode 10016; Binance HTTP 500 -1001) and ``clock_skew`` (Bybit
retCode 10002; Binance -1021, timestamp outside recvWindow) fail the request *before* it
takes effect. ``lost_504`` and ``lost_drop`` apply it and then lose the response: a 504 from
the gateway, or the connection closed without an answer."""

WsTopic = Literal["position", "order", "execution", "algo"]
"""Bybit's private topics; the Binance front maps its events onto them (``ORDER_TRADE_UPDATE``
is ``order``, ``TRADE_LITE`` is ``execution``, ``ACCOUNT_UPDATE`` is ``position``,
``ALGO_UPDATE`` is ``algo``)."""


class ScriptedFailure(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: str
    """Request path, e.g. ``/v5/order/create`` or ``/fapi/v1/order``."""
    kind: FailureKind
    count: int = 1


class Faults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    position_list_lag: float = 0.0
    """Seconds before a position change shows in ``/v5/position/list`` or ``/fapi/v3/positionRisk``
    (pushes are not delayed)."""
    order_list_lag: float = 0.0
    """Seconds before an order change shows in ``/v5/order/realtime`` and ``/history`` (Bybit),
    or in ``GET /fapi/v1/order``, ``openOrders``, ``algoOrder`` and ``openAlgoOrders`` (Binance,
    where an order not yet visible answers -2013 "Order does not exist.")."""
    execution_list_lag: float = 0.0
    """Seconds before a fill shows in ``/v5/execution/list`` or ``/fapi/v1/userTrades``."""
    split_fill_after: float = 0.0
    """When > 0, a market entry fills in two halves, the second this many seconds after the
    first (a thin book): the order is ``PartiallyFilled`` in between and the position grows."""
    push_delay: dict[WsTopic, float] = msgspec.field(default_factory=dict)
    """Per private topic: seconds between the change and its WebSocket push."""
    push_drop: dict[WsTopic, float] = msgspec.field(default_factory=dict)
    """Per private topic: probability that a push is silently lost."""
    rest_latency: float = 0.0
    """Seconds added to every REST answer (after the request took effect)."""
    rest_error_rate: float = 0.0
    """Probability that a REST call fails with HTTP 503 before taking effect."""
    rate_limit_rate: float = 0.0
    """Probability that a REST call is refused (Bybit retCode 10006, Binance 429 -1003) before
    taking effect."""
    fail_next: list[ScriptedFailure] = msgspec.field(default_factory=list)
    refuse_ws: bool = False
    """While set, private WebSocket handshakes are answered with HTTP 503."""
    drop_subscribe_acks: bool = False
    """While set, ``subscribe`` requests take effect but are never acknowledged."""
    listen_key_lifetime: float = 3600.0
    """Binance: seconds a listenKey lives after its creation or last keepalive (PUT); then the
    stream sends ``listenKeyExpired`` and the key answers -1125."""
    ws_connection_lifetime: float = 86400.0
    """Binance: seconds a user-data connection may live before the server closes it (24 h)."""
    mute_ws: bool = False
    """While set, open private connections stay open but nothing is sent on them: no pongs,
    no acknowledgements, no pushes (a half-dead connection the client must detect itself)."""


def draw_failure(faults: Faults, path: str, rng: random.Random) -> FailureKind | None:
    """The failure, if any, that meets one request to ``path``: a scripted one first, else
    one drawn from `Faults.rest_error_rate` (``http_503``) and `Faults.rate_limit_rate`
    (``rate_limit``). One roll per request, on both fronts, so a seed replays the same faults."""
    scripted = take_scripted(faults, path)
    roll = rng.random()
    if scripted is not None:
        return scripted
    if roll < faults.rest_error_rate:
        return "http_503"
    if roll < faults.rest_error_rate + faults.rate_limit_rate:
        return "rate_limit"
    return None


def take_scripted(faults: Faults, path: str) -> FailureKind | None:
    """Consume one scripted failure for ``path``, if any is queued."""
    for index, failure in enumerate(faults.fail_next):
        if failure.path == path:
            if failure.count <= 1:
                del faults.fail_next[index]
            else:
                faults.fail_next[index] = msgspec.structs.replace(failure, count=failure.count - 1)
            return failure.kind
    return None
