"""``posguard emulator --port N`` (or ``python -m posguard.streams.emulators.bybit``): run the
Bybit V5 emulator on 127.0.0.1 until Ctrl-C, to rehearse a bot against it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from posguard.streams.emulators.bybit.server import DEFAULT_API_KEY, DEFAULT_API_SECRET, serve_forever

__all__ = ["add_arguments", "main", "serve_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The emulator's options, shared by ``posguard emulator`` and ``python -m``."""
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0 picks a free one)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY,
                        help=f"the API key clients must send (default {DEFAULT_API_KEY!r})")
    parser.add_argument("--api-secret", default=DEFAULT_API_SECRET,
                        help=f"the API secret requests must be signed with (default {DEFAULT_API_SECRET!r})")
    parser.add_argument("--seed", type=int, default=0, help="seed for the probabilistic faults")


def serve_from_args(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.port, api_key=args.api_key, api_secret=args.api_secret, seed=args.seed))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m posguard.streams.emulators.bybit", description=__doc__)
    add_arguments(parser)
    return serve_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
