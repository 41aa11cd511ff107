"""A local Binance USD-M futures emulator (REST + user-data WebSocket) that real ccxt.pro
``binanceusdm`` can drive, over the matching engine the Bybit emulator uses.

    async with running_binance_emulator() as emu:      # inside an asyncio loop
        config = CcxtVenueConfig(exchange="binanceusdm", rest_url=emu.rest_url, ws_url=emu.ws_url,
                                 loopback_only=True)

or from a shell: ``posguard emulator --venue binance --port 8765``.
"""

from posguard.streams.emulators.binance.server import EmulatorServer, running_binance_emulator
from posguard.streams.emulators.engine.faults import Faults, ScriptedFailure
from posguard.streams.emulators.engine.serving import DEFAULT_API_KEY, DEFAULT_API_SECRET

__all__ = ["DEFAULT_API_KEY", "DEFAULT_API_SECRET", "EmulatorServer", "Faults", "ScriptedFailure", "running_binance_emulator"]
