"""The audit: one snapshot of the venue, compared with every Redis record, then repairs.

Runs at start-up, every ``audit.interval`` seconds, after any actor crash and after any stream
reconnect. It reads the venue once (all positions, all open orders including stops), asks
`posguard.actors.lifecycle.repairs.assess` what is wrong with each symbol, writes every finding to the audit
stream, and (unless a dry run) hands each finding to the symbol's actor to repair, so repairs
queue behind intents instead of racing them (I4).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import anyio
import msgspec

from posguard.actors.coverage import armed_orders
from posguard.actors.findings import Finding
from posguard.actors.lifecycle import SymbolActor
from posguard.actors.lifecycle.protection import orphan_stop_for
from posguard.actors.lifecycle.repairs import assess
from posguard.actors.store.positions import RecordScan, Store
from posguard.streams.venue.events import Order, Position
from posguard.streams.venue.markets import MarketRules
from posguard.streams.venue.protocol import Venue

__all__ = ["AuditReport", "AuditSnapshot", "Auditor", "PlannedStep", "foreign_positions", "plan_audit"]

log = logging.getLogger("posguard.audit")


class AuditReport(msgspec.Struct, kw_only=True):
    dry_run: bool
    positions: int
    records: int
    findings: list[Finding]
    seconds: float

    @property
    def clean(self) -> bool:
        return not self.findings


class AuditSnapshot(msgspec.Struct, kw_only=True):
    """What one look saw: the venue's positions, which symbols Redis has a hash for (usable
    or not), and the findings (before any repair)."""

    positions: list[Position]
    recorded_symbols: set[str]
    findings: list[Finding]


class PlannedStep(msgspec.Struct, frozen=True, kw_only=True):
    """What ``posguard audit`` will do (or, dry, would do) about one finding: the one home of
    that sentence, computed before anything acts, printed, then carried out."""

    symbol: str
    kind: str
    seen: str
    will: str
    closes: bool = False
    """An adopted position the audit will close at market at once: its orphan stop is
    already through the market, so the stop is refused and I2 closes it instead."""


def foreign_positions(snapshot: AuditSnapshot) -> list[Position]:
    """The venue's open positions when NONE of them has a hash in Redis, else [].

    That is the "wrong database" shape (issue 15: another account's, a fresh one, a typo in
    redis.url): every position would be adopted, other stops cancelled, some closed. One
    position Redis knows means this is the account's database and an unknown position beside
    it is an ordinary orphan. Bad (unreadable) hashes count as known: they prove the database."""
    open_ = [p for p in snapshot.positions if p.is_open]
    if any(p.symbol in snapshot.recorded_symbols for p in open_):
        return []
    return open_


def plan_audit(findings: list[Finding], *, orphan_stop_distance: float, prices: dict[str, float],
               rules: dict[str, MarketRules]) -> list[PlannedStep]:
    """One step per finding. An orphan's step says whether it will be closed: the stop the
    adoption places (`orphan_stop_for`, or the stop the position already holds) against the
    market (``prices``: last price per symbol; the position's mark price if missing), the same
    test the venue applies when it refuses a stop through the market (a sell stop at or above
    the price, a buy stop at or below it)."""
    steps: list[PlannedStep] = []
    for f in findings:
        will, closes = f.action, False
        if f.kind == "orphan" and f.position is not None:
            p = f.position
            stop = p.stop_price or orphan_stop_for(p, orphan_stop_distance, rules.get(p.symbol))
            price = prices.get(p.symbol) or p.mark_price
            # Bybit checks a stop's trigger against LastPrice by default (triggerBy, "Place Order",
            # https://bybit-exchange.github.io/docs/v5/order/create-order) and refuses one already
            # crossed (110092/110093); Binance refuses a STOP_MARKET that would trigger immediately
            # (-2021). ``prices`` are last prices (`Venue.fetch_price`), the closest we can read.
            closes = price is not None and (price <= stop if p.side == "long" else price >= stop)
            if closes:
                will = (f"adopt it, then CLOSE {p.side} {p.size:g} at market (reduce-only): the price {price:g} is"
                        f" already past its orphan stop {stop:g} (orphan_stop_distance {orphan_stop_distance:g}"
                        " from entry), so no stop can be placed")
            else:
                will = f"adopt it and protect it with a reduce-only stop at {stop:g}"
        elif f.kind == "stale_stop":
            will = f"cancel stop {f.stop_client_order_id}"
        steps.append(PlannedStep(symbol=f.symbol, kind=f.kind, seen=f.seen, will=will, closes=closes))
    return steps


class Auditor:
    def __init__(
        self,
        venue: Venue,
        store: Store,
        actor_for: Callable[[str], SymbolActor],
        actor_busy: Callable[[str], bool],
        on_scan: Callable[[RecordScan], None] = lambda scan: None,
    ) -> None:
        self.venue = venue
        self.on_scan = on_scan
        """Given every read of all records (the open slots recount the unusable ones)."""
        self.store = store
        self.actor_for = actor_for
        self.actor_busy = actor_busy
        self.runs = 0

    async def assess(self) -> AuditSnapshot:
        """One look at the venue and Redis and what is wrong: no repair, no write (the
        operator's plan and its adoption guard are computed from this before anything acts)."""
        positions = await self.venue.fetch_positions()
        orders = await self.venue.fetch_open_orders()
        scan = await self.store.read_records()  # each hash decoded on its own: one bad one stops nothing
        self.on_scan(scan)
        records = {r.symbol: r for r in scan.usable}
        defects = {d.symbol: d for d in scan.bad}
        by_symbol: dict[str, Position] = {p.symbol: p for p in positions}
        stops: dict[str, list[Order]] = defaultdict(list)
        for order in armed_orders(orders):
            stops[order.symbol].append(order)
        symbols = set(by_symbol) | set(stops) | set(defects) | {s for s, r in records.items() if r.state.is_live}
        findings: list[Finding] = []
        for symbol in sorted(symbols):
            findings += assess(
                symbol, records.get(symbol), by_symbol.get(symbol), stops.get(symbol, []),
                actor_busy=self.actor_busy(symbol), defect=defects.get(symbol),
            )
        return AuditSnapshot(positions=positions, recorded_symbols=set(records) | set(defects), findings=findings)

    async def run(self, *, dry_run: bool = False) -> AuditReport:
        started = anyio.current_time()
        snapshot = await self.assess()
        positions, findings = snapshot.positions, snapshot.findings
        records = snapshot.recorded_symbols
        if dry_run:
            for finding in findings:
                finding.action = f"would {finding.action}"
                await self.store.append_audit(finding, dry_run=True)
        else:
            await self._repair_all(findings)
        self.runs += 1
        report = AuditReport(
            dry_run=dry_run, positions=len(positions), records=len(records), findings=findings,
            seconds=anyio.current_time() - started,
        )
        level = logging.WARNING if findings else logging.INFO
        log.log(level, "audit%s: %d positions, %d records, %d findings in %.3f s",
                " (dry run)" if dry_run else "", report.positions, report.records, len(findings), report.seconds)
        return report

    async def _repair_all(self, findings: list[Finding]) -> None:
        """Queue every finding on its actor and wait for all of them (actors work in parallel)."""

        async def repair(finding: Finding) -> None:
            item = await self.actor_for(finding.symbol).repair(finding)
            await item.done.wait()
            log.warning("audit %s %s: %s -> %s", finding.symbol, finding.kind, finding.seen, finding.action)

        async with anyio.create_task_group() as tg:
            for finding in findings:
                tg.start_soon(repair, finding)
