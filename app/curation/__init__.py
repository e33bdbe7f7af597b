"""Curating models: benchmarking them, writing what was measured into the registry, compiling a checkpoint into a
Foundry Local model folder, the runtime's model cache.
"""
