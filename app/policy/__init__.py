"""Decisions as pure code, each testable alone in virtual time: routing, placement on nodes, the circuit breaker,
admission queues, adaptive concurrency, residency turns.
"""
