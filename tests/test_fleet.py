"""Many accounts: ``[accounts.NAME]`` tables, ``posguard --account NAME ...`` and the
``posguard fleet`` launcher (one ``run`` child per account), on one Redis and on the test
Redis Cluster.

The ground truth for "each account served by its own process" is what each process itself
writes: its pid in its own account's health hash (the watchdog's heartbeat), its replies in
its own account's reply lists; and, on the cluster, which master holds which keys.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from posguard.actors.store.client import RedisConnection, open_redis
from posguard.actors.store.keys import Keys
from posguard.supervisor.config import ConfigError, check_config, load_secrets, parse_config, select_account
from tests.redis_cluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]
ALPHA, BETA = "alpha", "beta"  # on the test cluster these two land on two masters (asserted below)


# -- choosing the account: the config rules ----------------------------------------------


def test_a_single_account_config_is_served_unchanged() -> None:
    config = parse_config('[account]\nname = "main"\n')
    assert select_account(config, None) is config
    assert select_account(config, "main") is config
    with pytest.raises(ConfigError, match=r"^--account other: the config has no \[accounts.other\] table"):
        select_account(config, "other")


def test_each_account_reads_its_own_credentials_and_never_anothers() -> None:
    config = parse_config('[venue]\nkind = "bybit"\n[accounts.alpha]\n[accounts.beta-2]\n'
                          'api_key_env = "BETA_KEY"\napi_secret_env = "BETA_SECRET"\n')
    env = {"POSGUARD_ALPHA_API_KEY": "ka", "POSGUARD_ALPHA_API_SECRET": "sa", "BETA_KEY": "kb", "BETA_SECRET": "sb",
           "POSGUARD_API_KEY": "the-single-accounts-key", "POSGUARD_API_SECRET": "the-single-accounts-secret"}
    alpha, beta = select_account(config, "alpha"), select_account(config, "beta-2")
    assert alpha.account.name == "alpha" and beta.account.name == "beta-2"
    got = {name: load_secrets(c, env) for name, c in (("alpha", alpha), ("beta-2", beta))}
    assert {name: (c.api_key, c.api_secret) for name, c in got.items() if c} == {"alpha": ("ka", "sa"),
                                                                                "beta-2": ("kb", "sb")}
    # An account whose own variable is missing is refused, naming it; it never falls back.
    with pytest.raises(ConfigError, match="POSGUARD_ALPHA_API_KEY is not set"):
        load_secrets(alpha, {k: v for k, v in env.items() if k != "POSGUARD_ALPHA_API_KEY"})


@pytest.mark.parametrize(("text", "refusal"), [
    ('[accounts.a]\n[accounts.b]\n', None),
    ('[accounts.a]\napi_key_env = "K"\n[accounts.b]\napi_key_env = "K"\n',
     "accounts.b: reads K, which is account a's too"),
    ('[accounts.a-b]\n[accounts.a_b]\n', "accounts.a_b: reads POSGUARD_A_B_API_KEY, which is account a-b's too"),
    ('[fleet]\nmax_accounts = 1\n[accounts.a]\n[accounts.b]\n',
     "accounts: 2 accounts configured, more than fleet.max_accounts = 1"),
    ('[metrics]\nport = 9100\n[accounts.a]\n[accounts.b]\n',
     "accounts.b.metrics_port: 9100 is account a's too"),
    ('[metrics]\nport = 9100\n[accounts.a]\n[accounts.b]\nmetrics_port = 9101\n', None),
])
def test_accounts_that_would_share_credentials_or_exceed_the_maximum_are_refused(text: str, refusal: str | None) -> None:
    config = parse_config(text)
    if refusal is None:
        check_config(config)
        return
    with pytest.raises(ConfigError) as caught:
        check_config(config)
    assert str(caught.value).startswith(refusal), caught.value


def test_a_multi_account_config_never_guesses_the_account() -> None:
    config = parse_config("[accounts.a]\n[accounts.b]\n")
    with pytest.raises(ConfigError, match=r"name one with --account NAME, or start them all with 'posguard fleet'"):
        select_account(config, None)
    with pytest.raises(ConfigError, match=r"^--account c: no \[accounts.c\] table; configured: a, b"):
        select_account(config, "c")


def test_the_cli_refuses_a_missing_account_in_one_line(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[redis]\nurl = "{redis_url}"\n[accounts.a]\n[accounts.b]\n')
    done = subprocess.run([sys.executable, "-m", "posguard", "--config", str(config), "status"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "posguard: invalid configuration: accounts: 2 accounts are configured (a, b); name one with --account NAME,"
        " or start them all with 'posguard fleet'"]
    # --account may also follow the command; an account the file does not have is refused.
    done = subprocess.run([sys.executable, "-m", "posguard", "--config", str(config), "run", "--account", "c"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "posguard: invalid configuration: --account c: no [accounts.c] table; configured: a, b"]


# -- the launcher: two accounts, two processes -------------------------------------------


async def _health(client: object, account: str) -> dict[str, str]:
    return dict(await client.hgetall(Keys(account).health))  # type: ignore[attr-defined]


async def _wait_for_pid(client: object, account: str, *, not_pid: str | None = None) -> str:
    """The pid the account's serving process writes in its own health hash (its heartbeat);
    with ``not_pid``, a new one (the restarted child's)."""
    with anyio.fail_after(90):
        while True:
            health = await _health(client, account)
            pid = health.get("pid")
            if pid and health.get("heartbeat_ms") and pid != not_pid:
                return pid
            await anyio.sleep(0.1)


async def _open_and_follow(client: object, account: str, intent_id: str,
                           symbol: str = "BTC/USDT:USDT", stop: str = "58800") -> list[dict[str, object]]:
    keys = Keys(account)
    await client.xadd(keys.intents, {  # type: ignore[attr-defined]
        "intent_id": intent_id, "action": "open", "symbol": symbol, "side": "buy", "qty": "0.1", "stop_price": stop})
    replies: list[dict[str, object]] = []
    with anyio.fail_after(90):
        while not replies or replies[-1]["status"] == "accepted":
            popped = await client.blpop([keys.reply(intent_id)], timeout=5)  # type: ignore[attr-defined]
            if popped:
                replies.append(json.loads(popped[1]))
    return replies


async def _all_keys(client: object) -> set[str]:
    return {key async for key in client.scan_iter(match="*")}  # type: ignore[attr-defined]


async def _fleet_serves_two_accounts(tmp_path: Path, connection: RedisConnection,
                                     cluster: LocalCluster | None, *, ctrl_c: bool = False) -> None:
    """``ctrl_c``: stop it as a terminal's Ctrl-C does, SIGINT to its whole process group
    (each child must still be signalled once, by the fleet, and stop cleanly)."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[redis]\nurl = "{connection.url}"\ncluster = {"true" if connection.cluster else "false"}\n'
        f'[accounts.{ALPHA}]\n[accounts.{BETA}]\n[fleet]\nrestart_delay = 0.2\n[supervisor]\nshutdown_grace = 5\n')
    log = tmp_path / "fleet.log"
    with log.open("wb") as sink:
        fleet = await anyio.open_process(
            [sys.executable, "-m", "posguard", "--config", str(config), "fleet", "--simulated-venue"],
            cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True)
    try:
        async with open_redis(connection) as client:
            pids = {name: await _wait_for_pid(client, name) for name in (ALPHA, BETA)}
            assert len(set(pids.values())) == 2 and str(fleet.pid) not in pids.values(), pids

            # The same intent id on both accounts: each is answered by its own process, in its
            # own account's lists and records; neither sees the other's.
            answers = {name: await _open_and_follow(client, name, "same-id-1") for name in (ALPHA, BETA)}
            for name, replies in answers.items():
                assert [r["status"] for r in replies] == ["accepted", "done"], (name, replies)
                assert replies[-1]["outcome"] == "protected", (name, replies)
                record = await client.hgetall(Keys(name).position("BTC/USDT:USDT"))
                assert record["state"] == "protected" and record["intent_id"] == "same-id-1"
            keys = await _all_keys(client)
            by_account = {name: {k for k in keys if k.startswith(Keys(name).prefix + ":")} for name in (ALPHA, BETA)}
            assert by_account[ALPHA] and by_account[BETA] and by_account[ALPHA].isdisjoint(by_account[BETA])
            assert keys == by_account[ALPHA] | by_account[BETA], sorted(keys - by_account[ALPHA] - by_account[BETA])
            if cluster is not None:
                masters = {name: cluster.master_of_key(Keys(name).journal) for name in (ALPHA, BETA)}
                assert masters[ALPHA] != masters[BETA], "the two accounts must live on two masters"

            # A child that dies is started again (a new pid heartbeats); the other is untouched.
            os.kill(int(pids[ALPHA]), signal.SIGKILL)
            restarted = await _wait_for_pid(client, ALPHA, not_pid=pids[ALPHA])
            assert restarted != pids[ALPHA]
            assert (await _health(client, BETA))["pid"] == pids[BETA]
            # (Its simulated venue is a new one, empty: an entry on another symbol, which the
            # audit of the old BTC record does not concern.)
            again = await _open_and_follow(client, ALPHA, "after-restart-1", "ETH/USDT:USDT", "2940")
            assert [r["status"] for r in again] == ["accepted", "done"], again
    finally:
        if fleet.returncode is None:
            if ctrl_c:
                os.killpg(fleet.pid, signal.SIGINT)
            else:
                fleet.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            code = await fleet.wait()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert f"account {ALPHA}: exited with code -9" in text, text[-3000:]
    for name in (ALPHA, BETA):
        assert f"account {name}: stopped, exit code 0" in text, text[-3000:]


@pytest.mark.asyncio_backend
async def test_fleet_runs_two_accounts_on_one_redis(tmp_path: Path, redis_url: str) -> None:
    await _fleet_serves_two_accounts(tmp_path, RedisConnection(url=redis_url), None)


@pytest.mark.asyncio_backend
async def test_fleet_runs_two_accounts_on_the_cluster(tmp_path: Path, redis_cluster: LocalCluster) -> None:
    await _fleet_serves_two_accounts(tmp_path, RedisConnection(url=redis_cluster.url, cluster=True), redis_cluster,
                                     ctrl_c=True)


@pytest.mark.asyncio_backend
async def test_a_child_with_an_invalid_config_is_reported_and_not_restarted(tmp_path: Path) -> None:
    """Exit 2 means the file is wrong; restarting fixes nothing: the fleet reports it, keeps no
    child, and ends 1 once every account has given up (here: no redis.url, which run needs)."""
    config = tmp_path / "config.toml"
    config.write_text("[accounts.a]\n[accounts.b]\n[fleet]\nrestart_delay = 0.1\n")
    with anyio.fail_after(120):
        done = await anyio.run_process(
            [sys.executable, "-m", "posguard", "--config", str(config), "fleet", "--simulated-venue"],
            cwd=REPO, check=False)
    text = done.stderr.decode()
    assert done.returncode == 1, text
    for name in ("a", "b"):
        assert text.count(f"account {name}: started") == 1, text
        assert f"account {name}: exit code 2 (invalid configuration" in text, text
    assert "redis.url: 'posguard run' needs a Redis" in text
    assert "every account has given up; stopping" in text


@pytest.mark.asyncio_backend
async def test_a_child_that_keeps_dying_is_restarted_with_a_doubling_capped_backoff(tmp_path: Path) -> None:
    """Redis unreachable: every child exits 3 at once; the fleet starts it again after 0.1,
    0.2, 0.4, 0.4 s (restart_delay doubling up to restart_delay_max), reporting each exit, and
    still stops cleanly on SIGTERM."""
    from posguard.supervisor.redis_server import free_port

    config = tmp_path / "config.toml"
    config.write_text(f'[redis]\nurl = "redis://127.0.0.1:{free_port()}/0"\n[accounts.a]\n'
                      "[fleet]\nrestart_delay = 0.1\nrestart_delay_max = 0.4\n")
    log = tmp_path / "fleet.log"
    with log.open("wb") as sink:
        fleet = await anyio.open_process(
            [sys.executable, "-m", "posguard", "--config", str(config), "fleet", "--simulated-venue"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True)
    try:
        with anyio.fail_after(120):
            while log.read_text().count("exited with code 3") < 4:
                await anyio.sleep(0.1)
    finally:
        fleet.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            await fleet.wait()
    delays = [line.rsplit("restarting in ", 1)[1] for line in log.read_text().splitlines()
              if "account a: exited with code 3" in line]
    assert delays[:4] == ["0.1 s", "0.2 s", "0.4 s", "0.4 s"], log.read_text()[-2000:]
