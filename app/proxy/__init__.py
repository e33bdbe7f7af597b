"""The hot path: a proxied OpenAI request from its first byte to its last — routing and the key's limits, fallback over
models (or nodes), one attempt at a time, relaying, metrics and the access log.
"""
