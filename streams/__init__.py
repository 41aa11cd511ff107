"""Everything that talks to, or stands in for, an exchange.

``streams`` knows nothing of actors or the supervisor: it defines the `Venue` protocol and the
event types, implements them (an in-memory fake venue; ccxt.pro), ingests pushed events into
Redis and hands them to whoever waits on them.
"""
