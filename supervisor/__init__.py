"""The process: configuration, supervision, audit, intents, metrics and the command line."""
