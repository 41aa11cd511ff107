"""`posguard fleet`: many accounts from one config, one process per account.

Each ``[accounts.NAME]`` gets its own child ``posguard --config FILE --account NAME run``:
its own keys (the name is each key's hash tag), its own actors, streams and credentials (its
own environment variables, `account_credential_envs`), its own failures. A process per account
keeps one account's crash, stall or fencing from touching another's, and keeps every single-
account rule (start-up checks, signals, exit codes) exactly as `posguard run` has it.

The fleet only keeps the children running: it starts at most ``fleet.max_accounts``, forwards
SIGINT/SIGTERM to every child (each stops gracefully within ``supervisor.shutdown_grace``, then
is killed), starts a child that died again after a backoff (``fleet.restart_delay``, doubling
up to ``restart_delay_max``, reset after ``healthy_after`` seconds of running), and reports
every exit on stderr. A child that exits 2 (its configuration is invalid) is not restarted:
waiting fixes nothing, the file does.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import anyio.abc
import msgspec

from posguard.supervisor.config import Config, ConfigError

__all__ = ["ChildExit", "child_command", "run_fleet"]

EXIT_CONFIG = 2
KILL_MARGIN = 10.0
"""Seconds past ``supervisor.shutdown_grace`` a child gets to stop before it is SIGKILLed."""


class ChildExit(msgspec.Struct, frozen=True, kw_only=True):
    """One child's end, as reported (and returned, for the tests)."""

    account: str
    pid: int
    code: int
    ran_s: float
    restarting: bool


def child_command(config_path: Path, account: str, run_args: Sequence[str]) -> list[str]:
    """The one account's process: exactly what an operator would type for it."""
    return [sys.executable, "-m", "posguard", "--config", str(config_path), "--account", account, "run", *run_args]


async def run_fleet(config: Config, config_path: Path | None, run_args: Sequence[str] = (),
                    report: Callable[[str], None] | None = None,
                    exits: list[ChildExit] | None = None) -> int:
    """Run one child per configured account until SIGINT/SIGTERM; 0 when every child stopped
    cleanly on the signal, 1 if any gave up (a config error) or had to be killed."""
    say = report or (lambda line: print(f"posguard fleet: {line}", file=sys.stderr, flush=True))
    if config_path is None or not config.accounts:
        raise ConfigError("accounts: 'posguard fleet' runs the [accounts.NAME] tables of a config file; pass --config"
                          " with at least one (for a single account use 'posguard run')")
    names = sorted(config.accounts)
    if len(names) > config.fleet.max_accounts:  # check_config refuses this too; a fleet never starts more
        raise ConfigError(f"accounts: {len(names)} accounts configured, more than fleet.max_accounts ="
                          f" {config.fleet.max_accounts}")
    exits = exits if exits is not None else []
    stopping = anyio.Event()
    children: dict[str, anyio.abc.Process] = {}
    problems: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_forward_signals, children, stopping, say)
        say(f"running {len(names)} accounts: {', '.join(names)}")
        async with anyio.create_task_group() as accounts:
            for name in names:
                accounts.start_soon(_keep_running, config, config_path, name, list(run_args), children, stopping, say,
                                    exits, problems)
        tg.cancel_scope.cancel()  # every account has ended (stopped, or given up): nothing left to forward to
    if not stopping.is_set():
        say("every account has given up; stopping")
    return 1 if problems else 0


async def _keep_running(config: Config, config_path: Path, name: str, run_args: list[str],
                        children: dict[str, anyio.abc.Process], stopping: anyio.Event,
                        say: Callable[[str], None], exits: list[ChildExit], problems: list[str]) -> None:
    fleet = config.fleet
    delay = fleet.restart_delay
    while not stopping.is_set():
        started = time.monotonic()
        # Its own session: a Ctrl-C at the terminal reaches the fleet only, which forwards it
        # once (a child signalled twice would not stop gracefully).
        process = await anyio.open_process(child_command(config_path, name, run_args), stdin=None, stdout=None,
                                           stderr=None, start_new_session=True)
        children[name] = process
        if stopping.is_set():  # the signal came while this child was being started: it gets it too
            process.send_signal(signal.SIGTERM)
        say(f"account {name}: started (pid {process.pid})")
        code = await _wait_or_stop(process, stopping, config.supervisor.shutdown_grace + KILL_MARGIN, say, name)
        del children[name]
        ran = time.monotonic() - started
        restarting = not stopping.is_set() and code != EXIT_CONFIG
        exits.append(ChildExit(account=name, pid=process.pid, code=code, ran_s=ran, restarting=restarting))
        if stopping.is_set():
            say(f"account {name}: stopped, exit code {code}")
            if code != 0:
                problems.append(name)
            return
        if code == EXIT_CONFIG:
            say(f"account {name}: exit code 2 (invalid configuration, see its last line above); not restarted:"
                f" fix the file and run 'posguard --account {name} run' or restart the fleet")
            problems.append(name)
            return
        if ran >= fleet.healthy_after:
            delay = fleet.restart_delay
        say(f"account {name}: exited with code {code} after {ran:.1f} s; restarting in {delay:g} s")
        with anyio.move_on_after(delay):
            await stopping.wait()
        delay = min(delay * 2, fleet.restart_delay_max)


async def _wait_or_stop(process: anyio.abc.Process, stopping: anyio.Event, kill_after: float,
                        say: Callable[[str], None], name: str) -> int:
    """The child's exit code. Once the fleet is stopping (the signal was forwarded), the child
    gets ``kill_after`` seconds, then SIGKILL (its positions stay protected by their stops;
    its next start resumes from Redis)."""
    async with anyio.create_task_group() as tg:
        async def deadline() -> None:
            await stopping.wait()
            with anyio.move_on_after(kill_after):
                await process.wait()
                return
            say(f"account {name}: did not stop within {kill_after:g} s; killing pid {process.pid}")
            process.kill()

        tg.start_soon(deadline)
        code = await process.wait()
        tg.cancel_scope.cancel()
    return code


async def _forward_signals(children: dict[str, anyio.abc.Process], stopping: anyio.Event,
                           say: Callable[[str], None]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if stopping.is_set():
                continue
            say(f"{name} received: forwarding to {len(children)} children and waiting for them")
            stopping.set()
            for process in list(children.values()):
                if process.returncode is None:
                    process.send_signal(signum)
            return
