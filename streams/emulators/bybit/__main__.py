"""``python -m tests.emulator --port N``: run the Bybit V5 emulator on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from posguard.streams.emulators.bybit.server import DEFAULT_API_KEY, serve_forever


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.emulator", description=__doc__)
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0 picks a free one)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help=f"the API key clients must send (default {DEFAULT_API_KEY!r})")
    parser.add_argument("--seed", type=int, default=0, help="seed for the probabilistic faults")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.port, api_key=args.api_key, seed=args.seed))


if __name__ == "__main__":
    main()
