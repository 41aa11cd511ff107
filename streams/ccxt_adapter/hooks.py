"""ccxt.pro exchanges that hand every private WebSocket message to posguard as it is parsed.

Why not just use what ``watch_orders()`` returns: ccxt.pro resolves a watch future only if
one is pending when a message is handled. ``watch_positions()`` returns the positions of the
one message that resolved it, so a second position message handled in the same loop tick
(ccxt drains its socket buffer in one go) is never returned to anyone; orders and trades are
only returned with the *next* message after the one that arrived while nobody waited. For
an order fill that is the evidence the actor is waiting for, not a detail. So these
subclasses call ccxt's own handler first (its caches and futures keep working, and the
watch loops still surface disconnects) and then pass the same raw data, parsed by ccxt's own
parsers, to a `PrivateListener`, synchronously and exactly once per message.

They also say when a topic is live: Bybit acknowledges each ``subscribe``; Binance's user
data stream is live as soon as its connection is open.

These overrides rely on ccxt method names (``handle_order``, ``handle_positions``, ...);
they are pinned by the stream tests against the emulator and the recorded Binance payloads.

The hot path skips all of that: every private frame is first offered to the exchange's msgspec
decoder (`posguard.streams.ccxt_adapter.frames`), which turns a data frame of the three topics
straight into posguard's events (`PrivateListener.on_event`) and declines anything else; a
declined frame (acknowledgements, pongs, errors, other topics, anything malformed) goes to
ccxt and through the handlers above exactly as before. The tap sits on the ccxt client's
``handle_text_or_binary_message``, after ccxt has noted the frame's arrival
(``last_message_at``), so liveness and the watch loops' disconnect detection are ccxt's still.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any, Protocol

import ccxt.pro

from posguard.streams.ccxt_adapter.frames import BYBIT_EXEC_TYPES, FrameDecoder, decode_binance, decode_bybit
from posguard.streams.ccxt_adapter.mapping import CcxtDict
from posguard.streams.venue.events import Topic, VenueEvent

__all__ = [
    "BYBIT_EXEC_TYPES",
    "BYBIT_TOPICS",
    "HookedBinanceUsdm",
    "HookedBybit",
    "PrivateListener",
    "acknowledged_topics",
]

log = logging.getLogger("posguard.ccxt")

BYBIT_TOPICS: dict[str, Topic] = {"position": "positions", "order": "orders", "execution": "executions"}


class PrivateListener(Protocol):
    def on_ready(self, topic: Topic, client: Any) -> None: ...
    def on_order(self, order: CcxtDict) -> None: ...
    def on_trade(self, trade: CcxtDict, client_order_id: str) -> None: ...
    def on_position(self, position: CcxtDict) -> None: ...
    def on_listen_key_expired(self) -> None: ...
    def on_event(self, event: VenueEvent) -> None: ...
    def now_ms(self) -> int: ...


class _Hooked:
    """Mixin: the listener, the frame tap, and a guard so a posguard bug can never break
    ccxt's socket."""

    posguard_listener: PrivateListener | None = None
    posguard_decoder: FrameDecoder | None = None
    """The exchange's msgspec frame decoder; None: every frame goes through ccxt's handlers."""
    posguard_fast_frames = 0
    """Frames the decoder took (for tests and benchmarks: the rest went to ccxt)."""

    def client(self, url: str) -> Any:
        client = super().client(url)  # type: ignore[misc]
        if "posguard_tapped" not in client.__dict__:
            client.posguard_tapped = True
            client.handle_text_or_binary_message = self._tap(client.handle_text_or_binary_message)
        return client

    def _tap(self, to_ccxt: Any) -> Any:
        """The client's frame handler, with posguard's decoder in front of ccxt's."""

        def handle(data: Any) -> None:
            listener, decode = self.posguard_listener, self.posguard_decoder
            if listener is None or decode is None or not isinstance(data, (str, bytes)):
                return to_ccxt(data)
            try:
                events = decode(data, self._posguard_market, listener.now_ms())
            except Exception:  # noqa: BLE001 - a decoder bug must not cost the frame: ccxt reads it
                log.exception("the frame decoder failed on a frame; ccxt handles it")
                events = None
            if events is None:
                return to_ccxt(data)  # not a data frame posguard reads whole: ccxt's, as ever
            self.posguard_fast_frames += 1
            for event in events:
                self._tell("event", listener.on_event, event)
            return None

        return handle

    def _posguard_market(self, market_id: str, kind: str) -> tuple[str, Decimal] | None:
        """ccxt's own ``safe_market`` answer for a market id (its symbol and contract size),
        remembered per loaded market list; None before markets are loaded."""
        by_id = getattr(self, "markets_by_id", None)
        if not by_id:
            return None
        cache: dict[tuple[str, str], tuple[str, Decimal]] | None = self.__dict__.get("_posguard_markets")
        if cache is None or self.__dict__.get("_posguard_markets_of") is not by_id:
            cache = self.__dict__["_posguard_markets"] = {}
            self.__dict__["_posguard_markets_of"] = by_id
        known = cache.get((market_id, kind))
        if known is None:
            market = self.safe_market(market_id, None, None, kind)  # type: ignore[attr-defined]
            size = market.get("contractSize")
            known = cache[(market_id, kind)] = (market["symbol"], Decimal(str(size if size is not None else 1)))
        return known

    def _tell(self, what: str, call: Any, *args: Any) -> None:
        if self.posguard_listener is None:
            return
        try:
            call(*args)
        except Exception:  # noqa: BLE001 - never let a mapping error tear down the socket
            log.exception("could not pass a pushed %s to posguard; it will be re-read over REST", what)


