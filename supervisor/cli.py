"""The `posguard` command.

Exit codes: 0 success; 1 finished but something was refused or found wrong (an intent
rejected or failed, a demo position left unprotected); 2 invalid configuration or arguments
(including a wrong Redis password, a metrics port in use, ``run`` without a real venue);
3 a required program or service is missing or refuses us (redis-server, Redis unreachable,
the venue refusing the API credentials); 4 no answer in time (open/close/audit waiting on a
posguard that is not running); 5 ``audit`` refused to adopt: the venue holds positions and
Redis has a record of none of them (the wrong database?; ``--adopt`` takes them over);
130 interrupted. Each failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from posguard.supervisor.config import Config, ConfigError, load_config
from posguard.supervisor.redis_server import RedisServerMissing, start_redis_server
from posguard.supervisor.startup import ServiceUnavailable, innermost

if TYPE_CHECKING:
    from posguard.actors.intents import Intent

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_PROBLEM, EXIT_CONFIG, EXIT_MISSING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posguard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="config.toml (default: built-in defaults)")
    parser.add_argument("--account", default=None,
                        help="with [accounts.NAME] tables in the config: the account this command acts for"
                             " (its keys, its credential variables); a single-account config needs none")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the demo against the built-in simulated venue")
    demo.add_argument("--positions", type=int, help="positions to open and close (default from config: 20)")
    demo.add_argument("--symbols", type=int, help="symbols to spread them over, 1-8 (default 5)")
    demo.add_argument("--seed", type=int, help="the simulated venue's random seed")
    demo.add_argument("--venue", choices=["fake", "emulator"], default="fake",
                      help="fake: the built-in simulated venue; emulator: real ccxt.pro against a "
                           "local exchange emulator (shipped with posguard, see --exchange)")
    demo.add_argument("--exchange", choices=["bybit", "binanceusdm"], default=None,
                      help="with --venue emulator: the emulator's exchange, named as [venue] kind names it "
                           "(default bybit); the same faults on both")
    demo.add_argument("--keep-redis", action="store_true", help="leave the private redis-server running at exit")

    run = commands.add_parser("run", help="run posguard: take intents from Redis and guard the positions")
    run.add_argument("--simulated-venue", action="store_true",
                     help="trade on the built-in simulated venue instead of [venue] kind (a rehearsal: no order"
                          " reaches any exchange); without it, run refuses a config that names no real venue")
    fleet = commands.add_parser(
        "fleet", help="run every [accounts.NAME] of the config: one 'posguard --account NAME run' child each,"
                      " signals forwarded, a child that dies restarted with backoff")
    fleet.add_argument("--simulated-venue", action="store_true", help="passed to every child's run (a rehearsal)")
    commands.add_parser("status", help="every position record, stream health and safe mode")
    audit = commands.add_parser("audit", help="reconcile the venue with Redis now")
    audit.add_argument("--dry-run", action="store_true", help="print the plan: what would be repaired, change nothing")
    audit.add_argument("--adopt", action="store_true",
                       help="take over venue positions although Redis has a record of none of them (without it that"
                            " case is refused, exit 6: it is usually the wrong redis.url or account.name)")
    events = commands.add_parser("events", help="show (and follow) a Redis stream")
    events.add_argument("--stream", choices=["journal", "audit", "alerts", "events", "intents"], default="journal")
    events.add_argument("--count", type=_bounded(int, 1, 100_000), default=20,
                        help="how many recent entries to show first (1-100000)")
    events.add_argument("-f", "--follow", action="store_true", help="keep printing new entries")
    open_ = commands.add_parser("open", help="send an open intent and follow it to its outcome")
    open_.add_argument("symbol", help="ccxt unified symbol, e.g. BTC/USDT:USDT")
    open_.add_argument("side", choices=["buy", "sell"])
    open_.add_argument("qty", type=float)
    stop = open_.add_mutually_exclusive_group(required=True)
    stop.add_argument("--stop-price", type=float)
    stop.add_argument("--stop-distance", type=float, help="fraction of the last price, e.g. 0.02")
    take_profit = open_.add_mutually_exclusive_group()
    take_profit.add_argument("--take-profit", type=float, help="the take-profit's price (optional)")
    take_profit.add_argument("--take-profit-distance", type=float,
                             help="instead: a fraction of the last price in the position's favour, e.g. 0.04")
    close = commands.add_parser("close", help="send a close intent and follow it to its outcome")
    close.add_argument("symbol")
    amend = commands.add_parser("amend", help="move a protected position's stop or take-profit and follow it")
    amend.add_argument("symbol")
    new_stop = amend.add_mutually_exclusive_group()
    new_stop.add_argument("--stop-price", type=float, help="the stop moved to this price")
    new_stop.add_argument("--stop-distance", type=float, help="instead: a fraction of the last price, e.g. 0.01")
    new_stop.add_argument("--breakeven", action="store_true", help="instead: the stop to the entry price")
    new_take_profit = amend.add_mutually_exclusive_group()
    new_take_profit.add_argument("--take-profit", type=float, help="the take-profit moved to this price")
    new_take_profit.add_argument("--take-profit-distance", type=float,
                                 help="instead: a fraction of the last price in the position's favour")
    new_take_profit.add_argument("--no-take-profit", action="store_true", help="instead: the take-profit removed")
    part = close.add_mutually_exclusive_group()
    part.add_argument("--qty", type=float, help="close this many contracts only (a partial close)")
    part.add_argument("--fraction", type=float, help="close this fraction of the open size only, e.g. 0.5")
    for sub in (open_, close, amend):
        sub.add_argument("--intent-id", help="idempotency key (default: generated)")
        sub.add_argument("--timeout", type=_bounded(float, 1.0, 86_400.0), default=120.0,
                         help="seconds to wait for the outcome (1-86400)")
    safe = commands.add_parser("safe-mode", help="leave safe mode (after fixing what caused it)")
    safe.add_argument("action", choices=["off"])
    emulator = commands.add_parser(
        "emulator", help="run a local exchange emulator (Bybit V5 or Binance USD-M: REST + private WebSocket on "
                         "127.0.0.1) until Ctrl-C",
        description="A local Bybit V5 (--venue bybit) or Binance USD-M futures (--venue binance) emulator that "
                    "real ccxt.pro can drive: rehearse a bot against it with venue.rest_url/ws_url pointed at the "
                    "addresses it prints. Binds 127.0.0.1 only.")
    for name, sub in commands.choices.items():
        if name not in ("emulator", "fleet"):  # also after the command: 'posguard run --account alpha'
            sub.add_argument("--account", default=argparse.SUPPRESS, help="as before the command")
    from posguard.streams.emulators.command import add_arguments as add_emulator_arguments

    add_emulator_arguments(emulator)
    return parser


def _bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], int | float]:
    """An argparse type: a finite number in [low, high], else a usage error (exit 2) before
    anything is sent."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (low <= value <= high):  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}-{high:g}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "emulator":
        from posguard.streams.emulators.command import serve_from_args

        return serve_from_args(args)
    try:
        config = load_config(args.config)
        if args.command == "fleet":
            _configure_logging(config, args)
            return _fleet(config, args)
        if args.command != "demo" or args.account is not None:
            from posguard.supervisor.config import select_account

            config = select_account(config, args.account)
        _configure_logging(config, args)
        if args.command == "demo":
            return _demo(config, args)
        if args.command == "run":
            return _run(config, simulated_venue=args.simulated_venue)
        return _operator(config, args)
    except ConfigError as exc:
        print(f"posguard: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (RedisServerMissing, ServiceUnavailable) as exc:
        print(f"posguard: {exc}", file=sys.stderr)
        return EXIT_MISSING
    except KeyboardInterrupt:
        print("posguard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``posguard status | head -1``): what it read is all it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        print(f"posguard: cannot reach a service: {exc}", file=sys.stderr)
        return EXIT_MISSING


def _operator(config: Config, args: argparse.Namespace) -> int:
    from posguard.client import AsyncClient, Ticket
    from posguard.supervisor import operator
    from posguard.supervisor.config import load_secrets

    if not config.redis.url:
        raise ConfigError(f"redis.url: 'posguard {args.command}' reads the Redis that posguard run uses (set redis.url)")
    match args.command:
        case "status":
            return _run_async(config, lambda: operator.status(config))
        case "audit":
            secrets = load_secrets(config)
            return _run_async(config, lambda: operator.audit(config, secrets, dry_run=args.dry_run,
                                                             adopt=args.adopt))
        case "events":
            return _run_async(config, lambda: operator.events(config, args.stream, count=args.count,
                                                              follow=args.follow))
        case "safe-mode":
            return _run_async(config, lambda: operator.safe_mode_off(config))
    intent = intent_of(args)

    def send(client: AsyncClient) -> Awaitable[Ticket]:
        return client.send(intent)

    return _run_async(config, lambda: operator.submit_and_follow(config, send, timeout=args.timeout))


def intent_of(args: argparse.Namespace) -> Intent:
    """The intent ``posguard open`` / ``close`` / ``amend`` sends, built as a strategy would
    build it for `posguard.client` (which decodes it as the service will before it is sent)."""
    from posguard.actors.intents import AmendIntent, CloseIntent, OpenIntent
    from posguard.client import new_intent_id

    intent_id = args.intent_id if args.intent_id is not None else new_intent_id("cli")
    if args.command == "close":
        part = {name: value for name, value in (("qty", args.qty), ("fraction", args.fraction)) if value is not None}
        return CloseIntent(intent_id=intent_id, symbol=args.symbol, **part)
    if args.command == "amend":
        changes = {"stop_price": args.stop_price, "stop_distance": args.stop_distance,
                   "take_profit": args.take_profit, "take_profit_distance": args.take_profit_distance}
        return AmendIntent(intent_id=intent_id, symbol=args.symbol, breakeven=args.breakeven,
                           remove_take_profit=args.no_take_profit,
                           **{name: value for name, value in changes.items() if value is not None})
    given = {"stop_price": args.stop_price, "stop_distance": args.stop_distance, "take_profit": args.take_profit,
             "take_profit_distance": args.take_profit_distance}
    return OpenIntent(intent_id=intent_id, symbol=args.symbol, side=args.side, qty=args.qty,
                      **{name: value for name, value in given.items() if value is not None})


def _run_async(config: Config, call: Callable[[], Awaitable[int]]) -> int:
    """``call`` on asyncio; a failure anyio wrapped in exception groups comes out as the one
    error inside, turned into a one-line `ConfigError`/`ServiceUnavailable` where it is a known
    start-up failure (Redis down or refusing us, the venue refusing the credentials)."""
    from posguard.supervisor.startup import explain_start_failure

    try:
        return anyio.run(call, backend="asyncio")
    except Exception as exc:  # noqa: BLE001 - re-raised unless explained
        explained = explain_start_failure(exc, config)
        if explained is exc:
            raise
        raise explained from None


def _configure_logging(config: Config, args: argparse.Namespace) -> None:
    from posguard.supervisor.logs import configure_logging

    level = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}[
        config.log.level
    ]
    if args.command == "demo":
        level = logging.ERROR  # the demo prints its own progress
    if args.verbose:
        level = logging.DEBUG if args.verbose > 1 else min(level, logging.INFO)
    secrets = [os.environ.get(config.venue.api_key_env, ""), os.environ.get(config.venue.api_secret_env, "")]
    from urllib.parse import urlsplit

    secrets.append(urlsplit(config.redis.url).password or "")
    if config.redis.password_env:
        secrets.append(os.environ.get(config.redis.password_env, ""))
    configure_logging(level, config.log.format, secrets)


def _fleet(config: Config, args: argparse.Namespace) -> int:
    from posguard.supervisor.fleet import run_fleet

    if args.account is not None:
        raise ConfigError(f"--account {args.account}: 'posguard fleet' runs every configured account; to run one,"
                          f" use 'posguard --account {args.account} run'")
    run_args = ["--simulated-venue"] if args.simulated_venue else []
    return anyio.run(lambda: run_fleet(config, args.config, run_args), backend="asyncio")


def _run(config: Config, *, simulated_venue: bool) -> int:
    from posguard.supervisor.config import check_run_venue, load_secrets, redis_connection
    from posguard.supervisor.service import run_service

    if not config.redis.url:
        raise ConfigError("redis.url: 'posguard run' needs a Redis that outlives it (set redis.url)")
    check_run_venue(config, simulated_venue=simulated_venue)
    secrets = load_secrets(config)
    previous = signal.signal(signal.SIGTERM, _stopped_before_start)
    try:
        return _run_async(config, lambda: run_service(config, secrets, redis_connection(config)))
    except BaseException as exc:
        if not isinstance(innermost(exc), _StoppedBeforeStart):
            raise
        print("posguard: stopped (SIGTERM) before it had started", file=sys.stderr)
        return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, previous)


