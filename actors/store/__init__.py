"""The store: every Redis command posguard issues, every key and every hash layout.

Nothing outside this package talks to Redis or imports its client (coredis); the rest of
posguard hands a client from `open_redis` to the store objects here:

* `positions.RedisStore` (the `Store` seam): position records with their journal, intent
  records with their replies, alerts, audit findings, the health status;
* `intent_stream.IntentStream`: the intents stream and its consumer group;
* `event_cache.RedisEventCache`: what the venue pushed, for operators and restarts;
* `console.OperatorConsole`: what the operator's commands read and request;
* `health`: the health hash's schema; `keys.Keys`: every key name.
"""
