"""The per-symbol actor: lifecycle state machine, verification and protection.

Actors know the `streams.venue.Venue` protocol and the store; never ccxt.
"""
