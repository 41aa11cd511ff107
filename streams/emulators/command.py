"""``posguard emulator [--venue bybit|binance] --port N``: run an emulator on 127.0.0.1 until
Ctrl-C, to rehearse a bot against it (``python -m posguard.streams.emulators.bybit`` and
``python -m posguard.streams.emulators.binance`` do the same for one venue)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from posguard.streams.emulators.engine.serving import DEFAULT_API_KEY, DEFAULT_API_SECRET

__all__ = ["VENUES", "add_arguments", "main", "serve_from_args"]

VENUES = ("bybit", "binance")


def add_arguments(parser: argparse.ArgumentParser, *, venue: str | None = "bybit") -> None:
    """The emulator's options, shared by ``posguard emulator`` and ``python -m``; ``venue=None``
    leaves out ``--venue`` (a one-venue entry point)."""
    if venue is not None:
        parser.add_argument("--venue", choices=VENUES, default=venue,
                            help=f"which exchange to emulate (default {venue}): bybit is Bybit V5 linear, "
                                 "binance is Binance USD-M futures")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0 picks a free one)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY,
                        help=f"the API key clients must send (default {DEFAULT_API_KEY!r})")
    parser.add_argument("--api-secret", default=DEFAULT_API_SECRET,
                        help=f"the API secret requests must be signed with (default {DEFAULT_API_SECRET!r})")
    parser.add_argument("--seed", type=int, default=0, help="seed for the probabilistic faults")


def serve_from_args(args: argparse.Namespace, venue: str = "bybit") -> int:
    chosen = getattr(args, "venue", None) or venue
    if chosen == "binance":
        from posguard.streams.emulators.binance.server import serve_forever
    else:
        from posguard.streams.emulators.bybit.server import serve_forever
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.port, api_key=args.api_key, api_secret=args.api_secret, seed=args.seed))
    return 0


def main(venue: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m posguard.streams.emulators.{venue}", description=__doc__)
    add_arguments(parser, venue=None)
    return serve_from_args(parser.parse_args(argv), venue)