class HookedBybit(_Hooked, ccxt.pro.bybit):
    posguard_decoder = staticmethod(decode_bybit)

    def handle_order(self, client: Any, message: CcxtDict) -> None:
        super().handle_order(client, message)
        listener = self.posguard_listener
        for raw in _data(message):
            if listener is not None:
                self._tell("order", lambda r=raw: listener.on_order(self.parse_order(r)))

    def handle_my_trades(self, client: Any, message: CcxtDict) -> None:
        super().handle_my_trades(client, message)
        listener = self.posguard_listener
        for raw in _data(message):
            if listener is not None and raw.get("execType", "Trade") in BYBIT_EXEC_TYPES:
                self._tell(
                    "execution",
                    lambda r=raw: listener.on_trade(self.parse_trade(r), str(r.get("orderLinkId") or "")),
                )

    def handle_positions(self, client: Any, message: CcxtDict) -> None:
        super().handle_positions(client, message)
        listener = self.posguard_listener
        for raw in _data(message):
            if listener is not None:
                self._tell("position", lambda r=raw: listener.on_position(self.parse_position(r)))

    def handle_subscription_status(self, client: Any, message: CcxtDict) -> CcxtDict:
        super().handle_subscription_status(client, message)
        if message.get("success") is True and message.get("op") == "subscribe":
            for topic in acknowledged_topics(client, message):
                if topic in BYBIT_TOPICS and self.posguard_listener is not None:
                    self._tell("subscription", self.posguard_listener.on_ready, BYBIT_TOPICS[topic], client)
        return message


def _data(message: CcxtDict) -> list[CcxtDict]:
    data = message.get("data")
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def acknowledged_topics(client: Any, message: CcxtDict) -> list[str]:
    """The topics of the subscribe request this acknowledgement answers.

    Bybit echoes ``req_id`` when it was sent; if it ever does not, acknowledgements come in
    request order, so the oldest unacknowledged request is the one answered.
    """
    acked: set[str] = client.__dict__.setdefault("posguard_acked", set())
    pending = sorted(
        (
            (int(sub["id"]), str(sub["id"]), list(sub.get("topics") or []))
            for sub in client.subscriptions.values()
            if isinstance(sub, dict) and "topics" in sub and str(sub.get("id")) not in acked
        ),
    )
    req_id = str(message.get("req_id") or "")
    for _, sub_id, topics in pending:
        if sub_id == req_id or not req_id:
            acked.add(sub_id)
            return topics
    return []


class HookedBinanceUsdm(_Hooked, ccxt.pro.binanceusdm):
    posguard_decoder = staticmethod(decode_binance)

    def handle_message(self, client: Any, message: Any) -> None:
        # ccxt drops ``listenKeyExpired``: the socket stays open and hears nothing ever again.
        if isinstance(message, dict) and message.get("e") == "listenKeyExpired" and self.posguard_listener is not None:
            self._tell("listen key expiry", self.posguard_listener.on_listen_key_expired)
            return
        super().handle_message(client, message)

    def handle_order(self, client: Any, message: CcxtDict) -> None:
        super().handle_order(client, message)
        listener = self.posguard_listener
        if listener is not None:
            self._tell("order", lambda: listener.on_order(self.parse_ws_order(message)))

    def handle_my_trade(self, client: Any, message: CcxtDict) -> None:
        super().handle_my_trade(client, message)
        listener = self.posguard_listener
        if listener is not None and message.get("x") == "TRADE":
            self._tell(
                "execution",
                lambda: listener.on_trade(self.parse_ws_trade(message), str(message.get("c") or "")),
            )

    def handle_positions(self, client: Any, message: CcxtDict) -> None:
        super().handle_positions(client, message)
        listener = self.posguard_listener
        if listener is None:
            return
        account = message.get("a") or {}
        for raw in account.get("P") or []:
            def tell(raw: CcxtDict = raw) -> None:
                position = self.parse_ws_position(raw)
                position["timestamp"] = message.get("E")
                listener.on_position(position)

            self._tell("position", tell)

    def on_connected(self, client: Any, message: Any = None) -> None:
        super().on_connected(client, message)
        if "listenKey" in str(client.url) and self.posguard_listener is not None:
            for topic in BYBIT_TOPICS.values():
                self._tell("connection", self.posguard_listener.on_ready, topic, client)
