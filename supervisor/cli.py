"""The `posguard` command.

Exit codes: 0 success; 1 the run finished but found a problem (e.g. a position left
unprotected); 2 invalid configuration or arguments; 3 a required program or service is
missing (redis-server, Redis unreachable); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import anyio

from supervisor.config import Config, ConfigError, load_config
from supervisor.redis_server import RedisServerMissing, start_redis_server

EXIT_OK, EXIT_PROBLEM, EXIT_CONFIG, EXIT_MISSING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posguard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="config.toml (default: built-in defaults)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the demo against the built-in simulated venue")
    demo.add_argument("--positions", type=int, help="positions to open and close (default from config: 20)")
    demo.add_argument("--symbols", type=int, help="symbols to spread them over, 1-8 (default 5)")
    demo.add_argument("--seed", type=int, help="the simulated venue's random seed")
    demo.add_argument("--venue", choices=["fake", "emulator"], default="fake",
                      help="fake: the built-in simulated venue; emulator: real ccxt.pro against the "
                           "local Bybit emulator (from a source checkout)")
    demo.add_argument("--keep-redis", action="store_true", help="leave the private redis-server running at exit")

    commands.add_parser("run", help="run posguard: take intents from Redis and guard the positions")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The demo prints its own progress; a service logs what it does.
    levels = [logging.ERROR if args.command == "demo" else logging.INFO, logging.INFO, logging.DEBUG]
    logging.basicConfig(
        level=levels[min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config)
        if args.command == "demo":
            return _demo(config, args)
        if args.command == "run":
            return _run(config)
    except ConfigError as exc:
        print(f"posguard: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RedisServerMissing as exc:
        print(f"posguard: {exc}", file=sys.stderr)
        return EXIT_MISSING
    except KeyboardInterrupt:
        print("posguard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    parser.error(f"unknown command {args.command}")
    return EXIT_CONFIG


def _run(config: Config) -> int:
    from supervisor.config import load_secrets
    from supervisor.service import run_service

    if not config.redis.url:
        raise ConfigError("redis.url: 'posguard run' needs a Redis that outlives it (set redis.url)")
    secrets = load_secrets(config)
    return anyio.run(run_service, config, secrets, config.redis.url, backend="asyncio")


def _demo(config: Config, args: argparse.Namespace) -> int:
    import msgspec

    from supervisor.demo import run_demo

    overrides = {k: v for k in ("positions", "symbols", "seed") if (v := getattr(args, k)) is not None}
    if overrides:
        try:
            demo = msgspec.convert(msgspec.to_builtins(config.demo) | overrides, type(config.demo))
        except msgspec.ValidationError as exc:
            raise ConfigError(f"demo option: {exc}") from None
        config = msgspec.structs.replace(config, demo=demo)
    if config.redis.url:
        return anyio.run(run_demo, config, config.redis.url, args.venue, backend="asyncio")
    server = start_redis_server()
    try:
        code = anyio.run(run_demo, config, server.url, args.venue, backend="asyncio")
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
