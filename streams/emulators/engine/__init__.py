"""What the Bybit and Binance emulators share: the matching engine, the fault knobs, the
instruments, the control API and the reading of the ground truth. Each venue's front
(`posguard.streams.emulators.bybit`, `posguard.streams.emulators.binance`) speaks its wire."""
