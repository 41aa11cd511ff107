"""The operator's commands: status, audit, events, open/close, safe-mode.

They read and write Redis like any other client (the schema in the README), so what they show
is exactly what ``redis-cli`` would. Work on the venue is left to the running ``posguard run``
process, which owns the actors: ``audit`` asks it through the health hash and only runs an
audit itself when no process is alive; ``open``/``close`` put an intent on the stream and
follow its replies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import anyio

from posguard.actors.intents import body_of
from posguard.actors.store.client import open_redis
from posguard.actors.store.console import OperatorConsole
from posguard.actors.store.health import Health, OperatorRequests
from posguard.actors.store.intent_stream import IntentStream, StreamEntry
from posguard.actors.store.lease import LeaseHolder, read_lease, read_standbys
from posguard.streams.ccxt_adapter.config import ApiCredentials
from posguard.streams.venue.events import TOPICS
from posguard.supervisor.config import Config, redis_connection
from posguard.supervisor.intake import BadIntent, parse_intent

__all__ = ["ALIVE_WITHIN_MS", "Out", "audit", "events", "safe_mode_off", "status", "submit_and_follow"]

Out = Callable[[str], None]
ALIVE_WITHIN_MS = 5_000
EXIT_OK, EXIT_REFUSED, EXIT_NO_ANSWER = 0, 1, 4


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


async def audit(config: Config, credentials: ApiCredentials | None, *, dry_run: bool, out: Out = print) -> int:
    from posguard.actors.store.lease import Lease
    from posguard.supervisor.audit import Auditor
    from posguard.supervisor.leased_venue import LeasedVenue
    from posguard.supervisor.service import open_venue

    async with open_redis(redis_connection(config)) as client:
        console = OperatorConsole(client, config.account.name)
        leader = await read_lease(client, config.account.name)
        # The leader is judged by its lease, not by a heartbeat's age (a long audit may delay one).
        lease = Lease(client, config.account.name, ttl=config.lease.ttl)
        if not dry_run and (leader is not None or not await lease.acquire()):
            pid = leader.pid if leader else "?"
            out(f"asking the running posguard (pid {pid}) to audit now ...")
            return await _audit_by_the_running_process(console, out)
        from posguard.actors.store.positions import RedisStore

        if dry_run:
            async with open_venue(config, credentials) as venue:
                await venue.load_markets()
                auditor = Auditor(venue, RedisStore(client, config.account.name), _no_actor, lambda _symbol: False)
                report = await auditor.run(dry_run=True)
        else:
            # No leader: this command holds the lease for its run, writes fenced like the service.
            out("no running posguard holds the lease: holding it for one audit here")
            store = RedisStore(client, config.account.name, lease.fence)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: lease.keep(renew_every=config.lease.renew_every))
                    async with open_venue(config, credentials) as raw:
                        venue = LeasedVenue(raw, lease, margin=config.lease.margin)
                        report = await _audit_here(config, venue, store)
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


async def submit_and_follow(config: Config, fields: dict[str, str], *, timeout: float, out: Out = print) -> int:
    async with open_redis(redis_connection(config)) as client:
        intents = IntentStream(client, config.account.name)
        if not _alive(await OperatorConsole(client, config.account.name).health()):
            out("warning: no running posguard seen in the last 5 s; the intent waits in the stream until one starts")
        # Replies already in the list answer an earlier use of this id, not this one.
        earlier = await intents.replies_waiting(fields["intent_id"])
        mine = _body(fields)
        await intents.add(fields)
        out(f"intent {fields['intent_id']} sent")
        with anyio.move_on_after(timeout):
            while True:
                reply = await intents.next_reply(fields["intent_id"], timeout_s=1)
                if reply is None:
                    continue
                if earlier:
                    earlier -= 1
                    continue
                if not answers(reply, mine):
                    continue  # another intent's answer under this id (it was refused, or this one is)
                detail = " ".join(f"{k}={reply[k]}" for k in ("outcome", "reason", "client_order_id") if reply.get(k))
                out(f"{reply['status']} {detail}".rstrip())
                if reply["status"] == "done":
                    return EXIT_OK
                if reply["status"] in ("rejected", "failed", "stale", "duplicate"):
                    return EXIT_REFUSED  # duplicate: handled before under this id, not run again
        out(f"no final answer within {timeout:.0f} s (see: posguard events --stream journal)")
        return EXIT_NO_ANSWER


def answers(reply: dict[str, str], body: str) -> bool:
    """Whether a reply on an id's list answers the intent with this ``body``: one id's list can
    carry another intent's replies (the same id sent with a different body is refused there)."""
    return not body or not reply.get("body") or reply["body"] == body


def _body(fields: dict[str, str]) -> str:
    """What this intent asks, as its replies carry it ("" if it is malformed: then no reply
    under its id has a body to tell it by)."""
    try:
        return body_of(parse_intent(fields))
    except BadIntent:
        return ""


async def safe_mode_off(config: Config, out: Out = print) -> int:
    async with open_redis(redis_connection(config)) as client:
        await OperatorConsole(client, config.account.name).request(
            OperatorRequests(safe_mode_off_requested_ms=int(time.time() * 1000))
        )
    out("safe mode off requested; the running posguard picks it up within a second")
    return EXIT_OK
