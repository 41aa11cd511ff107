"""The operator's commands: status, audit, events, open/close, safe-mode.

They read and write Redis like any other client (the schema in the README), so what they show
is exactly what ``redis-cli`` would. Work on the venue is left to the running ``posguard run``
process, which owns the actors: ``audit`` asks it through the health hash and only runs an
audit itself when no process is alive; ``open``/``close`` put an intent on the stream and
follow its replies.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from datetime import UTC, datetime

import anyio

from posguard.actors.store.client import open_redis, redact_url
from posguard.actors.store.console import OperatorConsole
from posguard.actors.store.health import Health, OperatorRequests
from posguard.actors.store.intent_stream import StreamEntry
from posguard.actors.store.lease import LeaseHolder, read_lease, read_standbys
from posguard.client import AsyncClient, BadIntent, Done, NoAnswer, Reply, Ticket
from posguard.streams.ccxt_adapter.config import ApiCredentials
from posguard.streams.venue.events import TOPICS, Position
from posguard.supervisor.config import Config, redis_connection

if TYPE_CHECKING:
    from posguard.supervisor.audit import PlannedStep

__all__ = ["ALIVE_WITHIN_MS", "EXIT_ADOPT_REFUSED", "Out", "audit", "events", "safe_mode_off", "status", "submit_and_follow"]

Out = Callable[[str], None]
ALIVE_WITHIN_MS = 5_000
EXIT_OK, EXIT_REFUSED, EXIT_NO_ANSWER, EXIT_ADOPT_REFUSED = 0, 1, 4, 6


def _age(stamp: str, now: datetime) -> str:
    if not stamp:
        return "-"
    seconds = (now - datetime.fromisoformat(stamp)).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _table(rows: list[list[str]], out: Out) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _alive(health: Health) -> bool:
    """A heartbeat seen recently (what `open`/`close` warn by; the leader is judged by its lease)."""
    return time.time() * 1000 - (health.status.heartbeat_ms or 0) < ALIVE_WITHIN_MS


def _holder_line(role: str, holder: LeaseHolder) -> str:
    since = datetime.fromtimestamp(holder.since_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    left = f", lease {holder.ttl_ms / 1000:.1f}s left" if holder.ttl_ms is not None and holder.ttl_ms >= 0 else ""
    token = f", token {holder.token}" if holder.token else ""
    return f"{role}: pid {holder.pid} on {holder.host} since {since}{token}{left} ({holder.owner})"


async def status(config: Config, out: Out = print) -> int:
    async with open_redis(redis_connection(config)) as client:
        console = OperatorConsole(client, config.account.name)
        scan = await console.records()
        health = await console.health()
        leader = await read_lease(client, config.account.name)
        standbys = await read_standbys(client, config.account.name)
    records = scan.usable
    now = datetime.now(UTC)
    out(f"account {config.account.name}: {len(records)} position records "
        f"({sum(r.state.is_live for r in records)} live)"
        + (f", {len(scan.bad)} bad (quarantined)" if scan.bad else ""))
    if records:
        rows = [["SYMBOL", "STATE", "SIDE", "FILLED", "ENTRY", "STOP", "PROTECTION", "AGE", "REASON"]]
        for r in records:
            rows.append([r.symbol, str(r.state), r.side, f"{r.filled_qty:g}", f"{r.entry_price:g}",
                         f"{r.stop_price:g}", str(r.protection), _age(r.updated_at, now), r.reason[:60]])
        _table(rows, out)
    for defect in scan.bad:
        out(f"bad record {defect.describe()}; quarantined: intents for {defect.symbol} are refused and its venue"
            " position is guarded until a person fixes or deletes the hash")
    out("")
    process = "alive" if _alive(health) else "not seen in the last 5 s"
    status = health.status
    out(f"posguard run: {process}" + (f" (pid {status.pid})" if status.pid else ""))
    out(_holder_line("leader", leader) if leader else "leader: none (no process holds the lease)")
    for standby in standbys:
        out(_holder_line("standby", standby))
    out(_venue_line(status.venue))
    for topic in TOPICS:
        stream = health.stream(topic)
        connected = {True: "yes", False: "no", None: "unknown"}[stream.connected]
        last = stream.last_event_ms
        heard = f"{(time.time() * 1000 - last) / 1000:.0f}s ago" if last else "never"
        out(f"stream {topic}: connected={connected}, last heard {heard}")
    out("safe mode: yes" + f" since {status.safe_mode_since}: {status.safe_mode_reason}"
        if status.safe_mode else "safe mode: no")
    if status.entries_paused:
        out(f"entries paused: {status.entries_paused}")
    return EXIT_OK


def _venue_line(venue: str | None) -> str:
    if venue == "simulated":
        return ("venue: SIMULATED (posguard run --simulated-venue): no order reaches any exchange;"
                " these positions exist only inside that process")
    return f"venue: {venue or 'unknown'}"


async def audit(config: Config, credentials: ApiCredentials | None, *, dry_run: bool, adopt: bool = False,
                out: Out = print) -> int:
    """Reconcile now: through the running posguard if one holds the lease, else here, holding
    the lease for the run (writes fenced like the service's, venue actions margin-checked).

    Here, the plan (`plan_audit`) is computed and printed before anything acts, so a close of
    an adopted position is on stdout before it reaches the venue. If the venue holds positions
    and Redis has a hash for none of them (`foreign_positions`: the wrong database), it
    refuses without ``adopt``: nothing sent, nothing written (not even a lease), exit
    `EXIT_ADOPT_REFUSED`. The look that decides it only reads, so it goes before the lease."""
    from posguard.actors.store.lease import Lease
    from posguard.actors.store.positions import RedisStore
    from posguard.supervisor.audit import Auditor, foreign_positions, plan_audit
    from posguard.supervisor.leased_venue import LeasedVenue
    from posguard.supervisor.service import open_venue

    async with open_redis(redis_connection(config)) as client:
        console = OperatorConsole(client, config.account.name)
        # The leader is judged by its lease, not by a heartbeat's age (a long audit may delay one).
        if not dry_run and (leader := await read_lease(client, config.account.name)) is not None:
            return await _ask_the_leader(leader, console, out)
        unfenced = RedisStore(client, config.account.name)
        async with open_venue(config, credentials) as venue:
            rules = await venue.load_markets()
            snapshot = await Auditor(venue, unfenced, _no_actor, lambda _symbol: False).assess()
            foreign = foreign_positions(snapshot)
            if foreign and not adopt:
                _say_foreign(config, foreign, out, dry_run=dry_run)
                if not dry_run:
                    return EXIT_ADOPT_REFUSED
            prices = {}
            for f in snapshot.findings:
                if f.kind == "orphan" and f.position is not None and f.position.symbol not in prices:
                    prices[f.position.symbol] = await venue.fetch_price(f.position.symbol)
            steps = plan_audit(snapshot.findings,
                               orphan_stop_distance=config.actor_settings().protection.orphan_stop_distance,
                               prices=prices, rules=rules)
            if dry_run:
                _say_plan(steps, out, dry_run=True)
                report = await Auditor(venue, unfenced, _no_actor, lambda _symbol: False).run(dry_run=True)
            else:
                lease = Lease(client, config.account.name, ttl=config.lease.ttl)
                if not await lease.acquire():  # a posguard run took it since we looked
                    return await _ask_the_leader(await read_lease(client, config.account.name), console, out)
                out("no running posguard holds the lease: holding it for one audit here")
                _say_plan(steps, out, dry_run=False)
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(lambda: lease.keep(renew_every=config.lease.renew_every))
                        report = await _audit_here(config, LeasedVenue(venue, lease, margin=config.lease.margin),
                                                   RedisStore(client, config.account.name, lease.fence))
                        tg.cancel_scope.cancel()
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        await lease.release()
    out(f"audit{' (dry run)' if dry_run else ''}: {report.positions} venue positions, {report.records} records,"
        f" {len(report.findings)} findings")
    if report.findings:
        _table([["SYMBOL", "KIND", "SEEN", "ACTION"]]
               + [[f.symbol, f.kind, f.seen, f.action] for f in report.findings], out)
    return EXIT_OK


async def _ask_the_leader(leader: LeaseHolder | None, console: OperatorConsole, out: Out) -> int:
    out(f"asking the running posguard (pid {leader.pid if leader else '?'}) to audit now ...")
    return await _audit_by_the_running_process(console, out)


def _say_plan(steps: list[PlannedStep], out: Out, *, dry_run: bool) -> None:
    """The plan, before anything acts: one row per finding, and a line of its own for each close."""
    if not steps:
        return
    out(f"audit plan{' (dry run: nothing is done)' if dry_run else ''}:")
    _table([["SYMBOL", "KIND", "SEEN", "WOULD" if dry_run else "WILL"]]
           + [[s.symbol, s.kind, s.seen, s.will] for s in steps], out)
    for step in steps:
        if step.closes:
            out(f"{'would close' if dry_run else 'CLOSING'} {step.symbol}: {step.will}")


def _say_foreign(config: Config, positions: list[Position], out: Out, *, dry_run: bool) -> None:
    """The refusal's message: what was found and what the operator does next."""
    head = "would refuse without --adopt" if dry_run else "refused"
    out(f"posguard audit {head}: the venue holds {len(positions)} open position(s) and Redis"
        f" ({redact_url(redis_connection(config).url)}, account {config.account.name!r}) has no record of any of them:")
    for p in positions:
        out(f"  {p.symbol}  {p.side}  {p.size:g}  entry {p.entry_price:g}")
    if not dry_run:
        out("nothing was sent to the venue and nothing was written. If this is the wrong database, check redis.url and"
            " account.name (another posguard may own these positions); if posguard should take them over (adopt,"
            " protect, and close any already past orphan_stop_distance), run: posguard audit --dry-run to see the"
            " plan, then posguard audit --adopt")


def _no_actor(symbol: str):  # noqa: ANN202 - a dry run never repairs
    raise AssertionError(f"a dry run must not repair ({symbol})")


async def _audit_here(config: Config, venue, store):  # noqa: ANN001, ANN202
    from posguard.supervisor.engine import Engine

    engine = Engine(venue=venue, store=store, cache=None, settings=config.actor_settings(),
                    supervisor=config.supervisor, audit=config.audit, stale_after=config.streams.stale_after)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        while engine.last_audit is None:
            await anyio.sleep(0.1)
        await engine.stop()
    return engine.last_audit


async def _audit_by_the_running_process(console: OperatorConsole, out: Out) -> int:
    requested = int(time.time() * 1000)
    await console.request(OperatorRequests(audit_requested=requested))
    with anyio.move_on_after(120):
        while ((await console.health()).status.audit_done or 0) < requested:
            await anyio.sleep(0.2)
        entries = await console.audit_findings_since(requested)
        out(f"audit done: {len(entries)} findings")
        for entry in entries:
            f = entry.fields
            out(f"{f['symbol']}  {f['kind']}  {f['seen']}  ->  {f['action']}")
        return EXIT_OK
    out("no answer from the running posguard within 120 s")
    return EXIT_NO_ANSWER




async def events(config: Config, stream: str, *, count: int, follow: bool, out: Out = print) -> int:
    async with open_redis(redis_connection(config)) as client:
        async for entry in OperatorConsole(client, config.account.name).tail(stream, count=count, follow=follow):
            out(_entry_line(entry))
    return EXIT_OK


def _entry_line(entry: StreamEntry) -> str:
    stamp = datetime.fromtimestamp(int(entry.entry_id.split("-")[0]) / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]
    fields = " ".join(f"{k}={v}" for k, v in entry.fields.items())
    return f"{stamp} {fields}"


async def submit_and_follow(config: Config, send: Callable[[AsyncClient], Awaitable[Ticket]], *, timeout: float,
                            out: Out = print) -> int:
    """Send one intent through the strategies' client (``send`` calls its ``open`` or
    ``close``) and follow it to its final answer, printing the first and the last."""
    async with AsyncClient(redis_connection(config), config.account.name, id_prefix="cli") as client:
        alive = _alive(await OperatorConsole(client.redis, config.account.name).health())
        try:
            ticket = await send(client)
        except BadIntent as exc:
            out(f"rejected (not sent) {exc}")
            return EXIT_REFUSED
        out(f"intent {ticket.intent_id} sent")
        if not alive:
            out("warning: no running posguard seen in the last 5 s; the intent waits in the stream until one starts")
        deadline = time.monotonic() + timeout
        try:
            first = await ticket.answer(timeout)
            out(_reply_line(first))
            final = await ticket.result(max(0.0, deadline - time.monotonic()))
        except NoAnswer as exc:
            out(str(exc))
            return EXIT_NO_ANSWER
        if final is not first:
            out(_reply_line(final))
        # Anything but done (rejected, stale, failed, duplicate: handled before, not run again) is a refusal.
        return EXIT_OK if isinstance(final, Done) else EXIT_REFUSED


def _reply_line(reply: Reply) -> str:
    detail = " ".join(f"{name}={value}" for name in ("outcome", "reason", "client_order_id")
                      if (value := getattr(reply, name)))
    return f"{reply.status} {detail}".rstrip()


async def safe_mode_off(config: Config, out: Out = print) -> int:
    async with open_redis(redis_connection(config)) as client:
        await OperatorConsole(client, config.account.name).request(
            OperatorRequests(safe_mode_off_requested_ms=int(time.time() * 1000))
        )
    out("safe mode off requested; the running posguard picks it up within a second")
    return EXIT_OK
