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

from posguard.actors.findings import Finding
from posguard.actors.lifecycle import SymbolActor
from posguard.actors.lifecycle.repairs import assess
from posguard.actors.store.positions import RecordScan, Store
from posguard.streams.venue.events import Order, Position
from posguard.streams.venue.protocol import Venue

__all__ = ["AuditReport", "Auditor"]

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

    async def run(self, *, dry_run: bool = False) -> AuditReport:
        started = anyio.current_time()
        positions = await self.venue.fetch_positions()
        orders = await self.venue.fetch_open_orders()
        scan = await self.store.read_records()  # each hash decoded on its own: one bad one stops nothing
        self.on_scan(scan)
        records = {r.symbol: r for r in scan.usable}
        defects = {d.symbol: d for d in scan.bad}
        by_symbol: dict[str, Position] = {p.symbol: p for p in positions}
        stops: dict[str, list[Order]] = defaultdict(list)
        for order in orders:
            if order.kind == "stop":
                stops[order.symbol].append(order)
        symbols = set(by_symbol) | set(stops) | set(defects) | {s for s, r in records.items() if r.state.is_live}
        findings: list[Finding] = []
        for symbol in sorted(symbols):
            findings += assess(
                symbol, records.get(symbol), by_symbol.get(symbol), stops.get(symbol, []),
                actor_busy=self.actor_busy(symbol), defect=defects.get(symbol),
            )
        if dry_run:
            for finding in findings:
                finding.action = f"would {finding.action}"
                await self.store.append_audit(finding, dry_run=True)
        else:
            await self._repair_all(findings)
        self.runs += 1
        report = AuditReport(
            dry_run=dry_run, positions=len(positions), records=len(records) + len(defects), findings=findings,
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