class _StoppedBeforeStart(SystemExit):
    """SIGTERM before the service listens for it (it does from its first moment in the event
    loop): nothing was started, so stopping is clean (exit 0), as documented. A `SystemExit`
    because asyncio swallows other exceptions raised inside its callbacks."""


def _stopped_before_start(signum: int, frame: object) -> None:
    raise _StoppedBeforeStart()


def _demo(config: Config, args: argparse.Namespace) -> int:
    import msgspec

    from posguard.supervisor.demo import run_demo

    if args.exchange is not None and args.venue != "emulator":
        raise ConfigError(f"--exchange {args.exchange}: applies to --venue emulator only (the simulated venue is "
                          "neither exchange); add --venue emulator or drop --exchange")
    exchange = args.exchange or "bybit"
    overrides = {k: v for k in ("positions", "symbols", "seed") if (v := getattr(args, k)) is not None}
    if overrides:
        try:
            demo = msgspec.convert(msgspec.to_builtins(config.demo) | overrides, type(config.demo))
        except msgspec.ValidationError as exc:
            raise ConfigError(f"demo option: {exc}") from None
        config = msgspec.structs.replace(config, demo=demo)
    if config.redis.url:
        from posguard.supervisor.config import redis_connection

        return _run_async(config, lambda: run_demo(config, redis_connection(config), args.venue, exchange))
    server = start_redis_server()
    try:
        code = anyio.run(run_demo, config, server.url, args.venue, exchange, backend="asyncio")
        print(f"\ninspect it:  redis-cli -p {server.port} --scan --pattern 'posguard:{{demo}}:*'")
        print(f"             redis-cli -p {server.port} HGETALL 'posguard:{{demo}}:position:BTC/USDT:USDT'")
        print(f"             redis-cli -p {server.port} XREVRANGE 'posguard:{{demo}}:journal' + - COUNT 10")
        if args.keep_redis:
            print(f"the private redis-server (pid {server.process.pid}) keeps running; "
                  f"stop it with: redis-cli -p {server.port} shutdown nosave")
        else:
            print("(the private redis-server stops now; run with --keep-redis to keep it, or set redis.url)")
        return code
    finally:
        if not args.keep_redis:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
