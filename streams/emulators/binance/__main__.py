"""``python -m posguard.streams.emulators.binance``: run the Binance USD-M futures emulator on
127.0.0.1 until Ctrl-C (``posguard emulator --venue binance`` does the same)."""

from __future__ import annotations

from posguard.streams.emulators.command import main

if __name__ == "__main__":
    raise SystemExit(main("binance"))
