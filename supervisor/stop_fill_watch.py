"""The stop-fill watch: a stop that triggered but did not fill must not leave a position open.

A venue can refuse the market order a stop triggers, or trigger on another price than the one
that crossed (a spike, freqtrade#12984): the stop stays armed, the position open, the market
past the stop, and the audit, seeing a stop that covers the position, does nothing. So every
protected position's price (`PriceReader.latest`: the pushed mark price or a ticker read) is
read every half `ProtectionSettings.stop_fill_timeout`; once
it has stayed past the stop for the whole timeout, the symbol's actor is handed a
``stop_not_filled`` finding, which closes the position reduce-only and raises an alert
(`posguard.actors.lifecycle.stop_fill`). Which records are watched and what "past the stop"
means are decided there; this module keeps time.
"""

from __future__ import annotations

import logging

import anyio

from posguard.actors.context import ActorContext
from posguard.actors.findings import Finding
from posguard.actors.lifecycle.mailbox import Repair
from posguard.actors.lifecycle.stop_fill import is_watched, stop_crossed
from posguard.actors.records import PositionRecord
from posguard.supervisor.actor_registry import ActorRegistry
from posguard.supervisor.prices import PriceReader

__all__ = ["StopFillWatch"]

log = logging.getLogger("posguard.engine")


class StopFillWatch:
    """Keeps, per watched position, since when its price has been past its stop."""

    def __init__(self, *, ctx: ActorContext, actors: ActorRegistry, prices: PriceReader) -> None:
        self.ctx = ctx
        self.actors = actors
        self.prices = prices
        self._records: dict[str, PositionRecord] = {}
        """The latest saved record of every watched symbol (fed by `follow`)."""
        self._past_since: dict[tuple[str, str], float] = {}
        """(symbol, intent id) -> anyio time its price was first seen past the stop."""
        self._handed: dict[tuple[str, str], Repair] = {}

    def follow(self, record: PositionRecord, _note: str = "") -> None:
        """A transition observer (and the start-up seed): watch what `is_watched` says."""
        if is_watched(record):
            self._records[record.symbol] = record
        elif self._records.pop(record.symbol, None) is not None:
            for times in (self._past_since, self._handed):
                for key in [k for k in times if k[0] == record.symbol]:
                    del times[key]

    async def run(self) -> None:
        interval = self.ctx.settings.protection.stop_fill_timeout / 2
        while True:
            await anyio.sleep(interval)
            await self.check()

    async def check(self) -> None:
        """One look at every watched position's price; hand on the ones past the timeout."""
        timeout = self.ctx.settings.protection.stop_fill_timeout
        for symbol, record in list(self._records.items()):
            key = (symbol, record.intent_id)
            handed = self._handed.get(key)
            if handed is not None and not handed.done.is_set():
                continue  # the actor has it; it decides again when it gets to it
            self._handed.pop(key, None)
            price = await self.prices.latest(symbol)
            if price is None:
                continue  # no price this time: neither past nor back, so the clock keeps running
            if not stop_crossed(record.side, record.stop_price, price):
                self._past_since.pop(key, None)
                continue
            now = anyio.current_time()
            since = self._past_since.setdefault(key, now)
            if now - since < timeout:
                continue
            del self._past_since[key]
            side = "long" if record.side == "buy" else "short"
            finding = Finding(
                symbol=symbol, kind="stop_not_filled", intent_id=record.intent_id,
                seen=f"price {price:g} past the {side}'s stop {record.stop_price:g} for {now - since:.0f} s",
                action="close it reduce-only",
            )
            log.error("%s: %s; handing it to the actor to close", symbol, finding.seen)
            self._handed[key] = await self.actors.get_or_start(symbol).repair(finding)
