"""`posguard run` at start-up: what it refuses, with which exit code, in one line (issue 12,
items 4-6).

Each test starts ``python -m posguard run`` as a real process, as an operator would, against
this suite's redis-server and, where a venue is needed, the Bybit V5 emulator driven by real
ccxt. Nothing here may print a traceback, and no line may carry a secret.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from posguard.streams.emulators.bybit import DEFAULT_API_KEY, DEFAULT_API_SECRET, EmulatorServer, running_emulator
from posguard.streams.emulators.bybit.client import run_config
from posguard.supervisor.redis_server import free_port
from tests.emulator_fixtures import loopback_network_only  # noqa: F401

pytestmark = [pytest.mark.asyncio_backend, pytest.mark.usefixtures("loopback_network_only")]

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "startup"


def bybit_config(path: Path, emu: EmulatorServer, redis_url: str, extra: str = "") -> Path:
    path.write_text(run_config(emu, redis_url, ACCOUNT, extra))
    return path


async def run_posguard(config: Path, *args: str, key: str = DEFAULT_API_KEY, secret: str = DEFAULT_API_SECRET,
                       timeout: float = 60.0) -> tuple[int, list[str]]:
    """``posguard --config CONFIG run ARGS``; its exit code and its stderr lines."""
    env = dict(os.environ, POSGUARD_API_KEY=key, POSGUARD_API_SECRET=secret)
    with anyio.fail_after(timeout):
        process = await anyio.run_process(
            [sys.executable, "-m", "posguard", "--config", str(config), "run", *args],
            cwd=REPO, env=env, check=False,
        )
    lines = [line for line in process.stderr.decode().splitlines() if line.strip()]
    return process.returncode, lines


def assert_one_clean_line(lines: list[str], *, starts: str, names: str) -> None:
    """The failure is the last line, it names what to fix, and nothing is a traceback."""
    text = "\n".join(lines)
    assert "Traceback" not in text and "ExceptionGroup" not in text, text
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert last.startswith(starts) and names in last, text
    assert sum(line.startswith("posguard: ") for line in lines) == 1, text


# -- item 6: `run` needs a real venue --------------------------------------------------------


async def test_run_without_a_venue_section_exits_2_naming_venue_kind(redis_url: str, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[account]\nname = "{ACCOUNT}"\n[redis]\nurl = "{redis_url}"\n')
    code, lines = await run_posguard(config, timeout=30)
    assert code == 2
    assert lines == [lines[-1]] and lines[-1].startswith("posguard: invalid configuration: venue.kind:"), lines
    assert "--simulated-venue" in lines[-1]


async def test_simulated_venue_needs_the_flag_is_logged_and_shown_in_status(redis_url: str, tmp_path: Path) -> None:
    import coredis

    from posguard.actors.store.keys import Keys

    config = tmp_path / "config.toml"
    config.write_text(f'[account]\nname = "{ACCOUNT}"\n[redis]\nurl = "{redis_url}"\n')
    log = tmp_path / "stderr.log"
    env = dict(os.environ)
    process = await anyio.open_process(
        [sys.executable, "-m", "posguard", "--config", str(config), "run", "--simulated-venue"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )
    try:
        async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
            with anyio.fail_after(60):
                while await client.hget(Keys(ACCOUNT).health, "heartbeat_ms") is None:
                    await anyio.sleep(0.1)
            assert await client.hget(Keys(ACCOUNT).health, "venue") == "simulated"
        status = await anyio.run_process(
            [sys.executable, "-m", "posguard", "--config", str(config), "status"], cwd=REPO, env=env)
        assert "venue: SIMULATED" in status.stdout.decode(), status.stdout.decode()
    finally:
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await process.wait()
    assert "SIMULATED VENUE" in log.read_text()

    # The flag with a real venue configured is a contradiction, refused in one line.
    async with running_emulator() as emu:
        code, lines = await run_posguard(bybit_config(tmp_path / "bybit.toml", emu, redis_url), "--simulated-venue")
    assert code == 2
    assert_one_clean_line(lines, starts="posguard: invalid configuration: venue.kind:", names="--simulated-venue")


# -- item 4: credentials the venue refuses ---------------------------------------------------


async def test_a_wrong_api_key_or_secret_exits_3_naming_the_environment_variables(
    redis_url: str, tmp_path: Path
) -> None:
    wrong_key, wrong_secret = "wrong-key-7d1c0a", "wrong-secret-58be3f"
    async with running_emulator() as emu:
        config = bybit_config(tmp_path / "config.toml", emu, redis_url)
        for key, secret in [(wrong_key, DEFAULT_API_SECRET), (DEFAULT_API_KEY, wrong_secret)]:
            code, lines = await run_posguard(config, key=key, secret=secret)
            assert code == 3, lines
            assert_one_clean_line(lines, starts="posguard: ", names="POSGUARD_API_KEY")
            assert "POSGUARD_API_SECRET" in lines[-1]
            text = "\n".join(lines)
            assert secret not in text and key not in text
        assert emu.truth()["orders"] == [], "nothing reaches the venue with refused credentials"


# -- item 5: start-up errors are one line with the documented exit code ----------------------


async def test_redis_down_exits_3_in_one_line(tmp_path: Path) -> None:
    async with running_emulator() as emu:
        nowhere = f"redis://127.0.0.1:{free_port()}/0"
        code, lines = await run_posguard(bybit_config(tmp_path / "config.toml", emu, nowhere))
    assert code == 3
    assert_one_clean_line(lines, starts="posguard: ", names="redis.url")


async def test_a_wrong_redis_password_exits_2_in_one_line_without_the_password(
    redis_url: str, tmp_path: Path
) -> None:
    password = "not-the-password-4e1f"
    wrong = redis_url.replace("redis://", f"redis://nobody:{password}@")
    async with running_emulator() as emu:
        code, lines = await run_posguard(bybit_config(tmp_path / "config.toml", emu, wrong))
    assert code == 2
    assert_one_clean_line(lines, starts="posguard: ", names="redis.url")
    assert password not in "\n".join(lines)


async def test_metrics_port_in_use_exits_2_in_one_line(redis_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running_emulator() as emu:
            config = bybit_config(tmp_path / "config.toml", emu, redis_url, f"[metrics]\nport = {port}\n")
            code, lines = await run_posguard(config)
    assert code == 2
    assert_one_clean_line(lines, starts="posguard: ", names="metrics.port")


async def test_sigterm_during_the_start_up_checks_stops_cleanly(redis_url: str, tmp_path: Path) -> None:
    """Documented: SIGTERM stops `posguard run` with exit code 0, also while it is still
    checking its services at start (here: a venue that accepts connections and never answers)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(f"""
[venue]
kind = "bybit"
testnet = false
rest_url = "http://127.0.0.1:{port}"
ws_url = "ws://127.0.0.1:{port}"
[redis]
url = "{redis_url}"
""")
        log = tmp_path / "stderr.log"
        env = dict(os.environ, POSGUARD_API_KEY="k" * 12, POSGUARD_API_SECRET="s" * 12)
        process = await anyio.open_process(
            [sys.executable, "-m", "posguard", "--config", str(config), "run"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
        )
        with anyio.fail_after(60):  # ccxt gives up on the silent venue after its timeout
            while "checking the API credentials: the venue did not answer" not in log.read_text():
                await anyio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            code = await process.wait()
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()


async def test_open_with_an_id_already_used_reports_the_duplicate_not_the_old_replies(
    redis_url: str, tmp_path: Path
) -> None:
    """Found by a hostile session: replies a strategy left unread under an id were printed as
    the outcome of ``posguard open --intent-id`` with that id (exit 0, for a position that was
    never opened). The id was used for another intent (ETH), so this one (BTC) is refused as
    such (issue 13, defect 4)."""
    import coredis

    from posguard.actors.store.keys import Keys

    keys = Keys(ACCOUNT)
    config = tmp_path / "config.toml"
    config.write_text(f'[account]\nname = "{ACCOUNT}"\n[redis]\nurl = "{redis_url}"\n')
    process = await anyio.open_process(
        [sys.executable, "-m", "posguard", "--config", str(config), "run", "--simulated-venue"],
        cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
            await client.xadd(keys.intents, {"intent_id": "rr1", "action": "open", "symbol": "ETH/USDT:USDT",
                                             "side": "buy", "qty": "0.1", "stop_price": "2900"})
            with anyio.fail_after(60):
                while '"done"' not in "".join(await client.lrange(keys.reply("rr1"), 0, -1)):
                    await anyio.sleep(0.1)
        again = await anyio.run_process(
            [sys.executable, "-m", "posguard", "--config", str(config), "open", "BTC/USDT:USDT", "buy", "0.01",
             "--stop-price", "58800", "--intent-id", "rr1", "--timeout", "30"],
            cwd=REPO, env=dict(os.environ), check=False)
    finally:
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await process.wait()
    printed = again.stdout.decode()
    assert again.returncode == 1, printed
    lines = printed.splitlines()
    assert any(line.startswith("rejected ") and "already used by a different intent" in line for line in lines), (
        printed)
    assert not any(line.startswith(("accepted", "done")) for line in lines), "an earlier use's replies shown"
