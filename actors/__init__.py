"""The per-symbol actor: lifecycle state machine, verification and protection.

Actors know the `posguard.streams.venue.Venue` protocol and the store; never ccxt.
"""
