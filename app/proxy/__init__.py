"""The hot path: a proxied OpenAI request from its first byte to its last, as a pipeline — a frozen ``Call`` in,
the stages (routing, caching, quota, fallback, attempt) each returning a value, a frozen ``Outcome`` out to the
observers (the key's charge, metrics, the access log, the console, the trace).
"""
