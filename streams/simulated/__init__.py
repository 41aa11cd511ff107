"""The simulated venue: an in-memory exchange with fault knobs, shipped as a test double.

It ships with posguard the way httpx ships `MockTransport`: the demo runs on it, and the tests
and benchmarks use it to make the faults the seed's incident was made of (lag, lost pushes,
lost responses, outages, stop-outs) happen on purpose and reproducibly, then judge the result
by the venue's `GroundTruth`. It is not a model of any one exchange; the Bybit V5 emulator
(`posguard.streams.emulators.bybit`) is the wire-level one.
"""

from posguard.streams.simulated.knobs import FaultKnobs
from posguard.streams.simulated.lag import Lag
from posguard.streams.simulated.markets import DEFAULT_MARKETS, synthetic_markets
from posguard.streams.simulated.truth import GroundTruth
from posguard.streams.simulated.venue import FakeVenue
from posguard.streams.simulated.views import LaggedView

__all__ = ["DEFAULT_MARKETS", "FakeVenue", "FaultKnobs", "GroundTruth", "Lag", "LaggedView", "synthetic_markets"]
