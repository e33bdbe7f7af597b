"""What every layer shares and that needs nothing else of the app: errors, settings, the registry, metrics, logs,
hardware facts, token counting.
"""
