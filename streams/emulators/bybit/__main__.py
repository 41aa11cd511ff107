"""``python -m posguard.streams.emulators.bybit``: run the Bybit V5 emulator on 127.0.0.1 until
Ctrl-C (``posguard emulator`` does the same; see `posguard.streams.emulators.command`)."""

from __future__ import annotations

from posguard.streams.emulators.command import main

if __name__ == "__main__":
    raise SystemExit(main("bybit"))
