"""A local Bybit V5 emulator (REST + private WebSocket) that real ccxt.pro can drive.

For the ccxt adapter's tests, the end-to-end tests and ``posguard demo --venue emulator``:
a truthful little matching engine with the faults real venues have, and a control API to
move prices, turn fault knobs and read the ground truth. It only ever binds 127.0.0.1.

    async with running_emulator() as emu:      # inside an asyncio loop
        config = CcxtVenueConfig(exchange="bybit", rest_url=emu.rest_url, ws_url=emu.ws_url,
                                 loopback_only=True)

or from a shell: ``posguard emulator --port 8765`` (or ``python -m posguard.streams.emulators.bybit``).
"""

from posguard.streams.emulators.engine.faults import Faults, ScriptedFailure
from posguard.streams.emulators.bybit.server import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    EmulatorServer,
    running_emulator,
)

__all__ = ["DEFAULT_API_KEY", "DEFAULT_API_SECRET", "EmulatorServer", "Faults", "ScriptedFailure", "running_emulator"]
