"""The operator's surface: status, audit --dry-run, metrics, alert rules, README's schema."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio
import coredis
import pytest
import yaml

from posguard.actors.records import PositionRecord, Protection, State
from posguard.actors.store.keys import Keys
from posguard.actors.store.positions import RedisStore
from posguard.streams.simulated import FakeVenue, FaultKnobs, Lag
from posguard.supervisor import operator
from posguard.supervisor.config import Config, parse_config
from posguard.supervisor.metrics import Metrics
from posguard.supervisor.redis_server import free_port
from tests.clock import IOAwareMockClock
from tests.support import open_intent, running_engine, wait_streams_healthy
from tests.test_intents import redis_cli

REPO = Path(__file__).resolve().parents[1]
METRICS = ["atomic_operation_failures_total", "position_verification_lag_seconds", "rollback_attempts_total",
           "positions_unprotected", "stream_connected", "actor_restarts_total", "audit_findings_total", "safe_mode"]


def config_for(redis_url: str) -> Config:
    return parse_config(f'[redis]\nurl = "{redis_url}"\n[account]\nname = "ops"\n')


async def prepare(redis_url: str) -> None:
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        store = RedisStore(client, "ops")
        await store.save_record(PositionRecord(
            symbol="BTC/USDT:USDT", intent_id="i-1", state=State.PROTECTED, side="buy", qty=0.01, filled_qty=0.01,
            entry_price=60_000.0, stop_price=58_800.0, client_order_id="pgaaaa-e", protection=Protection.ATTACHED_CONFIRMED,
        ))
        await store.save_record(PositionRecord(
            symbol="ETH/USDT:USDT", intent_id="i-2", state=State.CLOSED, side="sell", qty=0.1, filled_qty=0.1,
            entry_price=3_000.0, stop_price=3_060.0, client_order_id="pgbbbb-e", reason="closed on request",
        ))
        await client.hset(Keys("ops").health, {"positions_connected": "yes", "safe_mode": "yes", "safe_mode_reason": "6 restarts",
                                "safe_mode_since": "2026-11-25T00:00:00+00:00"})


@pytest.mark.asyncio_backend
async def test_status_prints_every_record_and_the_health(redis_url: str) -> None:
    await prepare(redis_url)
    lines: list[str] = []
    assert await operator.status(config_for(redis_url), out=lines.append) == 0
    text = "\n".join(lines)
    assert "2 position records (1 live)" in text
    assert re.search(r"BTC/USDT:USDT\s+protected\s+buy\s+0.01\s+60000\s+58800\s+attached_confirmed", text)
    assert re.search(r"ETH/USDT:USDT\s+closed\s+sell\s+0.1\s+3000\s+3060\s+none\s+\S+\s+closed on request", text)
    assert "safe mode: yes since 2026-11-25T00:00:00+00:00: 6 restarts" in text
    assert "posguard run: not seen" in text


@pytest.mark.asyncio_backend
async def test_audit_dry_run_reports_and_changes_nothing(redis_url: str) -> None:
    await prepare(redis_url)
    lines: list[str] = []
    # The fake venue of a fresh process holds nothing: the protected record is "not visible".
    assert await operator.audit(config_for(redis_url), None, dry_run=True, out=lines.append) == 0
    text = "\n".join(lines)
    assert "audit (dry run): 0 venue positions, 2 records, 1 findings" in text
    assert re.search(r"BTC/USDT:USDT\s+not_visible\s+record protected, venue lists no position\s+would close", text)
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert await client.hget(Keys("ops").position("BTC/USDT:USDT"), "state") == "protected"
        [entry] = await client.xrange(Keys("ops").audit)
        assert entry.field_values["dry_run"] == "yes"


async def test_metrics_expose_every_named_metric_after_a_run(clock: IOAwareMockClock, redis_url: str) -> None:
    metrics = Metrics("fake")
    knobs = FaultKnobs(push_delay={t: Lag.fixed(0.05) for t in ("positions", "orders", "executions")},
                       reject_rate=0.0)
    async with FakeVenue(seed=70, knobs=knobs) as venue, running_engine(
        redis_url, venue, clock, metrics=metrics
    ) as engine:
        await wait_streams_healthy(engine)
        await (await engine.submit(open_intent("m-1"))).wait()
        venue.knobs.reject_rate = 1.0
        await (await engine.submit(open_intent("m-2", symbol="ETH/USDT:USDT"))).wait()
        await anyio.sleep(2)  # one refresh of the gauges
    text = metrics.exposition().decode()
    for name in METRICS:
        base = name.removesuffix("_total")
        assert f"# TYPE {name} " in text or f"# TYPE {base} " in text, f"{name} missing"
    assert 'position_verification_lag_seconds_count{exchange="fake",source="push"} 1.0' in text
    assert 'rollback_attempts_total{exchange="fake"} 1.0' in text
    assert 'atomic_operation_failures_total{exchange="fake",reason="rejected",symbol="ETH/USDT:USDT"} 1.0' in text
    assert 'stream_connected{topic="orders"} 1.0' in text
    assert "positions_unprotected 0.0" in text


def test_metrics_endpoint_serves_on_loopback() -> None:
    metrics = Metrics("fake")
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "# TYPE positions_unprotected gauge" in body
    assert parse_config("").metrics.bind == "127.0.0.1" and parse_config("").metrics.port == 0


PROMQL_WORDS = {"increase", "rate", "sum", "by", "histogram_quantile", "or", "and", "le", "exchange"}


def test_alert_rules_parse_and_name_only_metrics_that_exist() -> None:
    rules = yaml.safe_load((REPO / "supervisor" / "prometheus-alerts.yml").read_text())
    alerts = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    for required in ("OrphanedPositionSuspected", "HighPositionVerificationLag", "PosguardSafeMode",
                     "PosguardStreamDown", "PosguardPositionUnprotected"):
        assert required in alerts
    exposed = Metrics("fake").exposition().decode()
    families = set(re.findall(r"^# TYPE (\S+) (\S+)", exposed, flags=re.M))
    known = set()
    for name, kind in families:
        known |= {name, f"{name}_total"} if kind == "counter" else {name}
        if kind == "histogram":
            known |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    for alert, expr in alerts.items():
        bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", str(expr))
        for token in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", bare):
            assert token in PROMQL_WORDS or token in known, f"{alert}: unknown metric {token!r}"


@pytest.mark.asyncio_backend
async def test_readme_redis_schema_matches_what_the_demo_writes(redis_url: str) -> None:
    from posguard.supervisor.demo import run_demo

    config = parse_config("[demo]\npositions = 3\nsymbols = 2\nhold_seconds = 0\n")
    assert await run_demo(config, redis_url, out=lambda _line: None) == 0
    readme = (REPO / "README.md").read_text()
    documented = re.findall(r"^\| `(posguard:\{acct\}:[^`]+)` \|", readme, flags=re.M)
    patterns = [re.compile("^" + re.escape(d).replace(r"\{acct\}", r"\{demo\}").replace("<symbol>", ".+")
                           .replace(r"<intent_id>", ".+").replace(r"<client_order_id>", ".+") + "$")
                for d in (x.replace("\\<", "<") for x in documented)]
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        keys = [key async for key in client.scan_iter(match="posguard:*")]
        record = await client.hgetall(Keys("demo").position("BTC/USDT:USDT"))
        journal = await client.xrange(Keys("demo").journal, count=1)
    assert keys
    for key in keys:
        assert any(p.match(key) for p in patterns), f"{key} is written but not in the README's schema"
    for field in record:
        assert f"`{field}`" in readme, f"position field {field} not documented"
    for field in journal[0].field_values:
        assert field in readme.split("| `posguard:{acct}:journal` |")[1].split("\n")[0], f"journal field {field}"


# -- found by a hostile session ---------------------------------------------------------------


def _config_file(tmp_path: Path, redis_url: str) -> Path:
    path = tmp_path / "ops.toml"
    path.write_text(f'[redis]\nurl = "{redis_url}"\n[account]\nname = "ops"\n')
    return path


@pytest.mark.parametrize("argv", [
    ["open", "BTC/USDT:USDT", "buy", "0.01", "--stop-price", "58800", "--timeout", "nan"],
    ["open", "BTC/USDT:USDT", "buy", "0.01", "--stop-price", "58800", "--timeout", "-1"],
    ["close", "BTC/USDT:USDT", "--timeout", "0"],
    ["events", "--count", "0"],
    ["events", "--count", "99999999999999999999"],
])
def test_a_bad_argument_is_a_usage_error_and_sends_nothing(argv: list[str], tmp_path: Path, redis_url: str) -> None:
    result = subprocess.run([sys.executable, "-m", "posguard", "--config", str(_config_file(tmp_path, redis_url)),
                             *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and ("outside" in result.stderr or "not a number" in result.stderr)
    assert redis_cli(redis_url, "EXISTS", Keys("ops").intents) == "0", "nothing may be sent before the check"


def test_a_reader_that_leaves_early_is_not_a_redis_outage(tmp_path: Path, redis_url: str) -> None:
    """``posguard status | head -1``: the pipe closes, which is no reason to blame Redis."""
    process = subprocess.Popen([sys.executable, "-m", "posguard", "--config", str(_config_file(tmp_path, redis_url)),
                                "status"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before posguard writes its first line
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 0, stderr
    assert "unreachable" not in stderr and "Traceback" not in stderr
